"""The machinery every training loop shares, owned once: checkpoint folders, the EMA of a model, the warm-up +
cosine learning-rate factor, and finding the checkpoint to resume from.

Its users are the four loops: `distill/train.py` (the student), `teacher/irgen/training.py` (tqd, decomp),
`teacher/irgen/diffusion_common.py` (the LoRA generators) and `teacher/prior.py` (the DDFM prior).

Why it lives in `teacher/`: packages import one way, downstream to upstream (distill imports teacher, export imports
distill, runtime imports neither). `teacher` is the first training package of the pipeline, so its own loops and
distill's may both import this module without an import running against that direction; it imports nothing of the
project beyond the shared core helpers (errors, imageio). Nothing here imports torch at module import time.

A checkpoint is one folder, written beside itself as FOLDER.partial and then renamed into place (the previous one is
kept as FOLDER.old until the swap is done, and is found again if a crash falls in between). It holds:

- `NAME.safetensors` for each group of tensors the loop saves (`model`, `ema`, `trainable`, ...), plus whatever the
  loop writes itself through `write_model` (a student folder, a `save_pretrained` folder);
- `optimizer.safetensors`: the optimizer's tensors, keyed `PARAM_INDEX.NAME`;
- `state.json`: the step, the optimizer's non-tensor parts (param groups, which entries are tensors, scalar entries)
  and the loop's own JSON-able extras (scheduler, grad scaler, best score, data RNG).

No pickles anywhere. Older folders are still read: distill's `trainer_state.json`, the irgen/diffusion
`optimizer_scalars` layout and the prior's `optimizer.pt` (with `torch.load(weights_only=True)`, tensors only); the
next save rewrites them in this format.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Callable, Optional

STATE_NAME = "state.json"
OPTIMIZER_NAME = "optimizer.safetensors"
# what distill/train.py named its state file before this module owned checkpoints
LEGACY_STATE_NAMES = ("trainer_state.json",)


# ------------------------------------------------------------------------------------------------- learning rate
def warmup_cosine(warmup_steps: int, total_steps: int, final_ratio: float) -> Callable[[int], float]:
    """step -> factor of the base learning rate: linear warm-up over `warmup_steps` (step 0 gets 1/warmup), then a
    cosine from 1 down to `final_ratio` at `total_steps`. `final_ratio=1.0` is warm-up then constant (the usual
    schedule for LoRA fine-tuning)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def set_learning_rate(optimizer, base_lr: float, factor: float) -> None:
    """Every param group's lr = base_lr x factor x the group's own `lr_scale` (1 when it has none)."""
    for group in optimizer.param_groups:
        group["lr"] = base_lr * factor * group.get("lr_scale", 1.0)


# ----------------------------------------------------------------------------------------------------------- EMA
class ModelEMA:
    """Exponential moving average of a model's floating-point state (integer buffers are copied), with the usual
    warm-up of the decay: update n uses min(decay, (1 + n) / (10 + n)). `module` is the averaged copy."""

    def __init__(self, model, decay: float):
        import copy
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    def update(self, model) -> None:
        import torch
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            ema_state = self.module.state_dict()
            for name, value in model.state_dict().items():
                target = ema_state[name]
                if value.dtype.is_floating_point:
                    target.mul_(decay).add_(value.detach(), alpha=1 - decay)
                else:
                    target.copy_(value)


# ----------------------------------------------------------------------------------------------------- optimizer
def optimizer_to_flat(optimizer) -> tuple[dict, dict]:
    """An optimizer's state dict as (tensors for safetensors, the JSON-able rest)."""
    import torch
    state = optimizer.state_dict()
    tensors, meta = {}, {"param_groups": state["param_groups"], "state": {}}
    for index, entry in state["state"].items():
        meta["state"][str(index)] = []
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
                meta["state"][str(index)].append(key)
            else:
                meta["state"][str(index)].append({key: value})
    return tensors, meta


def optimizer_from_flat(tensors: dict, meta: dict) -> dict:
    """The inverse of `optimizer_to_flat`: a state dict for `optimizer.load_state_dict`."""
    state = {}
    for index, keys in meta["state"].items():
        entry = {}
        for key in keys:
            if isinstance(key, dict):
                entry.update(key)
            else:
                entry[key] = tensors[f"{index}.{key}"]
        state[int(index)] = entry
    return {"state": state, "param_groups": _groups_from_json(meta["param_groups"])}


def _groups_from_json(groups: list) -> list:
    """JSON turns tuples such as AdamW's betas into lists; give them back as the optimizer made them."""
    return [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in group.items()}
            for group in groups]


