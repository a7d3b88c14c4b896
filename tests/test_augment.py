"""Augmentation and training data on real RoadScene pairs: geometry is shared, colour jitter touches VIS only, noise
and the misalignment affine touch IR only (and really move it), datasets and the train/val split."""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from distill.data import AugmentConfig, FusionPairs, PairAugment, split_train_val
from runtime.imageio import discover_pairs, read_pair, write_image

QUIET = dict(color_jitter=0.0, ir_noise=0.0, misalign_prob=0.0, hflip=0.5)


@pytest.fixture(scope="module")
def real_pair(roadscene, train_names):
    ir, vis = read_pair(discover_pairs(roadscene, names=train_names[:1])[0])
    return ir, vis


def _run(config: AugmentConfig, ir, vis, seed=7, draws=4):
    aug = PairAugment(config, seed=seed)
    # the target is a copy of IR, so "aligned with the target" is "aligned with the un-misaligned IR"
    return [aug(ir, vis, ir.copy()) for _ in range(draws)]


def _shift(a: np.ndarray, b: np.ndarray) -> float:
    (dx, dy), _ = cv2.phaseCorrelate(a.astype(np.float64), b.astype(np.float64))
    return float(np.hypot(dx, dy))


def test_geometry_is_shared_and_crops_have_the_configured_size(real_pair):
    ir, vis = real_pair
    for ir_a, vis_a, target_a in _run(AugmentConfig(crop=96, **QUIET), ir, vis):
        assert ir_a.shape == (96, 96) and vis_a.shape == (96, 96, 3) and target_a.shape == (96, 96)
        assert ir_a.dtype == np.float32 and 0 <= ir_a.min() and ir_a.max() <= 1
        np.testing.assert_array_equal(ir_a, target_a)


def test_misalignment_moves_ir_only(real_pair):
    ir, vis = real_pair
    base = _run(AugmentConfig(crop=128, **QUIET), ir, vis)
    moved = _run(AugmentConfig(crop=128, **{**QUIET, "misalign_prob": 1.0}), ir, vis)
    for (ir0, vis0, t0), (ir1, vis1, t1) in zip(base, moved):
        np.testing.assert_array_equal(vis0, vis1)   # VIS untouched
        np.testing.assert_array_equal(t0, t1)       # the target keeps the VIS geometry
        np.testing.assert_array_equal(ir0, t0)      # without misalignment, IR stays registered
        assert np.abs(ir1 - t1).mean() > 0.005      # with it, IR really moved ...
    shifts = [_shift(t1, ir1) for ir1, _, t1 in moved]
    assert max(shifts) > 0.2                        # ... by a measurable displacement ...
    limit = 0.015 * 128 * np.sqrt(2) + 128 * 0.02 + 128 * np.radians(1.5) + 1
    assert max(shifts) < limit                      # ... that stays small


def test_colour_jitter_touches_vis_only(real_pair):
    ir, vis = real_pair
    base = _run(AugmentConfig(crop=96, **QUIET), ir, vis)
    jittered = _run(AugmentConfig(crop=96, **{**QUIET, "color_jitter": 1.0}), ir, vis)
    changed = 0
    for (ir0, vis0, t0), (ir1, vis1, t1) in zip(base, jittered):
        np.testing.assert_array_equal(ir0, ir1)
        np.testing.assert_array_equal(t0, t1)
        changed += int(np.abs(vis0 - vis1).mean() > 1e-3)
    assert changed >= 3


def test_ir_noise_touches_ir_only(real_pair):
    ir, vis = real_pair
    base = _run(AugmentConfig(crop=96, **QUIET), ir, vis)
    noisy = _run(AugmentConfig(crop=96, **{**QUIET, "ir_noise": 1.0, "ir_noise_std": 0.05}), ir, vis)
    for (ir0, vis0, t0), (ir1, vis1, t1) in zip(base, noisy):
        np.testing.assert_array_equal(vis0, vis1)
        np.testing.assert_array_equal(t0, t1)
    assert max(float(np.std(ir1 - ir0)) for (ir0, _, _), (ir1, _, _) in zip(base, noisy)) > 0.005


def test_reseed_changes_the_draws(real_pair):
    ir, vis = real_pair
    aug = PairAugment(AugmentConfig(crop=64, **QUIET), seed=1)
    first = aug(ir, vis, ir.copy())[0]
    aug.reseed(1234)
    assert not np.array_equal(first, aug(ir, vis, ir.copy())[0])


@pytest.fixture()
def small_dataset(tmp_path, roadscene, train_names):
    """A dataset folder with 3 real pairs and mean-fusion stand-in targets (the real ones are em fusions)."""
    from runtime.color import split_luminance
    root = tmp_path / "data"
    for sub in ("ir", "vi", "TEACHER_FUSED"):
        (root / sub).mkdir(parents=True)
    for name in train_names[:3]:
        shutil.copy(roadscene / "ir" / f"{name}.jpg", root / "ir")
        shutil.copy(roadscene / "vi" / f"{name}.jpg", root / "vi")
        ir, vis = read_pair(discover_pairs(roadscene, names=[name])[0])
        write_image(root / "TEACHER_FUSED" / f"{name}.png", (ir + split_luminance(vis)[0]) / 2)
    return root, train_names[:3]


