"""Augmentation on the device (distill/gpu_augment.py) against the albumentations path (distill/data.py), on CPU
tensors of real RoadScene pairs: the same crop for IR, VIS and the target, misalignment and noise on IR only, jitter
on VIS only, and the same distributions of what the student sees. The CUDA test repeats the statistics on a GPU."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("kornia")

from helpers import requires_gpu  # noqa: E402
from distill.data import AugmentConfig, PairAugment  # noqa: E402
from distill.gpu_augment import (DeviceBatches, batches_per_epoch, resolve_augment_device,  # noqa: E402
                                 warn_unimplemented)
from runtime.color import luminance  # noqa: E402
from runtime.imageio import discover_pairs, read_pair  # noqa: E402

QUIET = dict(color_jitter=0.0, ir_noise=0.0, misalign_prob=0.0)


@pytest.fixture(scope="module")
def pairs(roadscene, train_names):
    """(ir, vis RGB) of 6 real training pairs of different sizes."""
    return [read_pair(p) for p in discover_pairs(roadscene, names=train_names[:6])]


def _set(items, vis_channels=1):
    return SimpleNamespace(items=items, vis_channels=vis_channels)


def _batches(items, device="cpu", batch_size=8, **config):
    return DeviceBatches(_set(items), AugmentConfig(**config), device, seed=3, batch_size=batch_size)


def _shift(a: np.ndarray, b: np.ndarray) -> float:
    (dx, dy), _ = cv2.phaseCorrelate(a.astype(np.float64), b.astype(np.float64))
    return float(np.hypot(dx, dy))


def test_one_crop_for_all_three_images(pairs):
    """VIS = IR in three channels and target = IR: with nothing modality-specific on, the three crops are equal."""
    items = [(ir, np.repeat(ir[..., None], 3, axis=2), ir.copy()) for ir, _ in pairs]
    batch = _batches(items, batch_size=16, crop=48, **QUIET).batch(0)
    assert batch["ir"].shape == (16, 1, 48, 48) and batch["vis"].shape == (16, 1, 48, 48)
    torch.testing.assert_close(batch["target"], batch["ir"], rtol=0, atol=0)
    torch.testing.assert_close(batch["vis"], batch["ir"], rtol=0, atol=1e-5)
    assert float(batch["ir"].std(dim=(1, 2, 3)).min()) > 0.01   # real image content, not padding


def test_misalignment_moves_ir_only(pairs):
    items = [(ir, vis, ir.copy()) for ir, vis in pairs]
    still = _batches(items, crop=96, **QUIET).batch(1)
    moved = _batches(items, crop=96, **{**QUIET, "misalign_prob": 1.0}).batch(1)
    torch.testing.assert_close(moved["vis"], still["vis"], rtol=0, atol=0)
    torch.testing.assert_close(moved["target"], still["target"], rtol=0, atol=0)
    torch.testing.assert_close(still["ir"], still["target"], rtol=0, atol=0)
    shifts = [_shift(t[0].numpy(), i[0].numpy()) for i, t in zip(moved["ir"], moved["target"])]
    assert float((moved["ir"] - moved["target"]).abs().mean()) > 0.005
    assert max(shifts) > 0.2
    assert max(shifts) < 0.015 * 96 * np.sqrt(2) + 96 * 0.02 + 96 * np.radians(1.5) + 1


def test_colour_jitter_touches_vis_only_and_noise_ir_only(pairs):
    items = [(ir, vis, ir.copy()) for ir, vis in pairs]
    base = _batches(items, crop=64, **QUIET).batch(2)
    jittered = _batches(items, crop=64, **{**QUIET, "color_jitter": 1.0}).batch(2)
    noisy = _batches(items, crop=64, **{**QUIET, "ir_noise": 1.0, "ir_noise_std": 0.05}).batch(2)
    for other in (jittered, noisy):
        torch.testing.assert_close(other["target"], base["target"], rtol=0, atol=0)
    torch.testing.assert_close(jittered["ir"], base["ir"], rtol=0, atol=0)
    torch.testing.assert_close(noisy["vis"], base["vis"], rtol=0, atol=0)
    assert int(((jittered["vis"] - base["vis"]).abs().mean(dim=(1, 2, 3)) > 1e-3).sum()) >= 6
    assert float((noisy["ir"] - base["ir"]).std()) > 0.005


def _features(ir, vis, target):
    gy, gx = np.gradient(target)
    return [ir.mean(), ir.std(), vis.mean(), vis.std(), np.abs(ir - target).mean(), np.hypot(gx, gy).mean()]


def test_distributions_match_the_albumentations_path(pairs):
    """Per-crop statistics over 200 crops of each path: brightness and contrast of IR and VIS (crop area, flips and
    the colour jitter), gradient energy (the zoom of the random resized crop), and how far IR moves from the target
    (rotation/scale misalignment + noise). Translation is off here: albumentations truncates its shift to whole
    pixels (int()), the device path shifts by the continuous amount the config states (tested above)."""
    config = AugmentConfig(crop=48, misalign_shift=0.0)
    items = [(ir, vis, ir.copy()) for ir, vis in pairs]
    cpu, rng = PairAugment(config, seed=5), np.random.default_rng(0)
    reference = []
    for _ in range(200):
        ir, vis, target = items[rng.integers(len(items))]
        a, v, t = cpu(ir, vis, target)
        reference.append(_features(a, luminance(v), t))
    device = DeviceBatches(_set(items), config, "cpu", seed=5, batch_size=50)
    ours = []
    for step in range(4):
        batch = device.batch(step)
        for i in range(50):
            ours.append(_features(*(batch[k][i, 0].numpy() for k in ("ir", "vis", "target"))))
    reference, ours = np.array(reference), np.array(ours)
    names = ["ir mean", "ir std", "vis mean", "vis std", "|ir - target|", "gradient"]
    report = {n: (round(float(r), 4), round(float(o), 4)) for n, r, o in
              zip(names, reference.mean(axis=0), ours.mean(axis=0))}
    for k in (0, 2):                                     # mean brightness: within 0.025 of full scale
        assert abs(reference[:, k].mean() - ours[:, k].mean()) < 0.025, report
        assert 0.7 < ours[:, k].std() / reference[:, k].std() < 1.4, report
    for k in (1, 3, 5):                                  # contrast and gradient energy: within 15%
        assert 0.85 < ours[:, k].mean() / reference[:, k].mean() < 1.15, report
    assert 0.6 < ours[:, 4].mean() / reference[:, 4].mean() < 1.6, report


def test_batches_are_reproducible_and_may_exceed_the_set(pairs):
    items = [(ir, vis, ir.copy()) for ir, vis in pairs]
    batches = _batches(items, batch_size=15, crop=32)
    first, again = batches.batch(4), _batches(items, batch_size=15, crop=32).batch(4)
    for key in ("ir", "vis", "target"):
        torch.testing.assert_close(first[key], again[key], rtol=0, atol=0)
    assert not torch.equal(first["ir"], batches.batch(5)["ir"])
    # 15 items from 6 pairs: two whole shuffled epochs and half of a third, each pair once per epoch
    stream = torch.cat([batches.indices(step) for step in range(2)]).tolist()
    for epoch in range(5):
        assert sorted(stream[epoch * 6:epoch * 6 + 6]) == list(range(6))
    assert batches_per_epoch(6, 15, 1) == 1 and batches_per_epoch(171, 8, 2) == 10


def test_three_channel_students_get_rgb(pairs):
    from runtime.color import split_luminance
    items = [(ir, vis, vis.copy()) for ir, vis in pairs]
    batch = DeviceBatches(_set(items, vis_channels=3), AugmentConfig(crop=32, **QUIET), "cpu", batch_size=4).batch(0)
    assert batch["vis"].shape == (4, 3, 32, 32) and batch["target"].shape == (4, 3, 32, 32)
    torch.testing.assert_close(batch["target"], batch["vis"], rtol=0, atol=0)
    assert split_luminance(batch["vis"], channel_axis=1)[1] is not None


def test_unknown_augment_fields_are_reported_once_and_ignored(capsys):
    @dataclasses.dataclass
    class NewerConfig(AugmentConfig):
        glare_prob: float = 0.3
        dark_noisy_vis: float = 0.2

    messages = []
    assert warn_unimplemented(NewerConfig(), log=messages.append) == ["glare_prob", "dark_noisy_vis"]
    assert warn_unimplemented(NewerConfig(), log=messages.append) == ["glare_prob", "dark_noisy_vis"]
    assert len(messages) == 1 and "glare_prob, dark_noisy_vis" in messages[0]
    assert warn_unimplemented(AugmentConfig(), log=messages.append) == [] and len(messages) == 1


def test_augment_device_choice():
    from runtime.errors import FusionError
    assert resolve_augment_device("auto", torch.device("cpu")) == "cpu"
    assert resolve_augment_device("auto", torch.device("cuda", 0)) == "gpu"
    assert resolve_augment_device("gpu", torch.device("cpu")) == "gpu"
    with pytest.raises(FusionError, match="augment_device must be one of"):
        resolve_augment_device("tpu", torch.device("cpu"))


@requires_gpu
def test_cuda_batches_match_the_cpu_statistics(pairs):
    items = [(ir, vis, ir.copy()) for ir, vis in pairs]
    gpu = _batches(items, device="cuda", batch_size=256, crop=64).batch(0)
    cpu = _batches(items, device="cpu", batch_size=256, crop=64).batch(0)
    assert gpu["ir"].is_cuda and gpu["ir"].dtype == torch.float32
    for key in ("ir", "vis", "target"):
        assert abs(float(gpu[key].mean()) - float(cpu[key].mean())) < 0.03
        assert 0.85 < float(gpu[key].std()) / float(cpu[key].std()) < 1.15


def test_throughput_benchmark_runs_on_the_cpu(tmp_path, roadscene):
    import json

    from benchmarks.augment_speed import main
    out = tmp_path / "speed.json"
    assert main(["--data", str(roadscene), "--pairs", "3", "--crop", "32", "--batch", "8", "--steps", "1",
                 "--cpu-crops", "4", "--repeats", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["batch"] for r in rows] == [1, 8] and all(r["crops_per_s"] > 0 for r in rows)
    if not torch.cuda.is_available():    # asking for CUDA without one: one line, exit 2
        assert main(["--data", str(roadscene), "--device", "cuda"]) == 2


def test_online_targets_and_repeats_on_the_device_path(pairs):
    """With data.online_teacher the set has no targets: batches carry IR and VIS only; a set's repeats decide how
    often each item is drawn."""
    items = [(ir, vis, None) for ir, vis in pairs[:2]]
    online = SimpleNamespace(items=items, vis_channels=1, index=[0, 1, 1, 1])
    batches = DeviceBatches(online, AugmentConfig(crop=32, **QUIET), "cpu", seed=3, batch_size=4)
    assert len(batches) == 4
    batch = batches.batch(0)
    assert set(batch) == {"ir", "vis"} and batch["ir"].shape == (4, 1, 32, 32) and batch["vis"].shape == (4, 1, 32, 32)
    drawn = torch.cat([batches.indices(step) for step in range(50)])
    assert (drawn == 1).sum() == 3 * (drawn == 0).sum()


def test_condition_augmentation_is_reported_when_on():
    from distill.gpu_augment import unimplemented_fields
    assert not set(unimplemented_fields(AugmentConfig())) & {"vis_dark", "ir_agc"}
    assert {"vis_dark", "ir_agc", "vis_noise_std"} <= set(unimplemented_fields(AugmentConfig(vis_dark=0.2)))
