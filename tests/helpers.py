"""Helpers shared by the tests (imported as `helpers`; pytest puts tests/ on the path): where the shared data lives,
the GPU mark, bounded waits, tiny ONNX fusion models and students, synthetic sources, recording sinks, small clips.
Fixtures live in conftest.py; tests/test_helpers.py checks the helpers themselves.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np
import pytest

from runtime.backends import Backend
from runtime.sinks import OutputInfo, Sink
from runtime.sources import Frame, Source, SourceLost


REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FUSION_SHARED_DATA", REPO.parent / "shared" / "data"))
ROADSCENE = SHARED_DATA / "roadscene"


def cuda_available() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


requires_gpu = pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU; none is present on this machine")


def wait_until(condition: Callable[[], object], timeout_s: float, failure: str, poll_s: float = 0.02):
    """Poll `condition` until it returns something true, and return that; fail the test with `failure` (what did
    not happen) when `timeout_s` passes first. For waits on other threads and processes: the bound only turns a
    hang into a clear failure, it is never what the test measures."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"{failure} (waited {timeout_s:g} s)")
        time.sleep(poll_s)


def run_until_pairs_then_signal(args: list, pairs: Path, sig: int, count: int = 5) -> tuple[int, str]:
    """Start `python -m runtime.cli run ARGS --record-pairs PAIRS` in the repository, wait until it has recorded
    `count` pairs (a media-driven point in the run, not a duration), send it `sig`, and return (exit code, output).
    It must still be running when the pairs are there: a run that ended by itself fails the test."""
    import os
    import subprocess
    import sys
    process = subprocess.Popen([sys.executable, "-m", "runtime.cli", "run", *map(str, args), "--record-pairs",
                                str(pairs)], cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: process.poll() is not None or len(list((pairs / "vi").glob("[0-9]*.png"))) >= count, 60,
                   f"the run recorded fewer than {count} pairs")
        assert process.poll() is None, process.communicate()[0]          # still running: stopped by the signal
        process.send_signal(sig)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, output