def test_dataset_items(small_dataset):
    root, names = small_dataset
    pairs = discover_pairs(root, names=names, require_target=True)
    plain = FusionPairs(pairs)
    item = plain[0]
    h, w = item["ir"].shape[-2:]
    assert item["vis"].shape == (1, h, w) and item["target"].shape == (1, h, w)
    # the stand-in target is the mean of IR and VIS luminance: the dataset must hand back consistent tensors
    assert float((item["target"] - (item["ir"] + item["vis"]) / 2).abs().mean()) < 0.01
    augmented = FusionPairs(pairs, PairAugment(AugmentConfig(crop=64)))
    assert augmented[1]["ir"].shape == (1, 64, 64)
    rgb = FusionPairs(pairs, PairAugment(AugmentConfig(crop=64)), vis_channels=3)[2]
    assert rgb["vis"].shape == (3, 64, 64) and rgb["target"].shape == (3, 64, 64)


def test_dataset_requires_targets(small_dataset):
    from runtime.errors import FusionError
    root, names = small_dataset
    (root / "TEACHER_FUSED" / f"{names[0]}.png").unlink()
    with pytest.raises(FusionError, match="no teacher target"):
        FusionPairs(discover_pairs(root, names=names))


def test_train_val_split(train_names):
    train, val = split_train_val(train_names, 0.1, seed=0)
    assert len(val) == round(len(train_names) * 0.1)
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(train_names)
    assert split_train_val(train_names, 0.1, seed=0) == (train, val)
    assert split_train_val(train_names, 0.1, seed=1)[1] != val


# ------------------------------------------------------------------------------------------ capture conditions
def _conditions(**probabilities):
    from distill.data import ConditionAugment
    return ConditionAugment(AugmentConfig(**probabilities), seed=3)


def test_conditions_are_off_by_default_and_leave_the_pipeline_unchanged(real_pair):
    from distill.data import ConditionAugment
    ir, vis = real_pair
    assert not ConditionAugment(AugmentConfig()).active
    plain = _run(AugmentConfig(crop=96), ir, vis)
    again = _run(AugmentConfig(crop=96, vis_dark=0.0, vis_glare=0.0), ir, vis)
    for a, b in zip(plain, again):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_dark_visible_frames_are_darker_and_noisier(real_pair):
    ir, vis = real_pair
    dark = _conditions(vis_dark=1.0, vis_noise_std=0.03)
    out_ir, out_vis = dark(ir, vis)
    np.testing.assert_array_equal(out_ir, ir)                       # the thermal camera does not see the dark
    assert out_vis.mean() < 0.65 * vis.mean()
    # noise: the high-frequency residual grows relative to the signal that remains
    residual = lambda a: np.abs(a - cv2.GaussianBlur(a, (5, 5), 1.5)).mean() / max(a.mean(), 1e-6)  # noqa: E731
    scores = [residual(dark(ir, vis)[1][..., 1]) for _ in range(6)]
    assert max(scores) > residual(vis[..., 1])


def test_thermal_agc_changes_contrast_and_level_but_not_geometry(real_pair):
    ir, vis = real_pair
    agc = _conditions(ir_agc=1.0, ir_contrast_min=0.35)
    outs = [agc(ir, vis) for _ in range(8)]
    for out_ir, out_vis in outs:
        np.testing.assert_array_equal(out_vis, vis)
        # a monotone tone change: the ordering of pixel values is kept (rank correlation near 1)
        sample = np.random.default_rng(0).choice(ir.size, 2000, replace=False)
        a, b = ir.ravel()[sample], out_ir.ravel()[sample]
        ranks = lambda x: np.argsort(np.argsort(x))  # noqa: E731
        assert np.corrcoef(ranks(a), ranks(b))[0, 1] > 0.95
    assert min(o[0].std() for o in outs) < 0.8 * ir.std()          # some draws squeeze the contrast


def test_glare_adds_saturated_light_to_visible_only(real_pair):
    ir, vis = real_pair
    out_ir, out_vis = _conditions(vis_glare=1.0)(ir, vis)
    np.testing.assert_array_equal(out_ir, ir)
    assert (out_vis >= 0.999).mean() > (vis >= 0.999).mean()
    assert (out_vis >= vis - 1e-6).all()                           # light only adds


def test_conditions_are_reproducible_per_seed(real_pair):
    ir, vis = real_pair
    a = _conditions(vis_dark=0.5, ir_agc=0.5, vis_glare=0.5, vis_exposure=0.5)
    b = _conditions(vis_dark=0.5, ir_agc=0.5, vis_glare=0.5, vis_exposure=0.5)
    for _ in range(3):
        for x, y in zip(a(ir, vis), b(ir, vis)):
            np.testing.assert_array_equal(x, y)


def test_albumentations_never_asks_the_network_for_its_version():
    """Building the augmentation switches albumentations' update check off before importing it (offline runs warned
    on every start). A fresh interpreter records every URL opened while the package loads."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    code = ("import urllib.request, os\n"
            "opened = []\n"
            "real = urllib.request.OpenerDirector.open\n"
            "def spy(self, url, *args, **kwargs):\n"
            "    opened.append(str(getattr(url, 'full_url', url)))\n"
            "    return real(self, url, *args, **kwargs)\n"
            "urllib.request.OpenerDirector.open = spy\n"
            "from distill.data import AugmentConfig, PairAugment\n"
            "PairAugment(AugmentConfig())\n"
            "import albumentations\n"
            "print('opened', opened, os.environ.get('NO_ALBUMENTATIONS_UPDATE'))\n")
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    env["PYTHONPATH"] = str(repo)
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-1500:]
    assert "opened [] 1" in result.stdout, result.stdout + result.stderr[-500:]
