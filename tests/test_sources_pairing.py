"""Sources, frame pairing and fault handling of the runtime pipeline, with synthetic cameras at different rates."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from runtime.errors import FusionError
from runtime.capture import CaptureWorker, FrameBuffer
from runtime.pairing import match_nearest
from runtime.pipeline import FusionPipeline
from runtime.sources import Frame, open_source, parse_camera_index
from runtime.stats import StatsRecorder
from helpers import NumpyBackend, RecordingSink, SyntheticSource, wait_until


def _frame(t: float, index: int = 0) -> Frame:
    return Frame(np.zeros((2, 2), np.uint8), t, time.monotonic(), index)


def test_frame_buffer_match_picks_nearest_and_keeps_it():
    stop = threading.Event()
    buffer = FrameBuffer(16, lossless=True)
    for i, t in enumerate([0.0, 0.111, 0.222, 0.333]):
        buffer.put(_frame(t, i), stop)
    buffer.end()
    assert match_nearest(buffer, 0.10, None, stop, lambda: False).index == 1   # 0.111 is nearer than 0.0
    assert match_nearest(buffer, 0.16, None, stop, lambda: False).index == 1   # still there for the next query
    assert match_nearest(buffer, 0.17, None, stop, lambda: False).index == 2
    assert [f.index for f in buffer.frames] == [2, 3]                 # older frames were discarded


def test_live_buffer_drops_stale_frames():
    stop = threading.Event()
    buffer = FrameBuffer(1, lossless=False)
    for i in range(5):
        buffer.put(_frame(i * 0.03, i), stop)
    assert buffer.dropped == 4
    assert buffer.pop(0.01).index == 4     # only the newest survives


def _nearest_ir(vis_index: int, vis_fps: float, ir_fps: float, ir_frames: int) -> tuple[int, float]:
    t = vis_index / vis_fps
    errors = [abs(j / ir_fps - t) for j in range(ir_frames)]
    j = int(np.argmin(errors))
    return j, errors[j]


@pytest.mark.parametrize("sync_ms", [60.0, 20.0])
def test_file_rate_pairing_is_nearest_within_sync(sync_ms):
    """9 fps IR against 30 fps VIS, read as files, nearest-time pairing (--ir-motion off): every output is the
    nearest IR frame, within sync_ms."""
    ir = SyntheticSource(fps=9, frames=27, live=False, role="ir")
    vis = SyntheticSource(fps=30, frames=90, live=False, role="vis")
    sink = RecordingSink()
    report = FusionPipeline(ir_source=ir, vis_source=vis, backend=NumpyBackend(), sinks=[sink], sync_ms=sync_ms,
                            imgsz="48x64", ir_motion="off", verbose=False).run()
    expected = {i: _nearest_ir(i, 30, 9, 27) for i in range(90)}
    expected = {i: j for i, (j, err) in expected.items() if err * 1000 <= sync_ms + 1e-6}
    got = {int(info.name): int(pixel[0]) for pixel, info in sink.frames}
    assert got == expected                                          # which IR frame each VIS frame got
    assert report["frames"] == len(expected)
    assert report["counters"].get("unpaired", 0) == 90 - len(expected)
    assert report["pair_error_ms"]["max"] <= sync_ms + 1e-6
    if sync_ms == 60.0:
        # all but the last VIS frame (78 ms after the last IR one); the worst pair is half an IR period apart
        assert len(expected) == 89 and report["pair_error_ms"]["max"] == pytest.approx(1000 / 18, abs=0.1)
    else:
        assert 0 < len(expected) < 89   # a 20 ms window misses the VIS frames between two IR frames


def test_live_rate_pairing_error_bounded_by_sync_ms():
    """Live cameras (9 Hz IR, 30 Hz VIS, paced in real time), nearest-time pairing: pairs are never farther apart
    than --sync-ms. The run lasts until 20 frames are fused (30 s at most)."""
    sync_ms = 40.0
    ir = SyntheticSource(fps=9, live=True, role="ir")
    vis = SyntheticSource(fps=30, live=True, role="vis")
    sink = RecordingSink()
    pipeline = FusionPipeline(ir_source=ir, vis_source=vis, backend=NumpyBackend(), sinks=[sink], sync_ms=sync_ms,
                              imgsz="48x64", duration_s=30, ir_motion="off", verbose=False)
    sink.stop_when(lambda frames: sum(info.mode == "fused" for _, info in frames) >= 20, pipeline.stop)
    report = pipeline.run()
    errors = [abs(info.pair_error_ms) for _, info in sink.frames if info.mode == "fused"]
    assert len(errors) >= 20, "fewer than 20 frames were fused in 30 s"
    assert max(errors) <= sync_ms
    # The 9 Hz camera is at most half a period (55 ms) from any instant, so a 40 ms window pairs most frames but
    # not all of them: both outcomes must be visible in the counters.
    assert report["counters"].get("unpaired", 0) > 0
    assert report["primary"] == "vis"


def test_faster_ir_camera_drives_output():
    ir = SyntheticSource(fps=60, frames=60, live=False, role="ir")
    vis = SyntheticSource(fps=30, frames=30, live=False, role="vis")
    sink = RecordingSink()
    report = FusionPipeline(ir_source=ir, vis_source=vis, backend=NumpyBackend(), sinks=[sink], sync_ms=20,
                            imgsz="48x64", verbose=False).run()
    assert report["primary"] == "ir"
    assert report["frames"] == 60       # the last IR frame (t=0.983 s) is 17 ms after the last VIS one: paired
    assert [int(p[0]) for p, _ in sink.frames] == list(range(60))  # every IR frame out, in order


def test_lost_camera_reconnects_while_the_other_keeps_running():
    """The IR camera is unplugged, and plugged back in once 8 VIS frames went out alone: VIS frames keep flowing
    (marked), IR is reopened with backoff, fusion resumes, and the stats tell the story. The run lasts until three
    frames in a row are fused again (20 s at most)."""
    plugged = threading.Event()
    ir = SyntheticSource(fps=15, live=True, role="ir", fail_after=8, plugged=plugged)
    vis = SyntheticSource(fps=30, live=True, role="vis")
    sink = RecordingSink()
    pipeline = FusionPipeline(ir_source=ir, vis_source=vis, backend=NumpyBackend(), sinks=[sink], sync_ms=40,
                              imgsz="48x64", duration_s=20, verbose=False)

    def replug_then_stop(frames):
        modes = [info.mode for _, info in frames]
        if modes.count("vis only") >= 8:
            plugged.set()
        return plugged.is_set() and modes[-3:] == ["fused"] * 3
    sink.stop_when(replug_then_stop, pipeline.stop)
    report = pipeline.run()
    modes = sink.modes()
    assert plugged.is_set(), f"fewer than 8 VIS frames went out while IR was unplugged: {modes}"
    first_loss = modes.index("vis only")
    assert "fused" in modes[:first_loss]                                     # fused before the loss
    assert "fused" in modes[first_loss + modes.count("vis only"):], modes   # fused again after reconnecting
    assert report["counters"]["lost_ir"] == 1
    assert report["counters"]["reconnects_ir"] == 1
    assert ir.reopen_attempts >= 2                                          # refused at least once, then backoff
    events = [e["event"] for e in report["events"]]
    assert events.index("ir_lost") < events.index("ir_ok")
    assert report["sources"]["ir"]["state"] == "ok"
    assert report["counters"]["passthrough"] == modes.count("vis only")


def test_camera_uris_parse():
    assert parse_camera_index("0") == 0
    assert parse_camera_index("cam1") == 1
    assert parse_camera_index("/dev/video2") == 2
    assert parse_camera_index("v4l2:///dev/video3") == 3
    assert parse_camera_index("clip.mp4") is None


@pytest.mark.parametrize("uri, message", [
    ("nosuch_clip.mp4", "not found"),
    ("foo://bar", "unknown source scheme"),
    ("v4l2://video0", "not a V4L2 device"),
    ("/dev/video97", "does not exist"),
    ("csi://x", "csi://N"),
])
def test_bad_source_uris_are_one_line_errors(uri, message):
    with pytest.raises(FusionError, match=message):
        open_source(uri, "ir")


def test_csi_without_gstreamer_says_so():
    from runtime.sources import gstreamer_available
    if gstreamer_available():
        pytest.skip("this OpenCV has GStreamer; the error path cannot be exercised")
    with pytest.raises(FusionError, match="GStreamer"):
        open_source("csi://0", "vis")


def test_image_folder_source_reads_real_pairs_in_order(roadscene, train_names):
    source = open_source(str(roadscene / "ir"), "ir", fps=10)
    first = source.read()
    assert first.name == sorted(p.stem for p in (roadscene / "ir").iterdir())[0]
    assert first.image.ndim == 2 and first.image.dtype == np.uint8
    assert source.read().t_media == pytest.approx(0.1)


def test_network_camera_killed_and_restarted_is_reconnected():
    """A real network source: an MJPEG-over-HTTP camera (served by runtime.mjpeg on 127.0.0.1) is shut down in the
    middle of a run and brought back on the same port once the output goes on with VIS alone. The pipeline keeps
    running on VIS, reports the IR camera lost, reconnects through OpenCV/FFmpeg and fuses again."""
    from runtime.mjpeg import MjpegServer

    def serve(port: int):
        server = MjpegServer("127.0.0.1", port, max_fps=0)
        running = threading.Event()
        running.set()

        def feed():
            i = 0
            while running.is_set():
                server.publish(np.full((48, 64, 3), i % 256, np.uint8))
                i += 1
                time.sleep(1 / 15)
        threading.Thread(target=feed, daemon=True).start()
        return server, running

    camera, feeding = serve(0)
    port = camera.port
    ir = open_source(f"http://127.0.0.1:{port}/stream.mjpg", "ir")
    assert ir.live and ir.kind == "stream"
    vis = SyntheticSource(fps=30, live=True, role="vis")
    sink = RecordingSink()
    pipeline = FusionPipeline(ir_source=ir, vis_source=vis, backend=NumpyBackend(), sinks=[sink], sync_ms=80,
                              imgsz="48x64", reconnect_max_s=0.3, verbose=False)
    runner = threading.Thread(target=pipeline.run, daemon=True)
    runner.start()
    try:
        wait_until(lambda: "fused" in sink.modes(), 15, "nothing was fused before the camera went away")
        feeding.clear()
        camera.close()                                   # the camera goes away
        wait_until(lambda: {info.health.get("ir") for _, info in list(sink.frames)} & {"lost", "reconnecting"}, 10,
                   "the overlay never showed the IR camera lost")    # what the overlay showed meanwhile
        wait_until(lambda: "vis only" in sink.modes(), 10, "VIS did not keep the output going while IR was away")
        camera, feeding = serve(port)                    # and comes back

        def fused_again():
            modes = sink.modes()
            return "fused" in modes[len(modes) - 1 - modes[::-1].index("vis only"):]
        wait_until(fused_again, 15, "fusion did not resume after the camera came back")
    finally:
        pipeline.stop()
        runner.join(10)
        feeding.clear()
        camera.close()
    assert not runner.is_alive()
    report = pipeline.report()
    modes = sink.modes()
    assert "fused" in modes[:modes.index("vis only")]
    assert report["counters"]["lost_ir"] >= 1 and report["counters"]["reconnects_ir"] >= 1


# ------------------------------------------------------------------------------------------------------- looping
SAMPLES = Path(__file__).resolve().parents[1] / "runtime" / "assets" / "samples"


def test_looped_file_continues_its_timeline():
    """Read losslessly, a looped file's media time runs on by one frame period across each restart: 2.5 passes of
    the 9 fps sample clip give timestamps k / 9 for k = 0, 1, 2, ... (no jump back, no pass-long gap ahead)."""
    source = open_source(str(SAMPLES / "ir.mp4"), "ir")
    assert source.fps == 9 and source.frame_count == 90
    stop = threading.Event()
    buffer = FrameBuffer(1000, lossless=True)
    worker = CaptureWorker("ir", source, buffer, StatsRecorder(), stop, loop=True)
    worker.start()
    wait_until(lambda: len(buffer.frames) >= 225, 30, "2.5 passes of the looped clip were not read")
    stop.set()
    worker.join(5)
    # the worker may read on past 225 frames before it sees the stop (a busy machine): check every frame it read
    times = np.array([f.t_media for f in list(buffer.frames)])
    assert len(times) >= 225
    assert np.allclose(times, np.arange(len(times)) / 9.0, atol=1e-6)
    started = -(-len(times) // 90)                     # passes that delivered a frame
    assert worker.passes in (started, started + 1)     # + one begun just before the stop


class SimulatedClock:
    """Wall-clock time that passes only while the capture thread waits (`stop.wait`), and ends the run at `end_s`:
    a paced run's schedule without this machine's load in it."""

    def __init__(self, start_s: float, end_s: float):
        self.now, self.end_s = start_s, end_s
        self.stop = threading.Event()
        self.stop.wait = self.wait            # the worker's timed waits advance this clock instead of sleeping

    def __call__(self) -> float:
        return self.now

    def wait(self, timeout: float) -> bool:
        self.now += timeout
        if self.now > self.end_s:
            self.stop.set()
        return self.stop.is_set()


def test_paced_loop_keeps_the_camera_schedule_across_restarts():
    """A file played like a camera (`realtime`) and looped: every frame is due one period after the one before, also
    across each restart, so three passes of the 9 fps sample clip (90 frames; paced at 18 fps here) take exactly three
    clip lengths and keep every frame. Restarts used to stall for a whole pass (passes 10 s apart, then 20 s, ...).
    The clock is simulated, so what is checked is the schedule the worker keeps, not how busy this machine is."""
    clock = SimulatedClock(start_s=100.0, end_s=100.0 + 15.0 - 1 / 36)     # stops before the fourth pass's frame
    source = open_source(str(SAMPLES / "ir.mp4"), "ir")
    buffer = FrameBuffer(1000, lossless=False)
    stats = StatsRecorder()
    worker = CaptureWorker("ir", source, buffer, stats, clock.stop, realtime=True, loop=True, fps_override=18,
                           clock=clock)
    worker.start()
    worker.join(30)
    if worker.is_alive():                              # pacing never waited, so the simulated time never ran out
        clock.stop.set()
        pytest.fail("the paced capture did not stop at the end of the simulated time")
    frames = list(buffer.frames)
    assert [f.index for f in frames] == list(range(270))          # three whole passes, nothing dropped
    due = np.array([f.t_media for f in frames]) - 100.0
    assert np.allclose(due, np.arange(270) / 18.0, atol=1e-9), due[[0, 89, 90, 179, 180]]
    assert all(f.t_capture == f.t_media for f in frames)           # a camera's clock: captured when due
    assert worker.passes == 4 and stats.counters["loops_ir"] == 3


def test_looped_files_pair_every_pass_alike():
    """The sample clips (300 VIS frames at 30 fps, 90 IR at 9 fps) looped and read losslessly: three passes give
    every VIS frame once, in order, and each pass pairs exactly as the one before (same pair error, same IR content
    except where two IR frames are equally near); at a pass's end the next pass's first IR frame is the nearest, as
    one continuous timeline has it."""
    pipeline = None

    class Stopper(RecordingSink):
        def write(self, rgb, info):
            super().write(rgb, info)
            if int(info.name) >= 900:                  # the fourth pass began: three are complete
                pipeline.stop()

    sink = Stopper()
    pipeline = FusionPipeline(ir=str(SAMPLES / "ir.mp4"), vis=str(SAMPLES / "vis.mp4"), backend=NumpyBackend(),
                              sinks=[sink], imgsz="60x80", loop=True, ir_motion="off", verbose=False)
    report = pipeline.run()
    assert [int(info.name) for _, info in sink.frames[:900]] == list(range(900))
    tie_ms = 1000 / 18                                 # VIS 5, 15, 25, ... lie halfway between two IR frames
    passes = [[(int(info.name) - 300 * k, round(abs(info.pair_error_ms), 3),
                None if abs(abs(info.pair_error_ms) - tie_ms) < 1e-3 else int(pixel[0]))
               for pixel, info in sink.frames[300 * k:300 * (k + 1)]] for k in range(3)]
    assert passes[1] == passes[0] and passes[2] == passes[0]
    assert sink.frames[299][1].pair_error_ms == pytest.approx(1000 / 30, abs=1e-3)   # VIS 299 (9.967 s), IR 90 (10 s)
    assert report["counters"]["loops_vis"] >= 3 and report["counters"]["loops_ir"] >= 3
