"""The student registry and network: shapes at any size, the 3-channel mode, save/load with shape checks, ONNX export
with dynamic H/W (ONNX Runtime parity), the speed budget in params/GMACs, and a run on real RoadScene pairs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill.models import create_student, list_students, load_student, save_student, student_config
from runtime.errors import FusionError

torch.set_num_threads(2)


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial weights (the fresh model outputs the plain average by design), deterministic."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def test_registry_lists_variants_and_rejects_unknown():
    names = list_students()
    assert {"nano", "small"} <= set(names)
    with pytest.raises(FusionError, match="unknown student 'huge'"):
        create_student("huge")
    with pytest.raises(FusionError, match="unknown student option"):
        create_student("nano", widht=3)


@pytest.mark.parametrize("size", [(37, 53), (64, 64), (33, 100)])
def test_any_size_in_and_out(size):
    model = _randomize(create_student("tiny-test"))
    ir, vis = torch.rand(2, 1, *size), torch.rand(2, 1, *size)
    with torch.no_grad():
        out = model(ir, vis)
    assert out.shape == (2, 1, *size)
    assert out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float(out.std()) > 0.0


@pytest.mark.parametrize("variant", ["nano", "nano2"])
def test_fresh_model_is_the_average_of_the_sources(variant):
    model = create_student(variant).eval()
    ir, vis = torch.rand(1, 1, 45, 70), torch.rand(1, 1, 45, 70)
    with torch.no_grad():
        out = model(ir, vis)
    assert torch.allclose(out, (ir + vis) / 2, atol=1e-6)


def test_pyramid_gains_keep_both_sources_fine_detail_in_full():
    # v2's head: gains on the full-resolution sources and on coarser pyramid levels. a_ir = a_vis = 1 with
    # g_1 = -0.5 on the half-resolution level keeps each source's fine detail at full strength over the average of
    # their coarse content - what a pyramid teacher does where both cameras carry structure, and what one gain per
    # source cannot (a plain average halves each source's texture).
    model = create_student("tiny-test", input_scale=2, pyramid_levels=1).eval()
    assert model.config.coefficient_channels == 5
    size = (64, 64)
    yy, xx = torch.meshgrid(torch.arange(size[0]), torch.arange(size[1]), indexing="ij")
    ir = (0.2 + 0.5 * xx / size[1]).float()[None, None]                     # smooth ramp: no fine detail
    vis = (0.5 + 0.2 * ((yy + xx) % 2 * 2 - 1)).float()[None, None]         # one-pixel checkerboard, amplitude 0.2
    head = model.head[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([1.0, 1.0, 0.0, -0.5, -0.5]))       # a_ir, a_vis, b, g_ir_1, g_vis_1
        out = model(ir, vis)
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))          # away from the padded border
    checker = ((yy + xx) % 2 * 2 - 1).float()[None, None]
    amplitude = float((out * checker)[inner].mean())
    assert abs(amplitude - 0.2) < 0.01, amplitude                           # the plain average would give 0.1
    assert abs(float((out - (ir + vis) / 2)[inner].mean())) < 0.01          # coarse content: the average
    with pytest.raises(ValueError, match="pyramid_levels must be 0 to 1"):
        create_student("tiny-test", pyramid_levels=2)
    with pytest.raises(ValueError, match="guide_channels needs input_scale 2 or 4"):
        create_student("tiny-test", guide_channels=4)
    guided = create_student("tiny-test", input_scale=2, pyramid_levels=1, guide_channels=4).eval()
    with torch.no_grad():                                                   # fresh: still the plain average
        assert torch.allclose(guided(ir, vis), (ir + vis) / 2, atol=1e-6)


def _check_detail_bands(model) -> None:
    size = (64, 96)
    yy, xx = torch.meshgrid(torch.arange(size[0]), torch.arange(size[1]), indexing="ij")
    checker = ((yy + xx) % 2 * 2 - 1).float()[None, None]
    left = (xx < size[1] // 2).float()[None, None]
    ir = 0.3 + 0.2 * checker * left + 0.1 * yy[None, None] / size[0]          # texture on the left, a smooth ramp
    vis = 0.6 + 0.15 * checker * (1 - left)                                   # texture on the right
    with torch.no_grad():
        out = model(ir, vis)
    rows = slice(8, -8)
    amp_left = float((out * checker)[..., rows, 8:size[1] // 2 - 8].mean())
    amp_right = float((out * checker)[..., rows, size[1] // 2 + 8:-8].mean())
    assert abs(amp_left - 0.2) < 0.01 and abs(amp_right - 0.15) < 0.01, (amp_left, amp_right)
    coarse = F.avg_pool2d(out, 2) - F.avg_pool2d((ir + vis) / 2, 2)
    assert abs(float(coarse[..., 4:-4, 4:-4].mean())) < 0.01
    # the band gains are the network's: zero them and the fine detail is gone
    with torch.no_grad():
        model.head[-1].bias[3:] = 0.0
        flat = model(ir, vis)
    assert abs(float((flat * checker)[..., rows, 8:-8].mean())) < 0.01


def test_detail_bands_keep_each_sources_fine_detail_in_full():
    # detail_bands: the finest band-pass levels are fused at their own resolution by the pyramid teacher's energy
    # rule, so fine texture never passes through a low-resolution gain. Fresh (band gains 1, a = 0.5): where only IR
    # carries a one-pixel checkerboard it comes out at IR's full amplitude, where only VIS carries it at VIS's, and the
    # coarse content is the plain average - one gain per source would halve both. 3 bands: one below the
    # coefficients' level (the affine part averaged down to it).
    for bands in (1, 2, 3):
        _check_detail_bands(create_student("tiny-test", input_scale=2, detail_bands=bands).eval())
    with pytest.raises(ValueError, match="detail_bands replaces pyramid_levels"):
        create_student("tiny-test", input_scale=2, pyramid_levels=1, detail_bands=1)
    with pytest.raises(ValueError, match="detail_bands must be 0 to 4"):
        create_student("tiny-test", input_scale=2, detail_bands=5)
    rgb = _randomize(create_student("tiny-test", input_scale=2, detail_bands=1, vis_channels=3))
    with torch.no_grad():
        assert rgb(torch.rand(1, 1, 40, 48), torch.rand(1, 3, 40, 48)).shape == (1, 3, 40, 48)


def test_three_channel_mode():
    model = _randomize(create_student("tiny-test", vis_channels=3))
    with torch.no_grad():
        out = model(torch.rand(1, 1, 40, 48), torch.rand(1, 3, 40, 48))
    assert out.shape == (1, 3, 40, 48)
    with pytest.raises(ValueError, match="vis must be"):
        model(torch.rand(1, 1, 40, 48), torch.rand(1, 1, 40, 48))


def test_batch_items_are_independent():
    # BatchNorm in eval mode and per-sample attention: one image's output must not depend on its batch neighbours.
    model = _randomize(create_student("tiny-test"))
    ir, vis = torch.rand(3, 1, 32, 40), torch.rand(3, 1, 32, 40)
    with torch.no_grad():
        batched = model(ir, vis)
        single = model(ir[1:2], vis[1:2])
    assert torch.allclose(batched[1:2], single, atol=1e-5)


def test_save_load_roundtrip(tmp_path):
    model = _randomize(create_student("tiny-test"), seed=3)
    save_student(model, tmp_path / "w", metadata={"note": "test"})
    config = json.loads((tmp_path / "w" / "config.json").read_text())
    assert config["variant"] == "tiny-test" and config["architecture"] == "DualBranchFusionNet"
    loaded = load_student(tmp_path / "w")
    ir, vis = torch.rand(1, 1, 50, 60), torch.rand(1, 1, 50, 60)
    with torch.no_grad():
        assert torch.equal(model(ir, vis), loaded(ir, vis))
    assert not loaded.training
    # a file inside the folder works too
    load_student(tmp_path / "w" / "model.safetensors")


def test_load_reports_shape_mismatch(tmp_path):
    save_student(create_student("tiny-test"), tmp_path / "a")
    save_student(create_student("tiny-test", stem_channels=6), tmp_path / "b")
    (tmp_path / "b" / "config.json").write_text((tmp_path / "a" / "config.json").read_text())
    with pytest.raises(FusionError, match=r"do not fit the 'tiny-test' student.*another shape"):
        load_student(tmp_path / "b")


def test_load_reports_missing_files(tmp_path):
    with pytest.raises(FusionError, match="not found"):
        load_student(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FusionError, match="has no config.json"):
        load_student(tmp_path / "empty")
    save_student(create_student("tiny-test"), tmp_path / "corrupt")
    (tmp_path / "corrupt" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(FusionError, match="corrupt"):
        load_student(tmp_path / "corrupt")


@pytest.mark.parametrize("overrides", [{}, {"input_scale": 2, "pyramid_levels": 2},
                                       {"input_scale": 2, "pyramid_levels": 1, "guide_channels": 4},
                                       {"input_scale": 2, "detail_bands": 2}, {"input_scale": 2, "detail_bands": 3},
                                       {"input_scale": 2, "detail_bands": 2, "coarse_levels": 2}],
                         ids=["v1", "v2", "v2-guided", "detail-bands", "detail-bands-below", "coarse-rule"])
def test_onnx_export_dynamic_size_matches_torch(tmp_path, overrides):
    ort = pytest.importorskip("onnxruntime")
    model = _randomize(create_student("tiny-test", **overrides), seed=1)
    path = tmp_path / "student.onnx"
    dynamic = {"ir": {0: "n", 2: "h", 3: "w"}, "vis": {0: "n", 2: "h", 3: "w"}, "fused": {0: "n", 2: "h", 3: "w"}}
    torch.onnx.export(model, (torch.rand(1, 1, 64, 96), torch.rand(1, 1, 64, 96)), str(path), input_names=["ir", "vis"],
                      output_names=["fused"], opset_version=17, dynamic_axes=dynamic, dynamo=False)
    import onnx
    graph = onnx.load(str(path))
    ops = {node.op_type for node in graph.graph.node}
    # nothing TensorRT cannot take: no adaptive pooling to sizes other than 1, no loops, no custom ops
    assert not ops & {"Loop", "If", "MaxRoiPool", "ATen"}, ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for size in [(64, 96), (37, 53), (120, 80)]:
        ir, vis = torch.rand(1, 1, *size), torch.rand(1, 1, *size)
        with torch.no_grad():
            expected = model(ir, vis).numpy()
        got = session.run(["fused"], {"ir": ir.numpy(), "vis": vis.numpy()})[0]
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("variant", ["nano", "nano2", "small"])
def test_variants_fit_the_speed_budget_in_params_and_macs(variant):
    pytest.importorskip("thop")
    from distill.cost import count_macs, count_params
    model = create_student(variant).eval()
    assert count_params(model) <= 1_000_000
    assert count_macs(model, 480, 640)["gmacs"] <= 1.5     # the attention matmuls counted too, as student_speed does
    assert student_config(variant).multiple == 32


def test_runs_on_real_pairs(roadscene, test_names):
    from runtime.color import split_luminance
    from runtime.imageio import discover_pairs, read_pair
    model = _randomize(create_student("tiny-test"))
    for pair in discover_pairs(roadscene, names=test_names[:2]):
        ir, vis = read_pair(pair)
        vis_y, _ = split_luminance(vis)
        with torch.no_grad():
            out = model(torch.from_numpy(ir)[None, None], torch.from_numpy(np.ascontiguousarray(vis_y))[None, None])
        assert out.shape[-2:] == ir.shape
        assert torch.isfinite(out).all()


def test_coarse_rule_is_the_pyramid_teachers_rule_below_the_bands():
    # coarse_levels: below the detail bands the teacher's own rule (binomial bands by energy share, the residual by a
    # soft maximum), the network's affine model a correction added to it (0 when fresh). Where only IR carries
    # structure and is the brighter source everywhere, the rule keeps IR exactly (the collapse of its own pyramid),
    # coarse_gain scales only the band-pass part, and the fresh network adds nothing: the output is IR's box-pyramid
    # bands plus the rule, i.e. IR itself.
    model = create_student("tiny-test", input_scale=2, detail_bands=2, coarse_levels=2).eval()
    assert model.multiple % 16 == 0
    gen = torch.Generator().manual_seed(3)
    ir = 0.6 + 0.3 * F.interpolate(torch.rand(1, 1, 12, 16, generator=gen), size=(96, 128), mode="bilinear",
                                   align_corners=False)
    vis = torch.full_like(ir, 0.1)
    with torch.no_grad():
        out = model(ir, vis)
        rule = model.coarse_rule(torch.cat([ir, vis], dim=1))
    np.testing.assert_allclose(out.numpy(), ir.numpy(), atol=1e-4)
    np.testing.assert_allclose(rule.numpy(), ir.numpy(), atol=1e-4)
    # the soft maximum: a hot IR blob on a brighter VIS background keeps the blob's level at the coarse level
    # (the plain average would halve it) and the background's elsewhere
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    blob = (((yy - 32) ** 2 + (xx - 32) ** 2) < 100).float()[None, None]
    ir2 = 0.2 + 0.7 * F.avg_pool2d(blob, 9, 1, 4)
    vis2 = torch.full_like(ir2, 0.5)
    with torch.no_grad():
        fused = model.coarse_rule(torch.cat([ir2, vis2], dim=1))
    assert float(fused[0, 0, 32, 32]) > 0.85 and abs(float(fused[0, 0, 4, 4]) - 0.5) < 0.02
    # matches the teacher's implementation (teacher/multiscale.py) away from the borders
    from teacher.multiscale import SaliencyPyramidFusion
    ir3 = F.interpolate(torch.rand(1, 1, 16, 16, generator=gen), size=(64, 64), mode="bilinear", align_corners=False)
    vis3 = F.interpolate(torch.rand(1, 1, 8, 8, generator=gen), size=(64, 64), mode="bilinear", align_corners=False)
    teacher = SaliencyPyramidFusion(levels=2).fuse_batch(ir3, vis3)
    with torch.no_grad():
        ours = model.coarse_rule(torch.cat([ir3, vis3], dim=1)).clamp(0, 1)
    assert float((ours - teacher)[..., 8:-8, 8:-8].abs().max()) < 0.02
    with pytest.raises(ValueError, match="coarse_levels needs detail_bands"):
        create_student("tiny-test", input_scale=2, coarse_levels=1)
    with torch.no_grad():    # any size: tiny inputs too (borders replicated where a level is 2 pixels or fewer)
        assert model(torch.rand(1, 1, 9, 21), torch.rand(1, 1, 9, 21)).shape == (1, 1, 9, 21)


def test_rule_variant_has_no_weights_and_reproduces_its_teacher(roadscene, train_names):
    # `rule`: the default's graph without its network (network: false): zero weights, the detail bands and the coarse
    # rule alone, each band x the teacher's 1.1. On real pairs it is the `pyramid-sharp` teacher to within a few grey
    # levels (measured 41-47 dB on three training pairs; the plain average 14-17 dB).
    from runtime.color import split_luminance
    from runtime.imageio import discover_pairs, read_pair
    from teacher.multiscale import SharpPyramidFusion
    model = create_student("rule").eval()
    assert sum(p.numel() for p in model.parameters()) == 0 and len(model.state_dict()) == 0
    assert model.feature_channels == []
    teacher = SharpPyramidFusion()
    for pair in discover_pairs(roadscene, names=train_names[:2]):
        ir, vis = read_pair(pair)
        ir_t = torch.from_numpy(ir)[None, None]
        vis_t = torch.from_numpy(np.ascontiguousarray(split_luminance(vis)[0]))[None, None]
        with torch.no_grad():
            fused, features = model.forward_with_features(ir_t, vis_t)
            target = teacher.fuse_batch(ir_t, vis_t).float()
        assert fused.shape == ir_t.shape and features == []
        psnr = float(10 * torch.log10(1.0 / ((fused - target) ** 2).mean()))
        average = float(10 * torch.log10(1.0 / (((ir_t + vis_t) / 2 - target) ** 2).mean()))
        assert psnr > 38.0 and psnr > average + 20.0, (pair.name, psnr, average)
    with pytest.raises(ValueError, match="network: false needs detail_bands and coarse_levels"):
        create_student("rule", coarse_levels=0)
