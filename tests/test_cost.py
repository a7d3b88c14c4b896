"""distill.cost, the one parameter and MAC counter (`fusion distill profile`, `fusion bench`,
benchmarks/student_speed.py): hand counts for a peer, the cross-attention products thop cannot see for a student."""
from __future__ import annotations

import pytest
import torch

from distill.cost import attention_macs, count_macs, count_params
from distill.models import create_student
from distill.peers import create_peer

pytest.importorskip("thop")
torch.set_num_threads(1)


def test_macs_and_params_match_the_hand_count_for_densefuse():
    # Per pixel: encoder 9*(1*16 + 16*16 + 32*16 + 48*16) = 13,968 MACs, run for IR and VIS; decoder
    # 9*(64*64 + 64*32 + 32*16 + 16*1) = 60,048. Total 87,984 per pixel.
    model = create_peer("densefuse")
    macs = count_macs(model, 48, 64)
    assert macs["gmacs"] == macs["thop_gmacs"] == pytest.approx(87_984 * 48 * 64 / 1e9, rel=1e-9)
    assert attention_macs(model, 48, 64) == 0       # a peer: thop alone
    assert count_params(model) == 74_193
    # thop's counters must not leak into the model that was measured (they would end up in saved weights).
    assert not any("total_ops" in k for k in model.state_dict())


def test_student_macs_include_the_attention_matmuls():
    model = create_student("tiny-test")
    macs = count_macs(model, 64, 96)
    extra = attention_macs(model, 64, 96)
    assert extra > 0
    assert macs["gmacs"] == pytest.approx(macs["thop_gmacs"] + extra / 1e9, rel=1e-9)
    # the attention grows with the square of the deepest feature map: 4x the pixels, 16x the products
    assert attention_macs(model, 128, 192) == 16 * extra
    assert count_params(model) == sum(p.numel() for p in model.parameters()) > 0
    assert not any("total_ops" in k for k in model.state_dict())
