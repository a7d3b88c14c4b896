"""Distillation training on real RoadScene pairs with em teacher targets: the loss decreases, a resumed run ends
exactly where an uninterrupted one does, the CLI writes the run folder, and DDP trains on two CPU processes (gloo)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import SHARED_DATA as SHARED, requires_gpu

from distill.train import load_train_config, train

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(2)


@pytest.fixture(scope="module")
def em_dataset(tmp_path_factory, roadscene, train_names):
    """4 real training pairs with em teacher targets computed here (EM capped at 30 iterations to keep it fast;
    the shipped model trains on converged targets)."""
    from runtime.color import split_luminance
    from runtime.imageio import discover_pairs, read_pair, write_image
    from teacher.registry import load_teacher_class
    root = tmp_path_factory.mktemp("em_data")
    teacher = load_teacher_class("em", "fusion")(max_iter=30)
    names = train_names[:4]
    for sub in ("ir", "vi"):
        (root / sub).mkdir()
    for pair in discover_pairs(roadscene, names=names):
        shutil.copy(pair.ir, root / "ir")
        shutil.copy(pair.vis, root / "vi")
        ir, vis = read_pair(pair)
        write_image(root / "TEACHER_FUSED" / f"{pair.name}.png", teacher.fuse(ir, split_luminance(vis)[0]))
    (root / "train.txt").write_text("\n".join(names) + "\n")
    return root


def _overrides(root: Path, run_dir: Path, steps: int, **extra) -> list[str]:
    values = {"run_dir": run_dir, "steps": steps, "data.root": root, "data.names": "train.txt",
              "data.teacher_dir": "''", "data.val_fraction": 0.25, "data.batch_size": 1, "data.augment.crop": 64,
              "model.variant": "tiny-test", "optim.warmup_steps": 2, "optim.lr": 0.01, "val_every": 1000,
              "save_every": 1000, "log_every": 2, "image_every": 1000, "threads": 2,
              "loss.warmup_l1_steps": 2, "device": "cpu", "data.sets": "[]", "data.online_teacher": "''", **extra}
    return [f"{k}={v}" for k, v in values.items()]


def _config(root, run_dir, steps, **extra):
    return load_train_config(str(REPO / "configs" / "distill" / "default.yaml"), _overrides(root, run_dir, steps,
                                                                                            **extra))


def test_loss_decreases_and_run_folder_is_complete(em_dataset, tmp_path):
    run = tmp_path / "run"
    summary = train(_config(em_dataset, run, 40, val_every=40, **{"data.augment.misalign_prob": 0.0}))
    records = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    losses = [r["l1"] for r in records if "l1" in r]
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    # validation pairs come from train.txt, the teacher is em: the student beats its starting point (the average)
    assert summary["val"]["l1"] < 0.12
    for path in ("config.yaml", "best/config.json", "best/model.safetensors", "last/state.json",
                 "last/optimizer.safetensors", "last/ema.safetensors", "summary.json"):
        assert (run / path).is_file(), path
    assert any((run / "tb").iterdir())
    from distill.models import load_student
    assert load_student(run / "best").config.variant == "tiny-test"


def test_resume_continues_where_an_uninterrupted_run_would_be(em_dataset, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import distill.train as train_module
    straight = tmp_path / "straight"
    train(_config(em_dataset, straight, 10, save_every=5))
    # rerunning a finished run (what a second `make weights` does) trains nothing and touches nothing
    log_before = (straight / "train_log.jsonl").read_text()
    stamp = (straight / "last" / "model.safetensors").stat().st_mtime_ns
    assert train(_config(em_dataset, straight, 10, save_every=5))["step"] == 10
    assert (straight / "train_log.jsonl").read_text() == log_before
    assert (straight / "last" / "model.safetensors").stat().st_mtime_ns == stamp

    # the same run, killed while computing step 7 (after the step-5 checkpoint), then started again
    real_loader, served = train_module.epoch_loader, []

    def interrupted_loader(*args):
        for batch in real_loader(*args):
            if len(served) == 6:
                raise KeyboardInterrupt
            served.append(1)
            yield batch
    resumed = tmp_path / "resumed"
    monkeypatch.setattr(train_module, "epoch_loader", interrupted_loader)
    with pytest.raises(KeyboardInterrupt):
        train(_config(em_dataset, resumed, 10, save_every=5))
    assert json.loads((resumed / "last" / "state.json").read_text())["step"] == 5   # mid-epoch
    monkeypatch.setattr(train_module, "epoch_loader", real_loader)
    summary = train(_config(em_dataset, resumed, 10, save_every=5))
    assert summary["step"] == 10
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(str(straight / "last" / name))
        b = load_file(str(resumed / "last" / name))
        for key in a:
            assert torch.allclose(a[key], b[key], atol=1e-5), (name, key)


def test_cli_trains_and_refuses_the_test_split(em_dataset, tmp_path, capsys):
    from runtime.cli import main
    run = tmp_path / "cli_run"
    code = main(["distill", "train", "--config", str(REPO / "configs" / "distill" / "default.yaml"),
                 *_overrides(em_dataset, run, 4)])
    assert code == 0
    assert "best weights:" in capsys.readouterr().out
    assert (run / "config.yaml").read_text().count("variant: tiny-test") == 1
    shutil.copy(em_dataset / "train.txt", em_dataset / "test.txt")
    try:
        code = main(["distill", "train", "--config", str(REPO / "configs" / "distill" / "default.yaml"),
                     *_overrides(em_dataset, tmp_path / "bad", 4, **{"data.names": "test.txt"})])
    finally:
        (em_dataset / "test.txt").unlink()
    assert code == 2
    assert "test.txt is for evaluation only" in capsys.readouterr().err


def test_day_and_night_sets_with_online_targets(em_dataset, tmp_path):
    """The default recipe's data path: two sets (RoadScene + LLVIP night, the small one repeated), 1280x1024 frames
    downscaled at load, capture-condition augmentation, targets made online by the pyramid teacher."""
    from distill.train import build_datasets
    llvip = SHARED / "llvip_mini"
    sets = f"[{{root: {em_dataset}, names: train.txt}}, {{root: {llvip}, names: train.txt, repeat: 2}}]"
    cfg = _config(em_dataset, tmp_path / "sets", 4, **{"data.sets": sets, "data.online_teacher": "pyramid",
                                                       "data.max_side": 320, "data.augment.vis_dark": 0.5,
                                                       "data.augment.ir_agc": 0.5, "data.augment.vis_glare": 0.5})
    train_set, val_set = build_datasets(cfg)
    llvip_names = [Path(n).stem for n in (llvip / "train.txt").read_text().split()]
    # 4 RoadScene names and 24 LLVIP names, a quarter of each carved out for validation; LLVIP drawn twice
    assert len(train_set) == 3 + 2 * 18 and len(val_set) == 1 + 6
    assert max(max(ir.shape) for ir, _, _ in train_set.items) == 320
    assert "target" not in train_set[0] and train_set[0]["ir"].shape == (1, 64, 64)
    assert not set(p.name for p in val_set.pairs) - set(llvip_names) - set(em_dataset.joinpath("train.txt")
                                                                          .read_text().split())
    summary = train(cfg)
    assert summary["step"] == 4 and 0 < summary["val"]["l1"] < 0.5


def test_validation_lists_are_refused_in_any_set(em_dataset, tmp_path):
    from runtime.errors import FusionError
    sets = f"[{{root: {em_dataset}, names: train.txt}}, {{root: {SHARED / 'llvip_mini'}, names: val.txt}}]"
    with pytest.raises(FusionError, match="val.txt is for evaluation only"):
        train(_config(em_dataset, tmp_path / "bad", 2, **{"data.sets": sets, "data.online_teacher": "pyramid"}))


def test_unknown_config_key_is_reported(tmp_path):
    from runtime.errors import FusionError
    with pytest.raises(FusionError, match="unknown config key"):
        load_train_config(None, ["optim.lrr=1"])


def test_ddp_two_cpu_processes_gloo(em_dataset, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "distill.train", "--config", str(REPO / "configs" / "distill" / "default.yaml"),
           *_overrides(em_dataset, run, 4, threads=1, **{"data.val_fraction": 0.0})]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 process(es)" in result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 4
    assert summary["ranks_in_sync"] is True
    assert (run / "best" / "model.safetensors").is_file()


@requires_gpu
def test_cuda_amp_training_steps(em_dataset, tmp_path):
    """The GPU path: AMP (bf16 where supported, else fp16 with a grad scaler) trains, checkpoints and resumes."""
    run = tmp_path / "cuda"
    summary = train(_config(em_dataset, run, 6, device="cuda", save_every=3, **{"optim.amp": "true"}))
    assert summary["step"] == 6 and summary["val"]["l1"] < 0.5
    assert train(_config(em_dataset, run, 8, device="cuda", save_every=3, **{"optim.amp": "true"}))["step"] == 8
    from distill.models import load_student
    assert load_student(run / "best").config.variant == "tiny-test"


def test_zero_periods_turn_periodic_actions_off(em_dataset, tmp_path, monkeypatch):
    """image_every=0 means no preview images (it used to divide by zero); log_every=0 no log lines; val_every and
    save_every 0 validate and save once, at the end."""
    import distill.train as train_module
    grids = []
    monkeypatch.setattr(train_module, "preview_grid", lambda *args: grids.append(args) or torch.zeros(3, 8, 32))
    run = tmp_path / "zero"
    summary = train(_config(em_dataset, run, 3, image_every=0, log_every=0, val_every=0, save_every=0))
    assert summary["step"] == 3 and grids == []
    records = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3] and "val" in records[0]
    assert json.loads((run / "last" / "state.json").read_text())["step"] == 3


def test_pick_device_gives_set_device_an_index(monkeypatch):
    """torch.cuda.set_device refuses an index-less device ("Expected a torch.device with a specified index"): plain
    `cuda` (what device=auto resolves to) must become this process's GPU. Checked with CUDA faked on the CPU."""
    from distill.train import Dist, pick_device
    given = []

    def set_device(device):
        if isinstance(device, torch.device) and device.index is None:
            raise ValueError("Expected a torch.device with a specified index or an integer, but got:cuda")
        given.append(device)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    assert pick_device("auto", Dist()) == torch.device("cuda:0")
    assert pick_device("cuda", Dist(rank=1, world=2, local_rank=1)) == torch.device("cuda:1")
    assert pick_device("cuda:3", Dist()) == torch.device("cuda:3")
    assert [d.index for d in given] == [0, 1, 3]
    assert pick_device("cpu", Dist()) == torch.device("cpu")


