"""distill.metrics reproduces the field's standard evaluation on real RoadScene pairs, and behaves on edge cases."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from distill import metrics as M
from distill.metrics import METRIC_NAMES, fusion_metrics, read_gray_for_metrics
from runtime.errors import FusionError

REL_TOL = 1e-4


def _sources(roadscene, name):
    return read_gray_for_metrics(roadscene / "ir" / name), read_gray_for_metrics(roadscene / "vi" / name)


def _reference_fusion(kind, ir, vis):
    return np.round((ir + vis) / 2) if kind == "mean" else np.maximum(ir, vis)


@pytest.fixture(scope="module")
def reference_rows(metrics_reference):
    rows = json.loads(metrics_reference.read_text())
    assert len(rows) == 16 and {r["fused"] for r in rows} == {"mean", "max"}
    return rows


def test_reproduces_every_reference_value(roadscene, reference_rows):
    """All 8 pairs x 2 fusions x 12 metrics of roadscene_first8.json to 1e-4 relative."""
    failures, checked = [], 0
    for row in reference_rows:
        ir, vis = _sources(roadscene, row["name"])
        got = fusion_metrics(ir, vis, _reference_fusion(row["fused"], ir, vis))
        assert list(got) == list(METRIC_NAMES)
        for metric in METRIC_NAMES:
            checked += 1
            if not math.isclose(got[metric], row[metric], rel_tol=REL_TOL, abs_tol=0.0):
                failures.append(f"{row['name']} {row['fused']} {metric}: got {got[metric]!r}, want {row[metric]!r}")
    assert checked == 16 * 12
    assert not failures, "\n".join(failures)


def test_single_metric_functions_agree_with_fusion_metrics(roadscene, test_names):
    ir, vis = _sources(roadscene, test_names[3] + ".jpg")
    fused = np.maximum(ir, vis)
    together = fusion_metrics(ir, vis, fused)
    alone = {
        "EN": M.entropy(fused), "SD": M.standard_deviation(fused), "SF": M.spatial_frequency(fused),
        "AG": M.average_gradient(fused), "MI": M.mutual_information(ir, vis, fused),
        "SCD": M.correlation_of_differences(ir, vis, fused), "VIF": M.visual_information_fidelity(ir, vis, fused),
        "Qabf": M.qabf(ir, vis, fused), "SSIM": M.ssim(ir, vis, fused),
        "PSNR": M.peak_signal_to_noise_ratio(ir, vis, fused), "CC": M.correlation_coefficient(ir, vis, fused),
        "MSE": M.mean_squared_error(ir, vis, fused),
    }
    assert alone == together


def test_matches_scipy_baseline_on_unrounded_weighted_fusion(roadscene, test_names):
    """A non-integer fusion takes the general MI path (every distinct value a label) and float32 inputs elsewhere;
    the straightforward scipy formulation of benchmarks/bench_metrics.py must agree."""
    pytest.importorskip("scipy")
    from benchmarks.bench_metrics import baseline_metrics

    ir, vis = _sources(roadscene, test_names[10] + ".jpg")
    ir, vis = ir[40:140, 60:220], vis[40:140, 60:220]  # a crop keeps the scipy baseline fast
    fused = (0.3 * ir + 0.7 * vis).astype(np.float32)
    assert not np.array_equal(fused, np.round(fused))
    fast, slow = fusion_metrics(ir, vis, fused), baseline_metrics(ir, vis, fused)
    for metric in METRIC_NAMES:
        assert math.isclose(fast[metric], slow[metric], rel_tol=REL_TOL), (metric, fast[metric], slow[metric])


def test_metrics_rank_a_better_fusion_higher(roadscene, test_names):
    """Max fusion keeps more of both sources' edges and contrast than a blurred mean: the metrics must say so."""
    ir, vis = _sources(roadscene, test_names[5] + ".jpg")
    sharp = fusion_metrics(ir, vis, np.maximum(ir, vis))
    blurred = fusion_metrics(ir, vis, np.round(cv2.GaussianBlur((ir + vis) / 2, (0, 0), 3.0)))
    for metric in ("SF", "AG", "Qabf", "VIF", "SD", "EN"):
        assert sharp[metric] > blurred[metric], metric