def _legacy_optimizer_state(folder: Path, state: dict) -> dict:
    """Optimizer state dicts of folders written before this module: irgen/diffusion (`optimizer_scalars`) and the
    prior (`optimizer.pt`, read as tensors only)."""
    import torch
    if (folder / OPTIMIZER_NAME).is_file() and "optimizer_scalars" in state:
        from safetensors.torch import load_file
        per_param: dict[int, dict] = {}
        for key, value in load_file(str(folder / OPTIMIZER_NAME)).items():
            index, name = key.split(".", 1)
            per_param.setdefault(int(index), {})[name] = value
        for key, value in state["optimizer_scalars"].items():
            index, name = key.split(".", 1)
            per_param.setdefault(int(index), {})[name] = torch.tensor(value)
        return {"state": per_param, "param_groups": _groups_from_json(state["param_groups"])}
    if (folder / "optimizer.pt").is_file():
        return torch.load(str(folder / "optimizer.pt"), map_location="cpu", weights_only=True)
    from runtime.errors import FusionError
    raise FusionError(f"the checkpoint {folder} holds no optimizer state ({OPTIMIZER_NAME}); it is incomplete: "
                      f"delete it to start afresh")


# --------------------------------------------------------------------------------------------------- checkpoints
class Checkpoint:
    """A complete checkpoint folder found on disk: its JSON state and the means to restore the rest."""

    def __init__(self, folder: Path, state_file: Path):
        self.folder = folder
        self.state = json.loads(state_file.read_text(encoding="utf-8"))

    @property
    def step(self) -> int:
        return int(self.state["step"])

    def tensors(self, name: str, device: str = "cpu") -> dict:
        """{key: tensor} of FOLDER/NAME.safetensors."""
        from safetensors.torch import load_file
        return load_file(str(self.folder / f"{name}.safetensors"), device=str(device))

    def restore_optimizer(self, optimizer) -> None:
        if "optimizer" in self.state:
            from safetensors.torch import load_file
            state = optimizer_from_flat(load_file(str(self.folder / OPTIMIZER_NAME)), self.state["optimizer"])
        else:
            state = _legacy_optimizer_state(self.folder, self.state)
        optimizer.load_state_dict(state)

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.folder)!r}, step={self.step})"


def save_checkpoint(folder: str | Path, step: int, *, tensors: Optional[dict] = None, optimizer=None,
                    state: Optional[dict] = None, write_model: Optional[Callable[[Path], object]] = None) -> Path:
    """Write the checkpoint FOLDER atomically: build FOLDER.partial, then swap it in.

    tensors: {file name: {key: tensor}}, each written as NAME.safetensors; optimizer: its state goes to
    optimizer.safetensors + state.json; state: JSON-able extras kept in state.json beside the step; write_model(path):
    writes anything else into the new folder first (a student or `save_pretrained` folder)."""
    from safetensors.torch import save_file

    from runtime.imageio import write_json
    folder = Path(folder)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    if write_model is not None:
        write_model(partial)
    for name, group in (tensors or {}).items():
        save_file({k: v.detach().cpu().contiguous() for k, v in group.items()}, str(partial / f"{name}.safetensors"))
    record = {"step": int(step), **(state or {})}
    if optimizer is not None:
        flat, record["optimizer"] = optimizer_to_flat(optimizer)
        save_file(flat, str(partial / OPTIMIZER_NAME))
    write_json(partial / STATE_NAME, record)
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    partial.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def find_checkpoint(folder: str | Path) -> Optional[Checkpoint]:
    """The complete checkpoint at FOLDER, else at FOLDER.old (left by a crash in the middle of a swap), else None.
    A FOLDER.partial is never complete: it is ignored."""
    folder = Path(folder)
    for candidate in (folder, folder.with_name(folder.name + ".old")):
        for name in (STATE_NAME, *LEGACY_STATE_NAMES):
            if (candidate / name).is_file():
                return Checkpoint(candidate, candidate / name)
    return None


def checkpoint_to_resume(folder: str | Path, resume: bool, out: str | Path) -> Optional[Checkpoint]:
    """The checkpoint of a run in `out` when `resume` is set; None for a fresh run. FusionError when `out` already
    holds a run and `resume` is not set (so a second run never silently overwrites the first)."""
    found = find_checkpoint(folder)
    if found is not None and not resume:
        from runtime.errors import FusionError
        raise FusionError(f"{out} already holds a training run; pass --resume to continue it, or choose another --out")
    return found
