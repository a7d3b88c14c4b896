"""Evaluation of synthesised IR against real IR: metric definitions, baselines, errors, picture grid."""
from __future__ import annotations

import json

import numpy as np
import pytest

from runtime.errors import FusionError
from runtime.imageio import read_ir, write_image
from teacher.irgen import evaluate as ev


def test_psnr_and_ssim_match_the_reference_definitions():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (70, 90)).astype(np.float64)
    b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255).round()
    mse = np.mean((a - b) ** 2)
    assert ev.psnr(a, b) == pytest.approx(10 * np.log10(255 ** 2 / mse))
    assert ev.psnr(a, a) == float("inf")
    assert ev.ssim(a, a) == pytest.approx(1.0)
    metrics = pytest.importorskip("skimage.metrics")
    reference = metrics.structural_similarity(a, b, data_range=255, gaussian_weights=True, sigma=1.5,
                                              use_sample_covariance=False)
    assert ev.ssim(a, b) == pytest.approx(reference, abs=1e-9)


def test_evaluate_folder_with_baselines_and_grid(roadscene, train_names, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("\n".join(train_names[:3]))
    perfect, noisy = tmp_path / "perfect", tmp_path / "noisy"
    rng = np.random.default_rng(1)
    for stem in train_names[:3]:
        ir = read_ir(roadscene / "ir" / f"{stem}.jpg")
        write_image(perfect / f"{stem}.png", ir)
        write_image(noisy / "ir" / f"{stem}.png", np.clip(ir + rng.normal(0, 0.1, ir.shape), 0, 1))
    out = tmp_path / "eval"
    assert ev.main(["--data", str(roadscene), "--names", str(names), "--pred", f"perfect={perfect}",
                    "--pred", f"noisy={noisy}", "--train-names", str(names), "--out", str(out), "--grid", "2",
                    "--no-lpips"]) == 0
    result = json.loads((out / "results.json").read_text())
    mean = result["mean"]
    assert set(mean) == {"vis-luminance", "inverted-luminance", "train-mean", "perfect", "noisy"}
    assert mean["perfect"]["PSNR"] > 60 and mean["perfect"]["SSIM"] > 0.999  # only JPEG->PNG rounding
    assert 18 < mean["noisy"]["PSNR"] < 22  # sigma 0.1 noise, clipped: about 20 dB
    assert mean["noisy"]["SSIM"] < mean["perfect"]["SSIM"]
    assert result["count"] == 3 and "LPIPS" not in mean["noisy"]
    assert "| perfect |" in (out / "results.md").read_text()
    grid = read_ir(out / "grid.png")
    assert grid.shape[0] > 2 * 100 and grid.shape[1] > 6 * 150  # 2 rows of RGB, IR, 3 baselines, 2 predictions


def test_a_prediction_missing_a_pair_is_a_user_error(roadscene, train_names, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("\n".join(train_names[:2]))
    write_image(tmp_path / "pred" / f"{train_names[0]}.png", np.zeros((8, 8), np.float32))
    with pytest.raises(FusionError, match="no image for 1 pair"):
        ev.evaluate(str(roadscene), str(names), {"x": str(tmp_path / "pred")})


def test_lpips_says_why_it_is_unavailable():
    metric = ev.LPIPSMetric()
    assert metric.model is not None or metric.reason