def test_identical_images_hit_known_values(roadscene, test_names):
    ir, _ = _sources(roadscene, test_names[0] + ".jpg")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = fusion_metrics(ir, ir, ir)
    assert got["SSIM"] == pytest.approx(2.0, abs=1e-5)
    assert got["VIF"] == pytest.approx(2.0, rel=1e-9)
    assert got["CC"] == pytest.approx(1.0, abs=1e-6)
    assert got["MSE"] == 0.0 and got["PSNR"] == math.inf
    assert got["MI"] == pytest.approx(2 * got["EN"] * math.log(2), rel=1e-9)  # MI(F, F) = H(F), in nats
    assert math.isnan(got["SCD"])  # corr(VIS, F - IR) with F - IR == 0 is undefined
    # The reference's Qabf quirk: equal gradient strengths give a strength ratio of gF instead of 1, so a perfect
    # copy scores about 0.9994 * 0.9879 / (1 + exp(-22 * 0.2)) ~ 0.975 on strong edges, not 1.
    assert 0.9 < got["Qabf"] < 0.99


def test_constant_images_give_defined_values_without_warnings():
    flat = np.full((64, 80), 97.0, np.float32)
    ramp = np.tile(np.arange(80, dtype=np.float32), (64, 1)) * 3
    vertical_ramp = np.tile(np.arange(64, dtype=np.float32)[:, None], (1, 80)) * 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        all_flat = fusion_metrics(flat, flat, flat)
        flat_fused = fusion_metrics(ramp, vertical_ramp, flat)
    assert all_flat["EN"] == 0.0 and all_flat["SD"] == 0.0 and all_flat["SF"] == 0.0 and all_flat["AG"] == 0.0
    assert all_flat["MI"] == 0.0
    assert all_flat["VIF"] == 2.0  # 0/0 at every scale counts as 1 per source, as in the reference
    assert all_flat["SSIM"] == pytest.approx(2.0)
    assert all_flat["MSE"] == 0.0
    assert flat_fused["SD"] == 0.0 and flat_fused["MI"] == 0.0
    assert flat_fused["VIF"] == 0.0  # a flat fusion carries no information about textured sources
    assert math.isnan(flat_fused["CC"])
    # Qabf is not 0: the reference's zero-padded Sobel sees a strong edge at the border of any image, flat or not;
    # it must still rank the flat fusion well below one that keeps the sources' ramps.
    assert 0.0 < flat_fused["Qabf"] < fusion_metrics(ramp, vertical_ramp, np.maximum(ramp, vertical_ramp))["Qabf"]


def test_bad_inputs_raise_fusion_error():
    img = np.zeros((60, 60), np.float32)
    with pytest.raises(FusionError, match="sizes differ"):
        fusion_metrics(img, img, np.zeros((60, 61), np.float32))
    with pytest.raises(FusionError, match="too small"):
        fusion_metrics(img[:40], img[:40], img[:40])
    with pytest.raises(FusionError, match="gray image"):
        fusion_metrics(img, img, np.zeros((60, 60, 3), np.float32))
    with pytest.raises(FusionError, match="NaN or infinite"):
        fusion_metrics(img, img, np.full((60, 60), np.nan, np.float32))


def test_read_gray_for_metrics_matches_the_reference_reader(roadscene, test_names, tmp_path):
    vis_path = roadscene / "vi" / (test_names[2] + ".jpg")
    reference = np.round(cv2.cvtColor(cv2.imread(str(vis_path)).astype(np.float32), cv2.COLOR_BGR2GRAY))
    got = read_gray_for_metrics(vis_path)
    assert got.dtype == np.float32 and got.shape == reference.shape and np.array_equal(got, reference)
    # A gray PNG comes back unchanged; a colour PNG is scored on the same luminance.
    gray_png, colour_png = tmp_path / "g.png", tmp_path / "c.png"
    cv2.imwrite(str(gray_png), got.astype(np.uint8))
    assert np.array_equal(read_gray_for_metrics(gray_png), got)
    cv2.imwrite(str(colour_png), cv2.imread(str(vis_path)))
    assert np.array_equal(read_gray_for_metrics(colour_png), reference)
    with pytest.raises(FusionError, match="not found"):
        read_gray_for_metrics(tmp_path / "missing.png")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(vis_path.read_bytes()[:2000])
    with pytest.raises(FusionError, match="truncated"):
        read_gray_for_metrics(truncated)


