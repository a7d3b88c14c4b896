"""What a model costs, counted once: parameters and multiply-accumulates (MACs) of one forward pass. `fusion distill
profile`, `fusion bench` and `benchmarks/student_speed.py` all report these numbers.

    from distill.cost import count_macs, count_params
    count_params(model)                      # 74193
    count_macs(model, 480, 640)              # {'thop_gmacs': convs and linear layers, 'gmacs': plus attention}

thop counts convs and linear layers but not the cross-attention matrix products of a registered student, so those are
added (`attention_macs`); any other module (a peer) is counted by thop alone. It lives in distill because the
attention count reads the student's modules; benchmarks imports it from here.
"""
from __future__ import annotations

import copy
import math
import warnings
from typing import Dict, Optional

from runtime.errors import require

__all__ = ["count_params", "attention_macs", "count_macs"]


def count_params(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def attention_macs(model, height: int, width: int) -> int:
    """MACs of the cross-attention matrix products of a registered student at (height, width) (thop counts only the
    convs around them); 0 for any other model."""
    config = getattr(model, "config", None)
    if getattr(config, "stages", None) is None:
        return 0
    from distill.models.fusion import CrossModalAttention
    multiple = getattr(model, "multiple", 1)
    ph, pw = math.ceil(height / multiple) * multiple, math.ceil(width / multiple) * multiple
    total = 0
    levels = len(config.stages) + 1
    deep_h, deep_w = ph // 2 ** levels, pw // 2 ** levels
    for module in model.modules():
        if isinstance(module, CrossModalAttention):
            queries = deep_h * deep_w
            keys = (deep_h // module.kv_pool) * (deep_w // module.kv_pool)
            total += 2 * queries * keys * module.heads * module.head_dim  # Q K^T and A V
    return total


def count_macs(model, height: int = 480, width: int = 640, vis_channels: Optional[int] = None) -> Dict[str, float]:
    """{'thop_gmacs': convs and linear layers (thop), 'gmacs': plus the attention matmuls} of one forward pass at
    (height, width). `vis_channels`: the visible input's channels (default: the model's config, else 1). thop runs on
    a copy: it attaches counters to the modules it profiles, which must not leak into saved weights."""
    import torch
    thop = require("thop", "counting MACs")
    probe = copy.deepcopy(model).cpu().eval()
    if vis_channels is None:
        vis_channels = int(getattr(getattr(model, "config", None), "vis_channels", 1))
    inputs = (torch.zeros(1, 1, height, width), torch.zeros(1, vis_channels, height, width))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        macs, _ = thop.profile(probe, inputs=inputs, verbose=False)
    macs = float(macs)
    return {"thop_gmacs": macs / 1e9, "gmacs": (macs + attention_macs(model, height, width)) / 1e9}
