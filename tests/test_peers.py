"""The peer baselines: published architectures (shapes, parameter counts, structure), on real RoadScene sizes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.peers import create_peer, list_peers
from runtime.color import luminance
from runtime.imageio import discover_pairs, read_pair

torch.set_num_threads(1)


def _params(model):
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_both_peers_and_rejects_unknown():
    assert list_peers() == ["densefuse", "seafusion"]
    with pytest.raises(KeyError, match="choose one of densefuse, seafusion"):
        create_peer("u2fusion")


@pytest.mark.parametrize("name,low,high", [
    # SeAFusion reports 0.167 M parameters (its Sobel kernels, 1728 fixed weights, are buffers here);
    # DenseFuse: encoder 14,032 + decoder 60,161 = 74,193.
    ("seafusion", 160_000, 170_000),
    ("densefuse", 74_193, 74_193),
])
def test_param_counts_match_the_papers(name, low, high):
    assert low <= _params(create_peer(name)) <= high


def test_seafusion_layout_is_full_resolution_16_32_48():
    model = create_peer("seafusion")
    convs = [m for m in model.ir_encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].out_channels == 16
    assert [b.squeeze.out_channels for b in model.ir_encoder.blocks] == [32, 48]
    assert all(c.stride == (1, 1) for c in model.modules() if isinstance(c, torch.nn.Conv2d))
    assert model.decoder[0].in_channels == 96 and model.head.out_channels == 1


def test_sobel_residual_path_is_gradient_magnitude():
    from distill.peers import SobelMagnitude
    ramp = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 1, 8, 8).contiguous()
    g = SobelMagnitude(1)(ramp)[0, 0]
    # A horizontal ramp of slope 1: |Sobel_x| = (1 + 2 + 1) * 2 = 8 and Sobel_y = 0 away from the zero-padded border.
    assert torch.equal(g[1:-1, 1:-1], torch.full((6, 6), 8.0))
    flat = SobelMagnitude(3)(torch.full((1, 3, 6, 6), 0.5))[0, :, 1:-1, 1:-1]
    assert torch.equal(flat, torch.zeros_like(flat))


def test_densefuse_fuses_by_addition_of_shared_encoder_features():
    model = create_peer("densefuse")
    a, b = torch.rand(1, 1, 24, 32), torch.rand(1, 1, 24, 32)
    with torch.no_grad():
        # Addition is symmetric: swapping the modalities must not change the output.
        assert torch.allclose(model(a, b), model(b, a), atol=1e-6)


def test_weights_are_deterministic_and_do_not_touch_the_global_seed():
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    m1 = create_peer("seafusion", seed=0)
    after = torch.rand(1)
    m2 = create_peer("seafusion", seed=0)
    assert torch.equal(after, expected)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p1, p2)


@pytest.mark.parametrize("name", ["seafusion", "densefuse"])
def test_forward_on_a_real_pair_keeps_shape_and_range(name, roadscene, test_names):
    pair = discover_pairs(roadscene, names=test_names[:1])[0]
    ir, vis = read_pair(pair)
    y = luminance(vis) if vis.ndim == 3 else vis
    # a 64x80 crop keeps this fast; odd sizes must work too (no downsampling in either network)
    ir_t = torch.from_numpy(np.ascontiguousarray(ir[:63, :81]))[None, None]
    vis_t = torch.from_numpy(np.ascontiguousarray(y[:63, :81]))[None, None].float()
    model = create_peer(name)
    with torch.no_grad():
        out = model(ir_t, vis_t)
    assert out.shape == (1, 1, 63, 81)
    assert out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_rejects_rgb_visible_input():
    with pytest.raises(ValueError, match="visible luminance"):
        create_peer("densefuse")(torch.rand(1, 1, 8, 8), torch.rand(1, 3, 8, 8))