def test_markdown_table_orders_columns_and_formats_values():
    table = M.markdown_table({"a": {"MSE": 1234.5678, "EN": 7.123456}, "b": {"EN": 6.5, "LPIPS": 0.25}},
                             label="method")
    lines = table.strip().splitlines()
    assert lines[0] == "| method | EN | MSE | LPIPS |"
    assert lines[1] == "|---|---:|---:|---:|"
    assert lines[2] == "| a | 7.1235 | 1234.57 |  |"
    assert lines[3] == "| b | 6.5000 |  | 0.2500 |"


# ----------------------------------------------------------------------------------------------------------- LPIPS
def test_lpips_without_backbone_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.delenv(M.LPIPS_ENV, raising=False)
    with pytest.raises(FusionError) as err:
        M.resolve_lpips_backbone(None)
    message = str(err.value)
    assert "alexnet-owt-7be5be79.pth" in message and "--lpips-backbone" in message and M.LPIPS_ENV in message
    with pytest.raises(FusionError, match="not found at"):
        M.resolve_lpips_backbone(tmp_path / "nope.pth")
    monkeypatch.setenv(M.LPIPS_ENV, str(tmp_path / "also-nope.pth"))
    with pytest.raises(FusionError, match="also-nope.pth"):
        M.LPIPSMetric()


@pytest.fixture(scope="module")
def tiny_alexnet(tmp_path_factory):
    """A randomly initialised torchvision AlexNet state dict saved like the real download (no weights exist here)."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    pytest.importorskip("lpips")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    # Only the convolutional trunk (features.*, 2.5 M parameters): that is all LPIPS reads from the file, and it
    # keeps the test file small; the classifier keys of a full download are ignored by the loader.
    full = torchvision.models.alexnet(weights=None).state_dict()
    state = {k: v for k, v in full.items() if k.startswith("features.")}
    state["classifier.6.bias"] = full["classifier.6.bias"]  # a real download has classifier keys too: ignored
    path = tmp_path_factory.mktemp("lpips") / "alexnet-owt-7be5be79.pth"
    torch.save(state, path)
    return path, state


def test_lpips_loads_local_backbone_without_downloading(tiny_alexnet, roadscene, test_names, monkeypatch):
    import torch

    def no_download(*args, **kwargs):
        raise AssertionError("LPIPS tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    path, state = tiny_alexnet
    metric = M.LPIPSMetric(path)
    trunk = metric.model.net.state_dict()
    assert torch.equal(trunk["slice1.0.weight"], state["features.0.weight"])
    assert torch.equal(trunk["slice5.10.bias"], state["features.10.bias"])
    # The linear heads are the ones lpips ships, not random.
    import lpips
    shipped = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth", map_location="cpu")
    assert torch.equal(metric.model.lin0.model[-1].weight, shipped["lin0.model.1.weight"])

    ir, vis = _sources(roadscene, test_names[1] + ".jpg")
    ir, vis = ir[:64, :96], vis[:64, :96]
    assert metric.distance(ir, ir) == pytest.approx(0.0, abs=1e-7)
    mean = np.round((ir + vis) / 2)
    value = metric(ir, vis, mean)
    assert value > 0 and math.isfinite(value)
    assert value == pytest.approx((metric.distance(mean, ir) + metric.distance(mean, vis)) / 2)


def test_lpips_rejects_a_file_that_is_not_the_backbone(tiny_alexnet, tmp_path):
    import torch

    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(FusionError, match="does not hold the expected LPIPS backbone"):
        M.LPIPSMetric(wrong)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(FusionError, match="cannot read LPIPS backbone"):
        M.LPIPSMetric(garbage)
