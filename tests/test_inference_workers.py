"""Frame-parallel inference (--inference-workers): frames inferred on several threads come out complete and in order,
files lose none, live sources never show an older frame after a newer one. Media timestamps and frame indices only."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from runtime.errors import FusionError
from runtime.pipeline import FusionPipeline
from helpers import NumpyBackend, RecordingSink, SyntheticSource


class OutOfOrderBackend(NumpyBackend):
    """Fused = the IR frame. With `hold`, each even-numbered call returns only after the call after it has finished
    (an event, bounded by `timeout_s`), so a later frame always finishes first; records how many calls ran at once
    and whether a hold ever ran out of time (the next call never came)."""

    def __init__(self, hold: bool = True, timeout_s: float = 5.0):
        super().__init__()
        self.hold, self.timeout_s = hold, timeout_s
        self.lock = threading.Lock()
        self.done: dict = {}
        self.running = 0
        self.most_at_once = 0
        self.timeouts = 0

    def _done_event(self, call: int) -> threading.Event:
        with self.lock:
            return self.done.setdefault(call, threading.Event())

    def infer(self, ir, vis):
        with self.lock:
            call = self.calls
            self.calls += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        if self.hold and call % 2 == 0 and not self._done_event(call + 1).wait(self.timeout_s):
            with self.lock:
                self.timeouts += 1
        with self.lock:
            self.running -= 1
        self._done_event(call).set()
        return ir.copy()


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_files_every_frame_out_in_order(workers):
    """Files are read losslessly: whatever the workers' finishing order, every VIS frame comes out once, in order,
    with the IR frame it was paired with."""
    ir = SyntheticSource(fps=30, frames=60, live=False, role="ir")
    vis = SyntheticSource(fps=30, frames=60, live=False, role="vis")
    backend = OutOfOrderBackend(hold=workers > 1)    # one worker cannot finish a later frame first
    sink = RecordingSink()
    report = FusionPipeline(ir_source=ir, vis_source=vis, backend=backend, sinks=[sink], imgsz="48x64",
                            inference_workers=workers, verbose=False).run()
    assert [int(info.name) for _, info in sink.frames] == list(range(60))
    assert [int(pixel[0]) for pixel, _ in sink.frames] == list(range(60))       # the IR frame of the same time
    assert report["frames"] == 60
    assert backend.most_at_once <= workers
    if workers > 1:
        assert backend.most_at_once >= 2 and backend.timeouts == 0   # every even frame finished after the next one


def test_live_output_never_goes_back_in_time():
    """Live cameras with two workers and a model that sometimes finishes a later frame first: the output's VIS frame
    indices only increase (a late frame waits for the one before it, nothing older is shown after something newer).
    The run lasts until 10 frames are out (30 s at most)."""
    ir = SyntheticSource(fps=30, live=True, role="ir")
    vis = SyntheticSource(fps=30, live=True, role="vis")
    sink = RecordingSink()
    backend = OutOfOrderBackend(timeout_s=0.5)      # the run's last even frame may wait for a call that never comes
    pipeline = FusionPipeline(ir_source=ir, vis_source=vis, backend=backend, sinks=[sink], imgsz="48x64",
                              inference_workers=2, duration_s=30, verbose=False)
    sink.stop_when(lambda frames: len(frames) >= 10, pipeline.stop)
    pipeline.run()
    indices = [int(info.name) for _, info in sink.frames]
    assert len(indices) >= 10, "fewer than 10 frames came out in 30 s"
    assert backend.most_at_once == 2
    assert all(b > a for a, b in zip(indices, indices[1:]))


def test_default_workers_follow_the_backend():
    pipeline = FusionPipeline(backend=NumpyBackend(), verbose=False)
    assert pipeline.inference_workers() == 1                 # a backend that says nothing: one
    backend = NumpyBackend()
    backend.parallel_frames = 2
    assert FusionPipeline(backend=backend, verbose=False).inference_workers() == 2
    assert FusionPipeline(backend=backend, inference_workers=1, verbose=False).inference_workers() == 1
    with pytest.raises(FusionError, match="inference-workers"):
        FusionPipeline(backend=backend, inference_workers=-1, verbose=False)


def test_onnxruntime_on_two_cores_suggests_two_single_threaded_workers(tmp_path, monkeypatch):
    from runtime.backends import OnnxRuntimeBackend
    from helpers import make_onnx_model
    model = make_onnx_model(tmp_path / "mean.onnx", op="mean")
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert OnnxRuntimeBackend(model, threads=1, device="cpu").parallel_frames == 2
    assert OnnxRuntimeBackend(model, threads=2, device="cpu").parallel_frames == 1     # one frame uses both cores
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert OnnxRuntimeBackend(model, threads=1, device="cpu").parallel_frames == 1
    out = OnnxRuntimeBackend(model, threads=1, device="cpu").infer(np.zeros((1, 1, 8, 8), np.float32),
                                                                    np.ones((1, 1, 8, 8), np.float32))
    assert np.allclose(out, 0.5)
