"""Outputs that cannot be written: one line and exit 2, before any work where it can be known then; and what was
already written stays valid (the video finalised and playable) when the disk fills, a source dies or SIGTERM comes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

import runtime.sinks as sinks
from runtime.capture import CaptureWorker
from runtime.cli import main as fusion
from runtime.pipeline import FusionPipeline
from runtime.sources import Frame, Source
from helpers import NumpyBackend, SyntheticSource, count_frames, make_onnx_model, run_until_pairs_then_signal

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "runtime" / "assets" / "samples"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_onnx_model(tmp_path_factory.mktemp("model") / "mean.onnx", "mean")


def _run(argv, model):
    return fusion(["run", "--ir", str(SAMPLES / "ir.mp4"), "--vis", str(SAMPLES / "vis.mp4"), "--model", str(model),
                   "--imgsz", "120x160", "--headless", "-q", *argv])


@pytest.mark.parametrize("args, message", [
    (["--output", "/proc/nope/fused.mp4"], "cannot write video /proc/nope/fused.mp4"),
    (["--output", "/proc/nope/frames/"], "cannot write images to /proc/nope/frames"),
    (["--output", "{file}/fused.mp4"], "is not a folder"),
    (["--output", "{dir_named_mp4}"], "that is a folder, not a file"),
    (["--output", "/sys/fused.mp4"], "no permission"),
    (["--output", "{tmp}/ok.mp4", "--stats", "/proc/nope/stats.json"], "cannot write statistics"),
    (["--output", "{tmp}/ok.mp4", "--stats", "{tmp}"], "is a folder"),
    (["--record-pairs", "/proc/nope/pairs"], "cannot write recorded pairs"),
])
def test_bad_output_paths_are_one_line_and_exit_2_before_any_work(tmp_path, model, capsys, monkeypatch, args,
                                                                  message):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "dir.mp4").mkdir()
    values = {"file": tmp_path / "a_file", "dir_named_mp4": tmp_path / "dir.mp4", "tmp": tmp_path}
    captured = []
    start = CaptureWorker.start
    monkeypatch.setattr(CaptureWorker, "start", lambda worker: (captured.append(worker.role), start(worker)))
    code = _run([a.format(**values) for a in args], model)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert "internal error" not in err[0]
    assert not captured, "capture began before the bad output was refused"   # refused up front, not after the clip
    assert not (tmp_path / "ok.mp4").exists()


def _small_tmpfs(path: Path, size: str) -> bool:
    """Mount a tmpfs of `size` at `path` (root only); False where this machine does not allow it."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return result.returncode == 0


def test_a_full_disk_stops_the_run_with_the_video_finalised(tmp_path, model, capsys, monkeypatch):
    """A real small file system (tmpfs) fills up while the video is written: exit 2 with one line, and the video
    holds every frame written before, playable."""
    disk = tmp_path / "disk"
    if not _small_tmpfs(disk, "3m"):
        pytest.skip("needs root to mount a small tmpfs; the simulated full disk below still runs")
    try:
        monkeypatch.setattr(sinks.VideoFileSink, "RESERVE_BYTES", 512 * 1024)
        monkeypatch.setattr(sinks.VideoFileSink, "CHECK_EVERY", 1)
        out = disk / "fused.mp4"
        code = fusion(["run", "--ir", str(SAMPLES / "ir.mp4"), "--vis", str(SAMPLES / "vis.mp4"), "--model",
                       str(model), "--imgsz", "480x640", "--headless", "-q", "--loop", "--output", str(out)])
        assert code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is full" in err[0] and "finalised" in err[0], err
        frames, shape = count_frames(out)
        assert frames > 10 and shape == (480, 640)
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_disk_filling_up_is_noticed_between_frames(tmp_path, model, capsys, monkeypatch):
    """The same through the free-space check alone (any machine): the disk reports itself full after 40 frames."""
    writes = {"n": 0}
    real_free = sinks.free_bytes

    def free_after_40(folder):
        writes["n"] += 1
        return real_free(folder) if writes["n"] <= 40 // sinks.VideoFileSink.CHECK_EVERY + 1 else 1024 * 1024
    monkeypatch.setattr(sinks, "free_bytes", free_after_40)
    out = tmp_path / "fused.mp4"
    code = _run(["--output", str(out)], model)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "full (1 MB left)" in err[0], err
    frames, shape = count_frames(out)
    assert 30 <= frames <= 60 and shape == (120, 160)
    assert not list(tmp_path.glob(".*partial*"))


def test_image_folder_on_a_full_disk_keeps_whole_images(tmp_path, model, capsys):
    disk = tmp_path / "disk"
    if not _small_tmpfs(disk, "1m"):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        code = _run(["--output", str(disk / "frames") + "/", "--imgsz", "480x640", "--image-ext", ".png"], model)
        assert code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "the disk is full" in err[0] and "complete" in err[0], err
        written = sorted((disk / "frames").glob("*.png"))
        assert written
        for path in written:                                            # every image there decodes whole
            assert cv2.imread(str(path)) is not None
        assert not [p for p in (disk / "frames").iterdir() if p.name.startswith(".")]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


class DyingSource(SyntheticSource):
    """A file-like source whose decoder crashes after `frames_before` frames."""

    def __init__(self, frames_before: int, **kwargs):
        super().__init__(**kwargs)
        self.frames_before = frames_before

    def read(self):
        if self.index >= self.frames_before:
            raise RuntimeError("decoder crashed")
        return super().read()


def test_a_dying_source_leaves_a_finalised_video(tmp_path):
    out = tmp_path / "fused.mp4"
    ir = DyingSource(45, fps=10, live=False, role="ir", size=(96, 128))
    vis = SyntheticSource(fps=30, live=False, role="vis", size=(96, 128), frames=300)
    pipeline = FusionPipeline(ir_source=ir, vis_source=vis, backend=NumpyBackend(), outputs=[str(out)],
                              imgsz="96x128", headless=True, verbose=False)
    with pytest.raises(RuntimeError, match="decoder crashed"):
        pipeline.run()
    frames, shape = count_frames(out)
    assert frames == pipeline.stats.counters["frames_out"] > 60 and shape == (96, 128)
    assert not list(tmp_path.glob(".*partial*"))


def test_sigterm_finalises_the_video(tmp_path, model):
    """SIGTERM (a service manager stopping it) in the middle of a paced, looped run, once 5 pairs are recorded:
    exit 0, a playable video holding every frame the stats counted."""
    out = tmp_path / "fused.mp4"
    stats = tmp_path / "stats.json"
    pairs = tmp_path / "pairs"
    code, output = run_until_pairs_then_signal(
        ["--ir", SAMPLES / "ir.mp4", "--vis", SAMPLES / "vis.mp4", "--model", model, "--imgsz", "120x160",
         "--realtime", "--loop", "--headless", "--output", out, "--stats", stats], pairs, signal.SIGTERM)
    assert code == 0, output
    assert "stopping (SIGTERM)" in output
    report = json.loads(stats.read_text())
    frames, shape = count_frames(out)
    assert frames == report["frames"] >= 5 and shape == (120, 160)
