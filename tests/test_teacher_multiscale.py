"""The zero-weights multi-scale teachers (gff, vsmwls, pyramid) on real day and night pairs: they fuse (both sources'
structure is in the output, better than the plain average), keep what is bright in one camera only, and run through
`fusion teacher fuse`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("kornia")

from helpers import SHARED_DATA  # noqa: E402

from distill import metrics  # noqa: E402
from runtime.color import split_luminance  # noqa: E402
from runtime.imageio import discover_pairs, read_pair  # noqa: E402
from teacher.registry import load_teacher_class  # noqa: E402

TEACHERS = ("gff", "vsmwls", "pyramid", "pyramid-sharp")


def _pair(root: Path, names: str, index: int, side: int = 240):
    import cv2
    pair = sorted(discover_pairs(root, names=root / names), key=lambda p: p.name)[index]
    ir, vis = read_pair(pair)
    vis_y = split_luminance(vis)[0]
    scale = side / max(ir.shape)
    size = (int(ir.shape[1] * scale) // 2 * 2, int(ir.shape[0] * scale) // 2 * 2)
    return (cv2.resize(ir, size, interpolation=cv2.INTER_AREA), cv2.resize(vis_y, size, interpolation=cv2.INTER_AREA))


@pytest.fixture(scope="module")
def day_pair(roadscene):
    return _pair(roadscene, "train.txt", 3)


@pytest.fixture(scope="module")
def night_pair():
    return _pair(SHARED_DATA / "llvip_mini", "train.txt", 2)


def _scores(ir, vis, fused):
    to255 = lambda a: np.round(a * 255).astype(np.float32)  # noqa: E731 - metrics take the 8-bit scale
    return metrics.fusion_metrics(to255(ir), to255(vis), to255(fused))


@pytest.mark.parametrize("name", TEACHERS)
@pytest.mark.parametrize("which", ["day", "night"])
def test_teacher_fuses_better_than_the_average(name, which, day_pair, night_pair):
    ir, vis = day_pair if which == "day" else night_pair
    fused = load_teacher_class(name, "fusion")().fuse(ir, vis)
    assert fused.shape == ir.shape and fused.dtype == np.float32
    assert 0.0 <= fused.min() and fused.max() <= 1.0
    mine, mean = _scores(ir, vis, fused), _scores(ir, vis, 0.5 * (ir + vis))
    # edge transfer from both sources and contrast: the plain average loses both
    assert mine["Qabf"] > mean["Qabf"] + 0.05, (mine, mean)
    assert mine["SD"] > mean["SD"], (mine, mean)
    # it is a fusion, not a copy of either source
    for source in (ir, vis):
        assert np.abs(fused - source).mean() > 0.01


@pytest.mark.parametrize("which", ["day", "night"])
def test_pyramid_keeps_what_is_bright_in_one_camera_only(which, day_pair, night_pair):
    """At large scale the pyramid teacher follows the brighter source (warm people and cars at night, the sky and lit
    surfaces by day) instead of averaging them, as the classical Laplacian fusion's base does."""
    import cv2
    ir, vis = day_pair if which == "day" else night_pair
    low = lambda a: cv2.GaussianBlur(a, (0, 0), 12)  # noqa: E731
    brighter = np.maximum(low(ir), low(vis))
    pyramid = load_teacher_class("pyramid", "fusion")().fuse(ir, vis)
    laplacian = load_teacher_class("laplacian", "baseline")().fuse(ir, vis)
    assert np.abs(low(pyramid) - brighter).mean() < np.abs(low(laplacian) - brighter).mean()
    assert np.abs(low(pyramid) - brighter).mean() < 0.03


@pytest.mark.parametrize("which", ["day", "night"])
def test_pyramid_sharp_adds_detail_and_keeps_the_base(which, day_pair, night_pair):
    import cv2
    ir, vis = day_pair if which == "day" else night_pair
    plain = load_teacher_class("pyramid", "fusion")().fuse(ir, vis)
    sharp = load_teacher_class("pyramid-sharp", "fusion")().fuse(ir, vis)
    plain_scores, sharp_scores = _scores(ir, vis, plain), _scores(ir, vis, sharp)
    for metric in ("SF", "AG"):
        assert sharp_scores[metric] > 1.04 * plain_scores[metric], (metric, plain_scores, sharp_scores)
    low = lambda a: cv2.GaussianBlur(a, (0, 0), 12)  # noqa: E731
    assert np.abs(low(sharp) - low(plain)).mean() < 0.005          # the same large-scale brightness


def test_visual_saliency_map_favours_rare_grey_levels():
    import torch

    from teacher.multiscale import visual_saliency_map
    img = torch.full((1, 1, 20, 20), 0.2)
    img[..., :2, :2] = 0.9                       # a small bright object on a large dark background
    vsm = visual_saliency_map(img)[0, 0]
    assert float(vsm[0, 0]) == pytest.approx(1.0) and float(vsm[10, 10]) == pytest.approx(0.0)
    assert float(visual_saliency_map(torch.full((1, 1, 8, 8), 0.5)).abs().max()) == 0.0   # flat: nothing salient


def test_teachers_handle_small_and_odd_sizes():
    rng = np.random.default_rng(0)
    ir, vis = rng.random((17, 23), dtype=np.float32), rng.random((17, 23), dtype=np.float32)
    for name in TEACHERS:
        fused = load_teacher_class(name, "fusion")().fuse(ir, vis)
        assert fused.shape == (17, 23) and np.isfinite(fused).all()


def test_fuse_cli_runs_the_new_teachers(tmp_path, roadscene, train_names):
    import cv2

    from runtime.cli import main
    root = tmp_path / "data"
    for sub in ("ir", "vi"):
        (root / sub).mkdir(parents=True)
        for name in train_names[:2]:
            img = cv2.imread(str(roadscene / sub / f"{name}.jpg"), cv2.IMREAD_UNCHANGED)
            cv2.imwrite(str(root / sub / f"{name}.png"), img[::2, ::2])
    for name in TEACHERS:
        out = tmp_path / name
        assert main(["teacher", "fuse", "--teacher", name, "--data", str(root), "--out", str(out),
                     "--device", "cpu", "--threads", "1"]) == 0
        assert sorted(p.stem for p in out.glob("*.png")) == sorted(train_names[:2])