# ---------------------------------------------------------------------------------------------------- ONNX models
def make_onnx_model(path: Path, op: str = "vis", size: Optional[tuple[int, int]] = None, channels: int = 1) -> Path:
    """A fusion model in the project's ONNX contract (inputs ir (N,1,H,W), vis (N,C,H,W); output fused (N,C,H,W)),
    built with onnx.helper: op "vis" returns the VIS input, "ir" the IR, "max" the pixel-wise maximum, "mean" the
    mean (IR broadcast over the VIS channels)."""
    import onnx
    from onnx import TensorProto, helper
    shape = ["N", 1, "H", "W"] if size is None else [1, 1, size[0], size[1]]
    vis_shape = [shape[0], channels, shape[2], shape[3]]
    inputs = [helper.make_tensor_value_info("ir", TensorProto.FLOAT, shape),
              helper.make_tensor_value_info("vis", TensorProto.FLOAT, vis_shape)]
    output = helper.make_tensor_value_info("fused", TensorProto.FLOAT, vis_shape if op != "ir" else shape)
    half = helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])
    nodes = {
        "vis": [helper.make_node("Identity", ["vis"], ["fused"])],
        "ir": [helper.make_node("Identity", ["ir"], ["fused"])],
        "max": [helper.make_node("Max", ["ir", "vis"], ["fused"])],
        "mean": [helper.make_node("Add", ["ir", "vis"], ["sum"]), helper.make_node("Mul", ["sum", "half"], ["fused"])],
    }[op]
    graph = helper.make_graph(nodes, f"fusion_{op}", inputs, [output], initializer=[half] if op == "mean" else [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


# ---------------------------------------------------------------------------------------------------- students
def random_student(variant: str = "tiny-test", seed: int = 0, **overrides):
    """A student whose output depends on its weights: create_student starts as the plain average of the sources
    (zero head weights), which would make every parity check trivially pass."""
    import torch

    from distill.models import create_student
    torch.manual_seed(seed)
    model = create_student(variant, **overrides)
    with torch.no_grad():
        for p in model.head[-1].parameters():
            p.add_(torch.randn_like(p) * 0.1)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


class NumpyBackend(Backend):
    """A backend without any model file: fused = the IR frame (so outputs reveal which IR frame was paired)."""

    name = "numpy-test"

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.calls = 0

    def infer(self, ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        return ir.copy()


# --------------------------------------------------------------------------------------------------------- sources
class SyntheticSource(Source):
    """Gray frames whose pixel value is the frame index (mod 256), at `fps`.

    live=True: paced in real time with the capture clock as media time (a camera); live=False: media time is
    index / fps and frames come as fast as they are read (a file). `fail_after` frames into the run, a live source
    raises SourceLost and refuses to reopen (an unplugged camera) for `outage_s` seconds, or with `plugged` until
    that event is set.
    """

    kind = "synthetic"

    def __init__(self, fps: float, frames: int = 0, live: bool = True, size=(48, 64), fail_after: int = 0,
                 outage_s: float = 0.0, role: str = "ir", start: Optional[float] = None,
                 plugged: Optional[threading.Event] = None):
        self.fps, self.limit, self.live, self.size = fps, frames, live, size
        self.uri = f"synthetic://{role}@{fps:g}"
        self.fail_after, self.outage_s, self.plugged = fail_after, outage_s, plugged
        self.index = 0
        self.start = start
        self.failed_at: Optional[float] = None
        self.reopen_attempts = 0
        self.lock = threading.Lock()

    def open(self) -> None:
        if self.failed_at is not None:
            self.reopen_attempts += 1
            unplugged = (not self.plugged.is_set() if self.plugged is not None
                         else time.monotonic() - self.failed_at < self.outage_s)
            if unplugged:
                raise SourceLost(f"{self.uri} is unplugged")
            self.failed_at = None
        if self.start is None:
            self.start = time.monotonic()

    def read(self) -> Optional[Frame]:
        if self.start is None:
            self.open()
        if self.limit and self.index >= self.limit:
            return None
        if self.fail_after and self.index == self.fail_after and self.failed_at is None and \
                (self.outage_s or self.plugged is not None):
            self.failed_at = time.monotonic()
            self.fail_after = 0
            raise SourceLost(f"{self.uri} stopped delivering frames")
        if self.live:
            due = self.start + self.index / self.fps
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            t = time.monotonic()
        else:
            t = self.index / self.fps
        img = np.full(self.size, self.index % 256, dtype=np.uint8)
        frame = Frame(img, t, time.monotonic(), self.index, f"{self.index:06d}")
        self.index += 1
        return frame

    def reopen(self) -> None:
        self.open()


class PanningSource(SyntheticSource):
    """A real image seen by a camera panning at 90 px a second: frame t is the 128x96 window whose corner is at
    (40 + 90 t, 30) (bilinear, edges reflected); timing as SyntheticSource's."""

    def __init__(self, image: np.ndarray, **kwargs):
        super().__init__(**kwargs)
        self.image = image

    def read(self):
        frame = super().read()
        if frame is not None:
            matrix = np.array([[1.0, 0.0, -(40 + 90 * frame.t_media)], [0.0, 1.0, -30.0]])
            frame.image = cv2.warpAffine(self.image, matrix, (128, 96), flags=cv2.INTER_LINEAR,
                                         borderMode=cv2.BORDER_REFLECT)
        return frame


# ------------------------------------------------------------------------------------------------------------ sinks
class RecordingSink(Sink):
    """Keeps what it is given: (first pixel of the frame, OutputInfo) per frame.

    `stop_when(condition, stop)`: call `stop` (a pipeline's) after the write that makes `condition(frames)` true, so a
    run over live sources lasts until it has shown what the test needs, not for a guessed number of seconds."""

    kind = "recording"

    def __init__(self):
        self.frames: list[tuple[np.ndarray, OutputInfo]] = []
        self.closed = False
        self.condition: Optional[Callable[[list], bool]] = None
        self.stop: Optional[Callable[[], None]] = None

    def stop_when(self, condition: Callable[[list], bool], stop: Callable[[], None]) -> None:
        self.condition, self.stop = condition, stop

    def write(self, rgb: np.ndarray, info: OutputInfo) -> None:
        self.frames.append((rgb[0, 0].copy(), info))
        if self.condition is not None and self.condition(self.frames):
            self.stop()

    def modes(self) -> list[str]:
        """What each frame showed so far ("fused", "vis only", ...)."""
        return [info.mode for _, info in list(self.frames)]

    def close(self) -> None:
        self.closed = True


class FullFrameSink(RecordingSink):
    """A RecordingSink that keeps each whole frame, not only its first pixel."""

    def write(self, rgb: np.ndarray, info: OutputInfo) -> None:
        self.frames.append((rgb.copy(), info))


# ------------------------------------------------------------------------------------------------------------ clips
def write_clip(path: Path, frames: int, fps: float, size=(96, 128), colour: bool = True, seed: int = 0) -> Path:
    """A small mp4 whose frames are smooth random blobs (so codecs have something real to compress)."""
    rng = np.random.default_rng(seed)
    height, width = size
    writer = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    assert writer.isOpened()
    base = cv2.GaussianBlur(rng.uniform(0, 255, (height, width, 3)).astype(np.float32), (0, 0), 6)
    for i in range(frames):
        img = np.roll(base, i, axis=1)
        img = np.clip((img - img.min()) / (np.ptp(img) + 1e-6) * 255, 0, 255).astype(np.uint8)
        if not colour:
            img = np.repeat(img.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
        writer.write(img)
    writer.release()
    return path


def count_frames(path: Path) -> tuple[int, tuple[int, int]]:
    """Frames decoded from a video file by reading it to the end (not the container's claim), and (H, W)."""
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), f"{path} does not open"
    count, shape = 0, (0, 0)
    while True:
        ok, img = capture.read()
        if not ok:
            break
        count += 1
        shape = img.shape[:2]
    capture.release()
    return count, shape