def test_device_augmentation_trains_resumes_exactly_and_takes_big_batches(em_dataset, tmp_path, monkeypatch):
    """data.augment_device=gpu (kornia batches on the training device, here the CPU): a batch of 6 from 3 training
    pairs trains, and a run killed at step 5 (after the step-3 checkpoint) and started again ends with the weights
    of an uninterrupted one."""
    from safetensors.torch import load_file

    from distill.gpu_augment import DeviceBatches
    gpu = {"data.augment_device": "gpu", "data.batch_size": 6, "save_every": 3}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train(_config(em_dataset, straight, 6, **gpu))["step"] == 6
    real_batch = DeviceBatches.batch

    def killed_at_step_4(self, step):
        if step == 4:
            raise KeyboardInterrupt
        return real_batch(self, step)
    monkeypatch.setattr(DeviceBatches, "batch", killed_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(_config(em_dataset, resumed, 6, **gpu))
    assert json.loads((resumed / "last" / "state.json").read_text())["step"] == 3
    monkeypatch.setattr(DeviceBatches, "batch", real_batch)
    assert train(_config(em_dataset, resumed, 6, **gpu))["step"] == 6
    a = load_file(str(straight / "last" / "model.safetensors"))
    b = load_file(str(resumed / "last" / "model.safetensors"))
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key


def test_online_teacher_options_reach_the_teacher_and_wrong_ones_are_reported(em_dataset, tmp_path):
    from runtime.errors import FusionError
    sets = f"[{{root: {em_dataset}, names: train.txt}}]"
    with pytest.raises(FusionError, match=r"online_teacher_options .*do not fit the 'pyramid' teacher"):
        train(_config(em_dataset, tmp_path / "bad", 2, **{"data.sets": sets, "data.online_teacher": "pyramid",
                                                          "data.online_teacher_options": "{sharpness: 2}"}))


def test_a_student_without_a_network_is_refused_before_anything_runs(tmp_path):
    from runtime.errors import FusionError
    run = tmp_path / "run"
    cfg = load_train_config(str(REPO / "configs" / "distill" / "default.yaml"), [f"run_dir={run}", "model.variant=rule"])
    with pytest.raises(FusionError, match="has no network"):
        train(cfg)
    assert not run.exists()
