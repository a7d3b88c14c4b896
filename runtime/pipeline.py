"""The fusion pipeline: capture -> pairing -> preprocess -> inference -> output, each stage on its own thread.

    from runtime import FusionPipeline
    pipe = FusionPipeline(ir="cam0", vis="cam1", outputs=["fused.mp4", "mjpeg://:8090"], sync_ms=40)
    report = pipe.run()              # blocks until the sources end, stop() is called, or SIGINT in the CLI
    rgb = pipe.fuse(ir, vis)         # or fuse one pair synchronously (arrays as read by runtime.imageio)

`fusion run` builds exactly this object from its arguments.

Threads and queues (all bounded):

    capture IR  ──> FrameBuffer ─┐
                                 ├─ pairing ─> queue ─> preprocess ─> queue ─> inference ─> queue ─> output
    capture VIS ──> FrameBuffer ─┘  (nearest timestamp within sync_ms)                  (colour, sinks, stats)

Live sources (cameras, streams, `realtime` files) keep only their newest frames: when the pipeline falls behind,
stale frames are dropped, never queued, so latency stays bounded. Files and folders are read losslessly (a full
buffer makes the reader wait), so a video in gives every frame out and the output is deterministic.

The faster camera drives the output (auto: the higher nominal frame rate, VIS on a tie): each of its frames is
paired with the other camera's frame nearest in time, if within sync_ms; otherwise it is dropped and counted.
A camera that disconnects is reopened with exponential backoff while the other keeps streaming (passed through
unfused, with the overlay saying which camera is lost).
"""
from __future__ import annotations

import dataclasses
import os
import queue
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Deque, List, Optional

import cv2
import numpy as np

from runtime.config import parse_hw
from runtime.errors import FusionError
from runtime.imageio import discover_pairs, ir_to_float, read_raw, to_uint8, vis_to_float, write_image, write_json
from runtime.registration import Registration
from runtime.sinks import OutputInfo, Sink, draw_overlay, ensure_writable_folder, open_sink, output_error
from runtime.sources import Frame, Source, SourceLost, open_source
from runtime.stats import StatsRecorder, format_report


# ----------------------------------------------------------------------------------------------------------- config
@dataclass
class RunConfig:
    """Everything `fusion run` can be told (YAML: configs/runtime/*.yaml; CLI flags override)."""

    ir: str = ""                        # IR source URI
    vis: str = ""                       # VIS source URI
    outputs: List[str] = field(default_factory=list)   # sink URIs
    model: str = "default"              # .onnx / .engine / model folder / "default"
    backend: str = "auto"               # auto | tensorrt | onnxruntime | torch
    device: str = "auto"                # auto | cpu (ONNX Runtime providers / torch device)
    threads: int = 0                    # inference threads (0: the runtime's default)
    imgsz: str = "auto"                 # model input HxW, "native" (the VIS frame size), or auto
    output_size: str = "auto"           # model | native | auto (native in folder mode, model otherwise)
    sync_ms: float = 60.0               # largest IR/VIS time difference accepted as a pair
    primary: str = "auto"               # which camera drives the output: auto | ir | vis
    homography: Optional[str] = None    # IR->VIS homography file from `fusion calibrate`
    crop: bool = True                   # crop to the IR/VIS overlap after warping
    clahe: bool = False                 # CLAHE after the 16-bit AGC of radiometric IR
    realtime: bool = False              # play files at their frame rate and drop frames like a camera
    loop: bool = False                  # restart finite sources at their end (demos, soak tests)
    fps: float = 30.0                   # nominal frame rate of image-folder sources
    ir_fps: float = 0.0                 # override the IR source's nominal rate (0: as reported)
    vis_fps: float = 0.0
    output_fps: float = 0.0             # frame rate written into video files (0: the driving camera's)
    max_frames: int = 0                 # stop after this many fused frames (0: no limit)
    duration_s: float = 0.0             # stop after this many seconds (0: no limit)
    record_pairs: Optional[str] = None  # save the synchronised raw pairs here (ir/ and vi/, same stems)
    stats: Optional[str] = None         # write the statistics JSON here at exit
    headless: bool = False              # no window
    bind: str = "127.0.0.1"             # address MJPEG outputs listen on
    auth_token: Optional[str] = None    # MJPEG stream token (else $FUSION_STREAM_TOKEN; generated beyond loopback)
    max_clients: int = 8                # concurrent MJPEG viewers (503 beyond)
    overlay: str = "auto"               # auto (display and MJPEG) | on | off
    image_ext: str = ".png"             # image-folder outputs
    queue_size: int = 0                 # depth of each inter-stage queue (0: 1 for live sources, 2 for files)
    reconnect_max_s: float = 5.0        # longest wait between reconnection attempts
    on_loss: str = "passthrough"        # while a camera is lost: passthrough (show the other) | pause
    resume: bool = False                # folder mode: skip pairs whose fused image already exists
    names: Optional[str] = None         # folder mode: a split file (one name per line) choosing and ordering pairs
    verbose: bool = True


def redacted_config(config: RunConfig) -> dict:
    """The config as plain data for files and the stats page: the stream token is never written anywhere."""
    from runtime.config import config_to_dict
    data = config_to_dict(config)
    if data.get("auth_token"):
        data["auth_token"] = "<redacted>"
    return data


def parse_size(text: str) -> Optional[tuple[int, int]]:
    """'480x640' (H x W) -> (480, 640); 'native'/'auto'/'model' -> None."""
    return parse_hw(text, minimum=16, keywords=("", "none", "auto", "model", "native"))


# ------------------------------------------------------------------------------------------------------ frame buffer
class FrameBuffer:
    """A bounded buffer between a capture thread and the pairing step.

    lossless=False (live): a full buffer drops its oldest frame (counted as stale); the newest is always kept.
    lossless=True (files): a full buffer makes the producer wait.
    """

    def __init__(self, capacity: int, lossless: bool):
        self.capacity = max(1, capacity)
        self.lossless = lossless
        self.frames: Deque[Frame] = deque()
        self.cond = threading.Condition()
        self.ended = False          # the source finished (no more frames will come)
        self.dropped = 0
        self.period: Optional[float] = None     # smoothed interval between frames (media seconds)
        self._last_t: Optional[float] = None

    def put(self, frame: Frame, stop: threading.Event) -> bool:
        with self.cond:
            if self.lossless:
                while len(self.frames) >= self.capacity and not stop.is_set():
                    self.cond.wait(0.1)
                if stop.is_set():
                    return False
            elif len(self.frames) >= self.capacity:
                self.frames.popleft()
                self.dropped += 1
            if self._last_t is not None and 0 < frame.t_media - self._last_t < 2.0:
                interval = frame.t_media - self._last_t
                self.period = interval if self.period is None else 0.9 * self.period + 0.1 * interval
            self._last_t = frame.t_media
            self.frames.append(frame)
            self.cond.notify_all()
            return True

    def end(self) -> None:
        with self.cond:
            self.ended = True
            self.cond.notify_all()

    def restart(self) -> None:
        with self.cond:
            self.ended = False

    def pop(self, timeout: float) -> Optional[Frame]:
        """The oldest frame (live buffers of capacity 1 hold only the newest), or None after `timeout`."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self.frames:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.ended:
                    return None
                self.cond.wait(remaining)
            frame = self.frames.popleft()
            self.cond.notify_all()
            return frame

    def pop_newest(self) -> Optional[Frame]:
        with self.cond:
            if not self.frames:
                return None
            frame = self.frames[-1]
            self.frames.clear()
            self.cond.notify_all()
            return frame

    def exhausted(self) -> bool:
        with self.cond:
            return self.ended and not self.frames

    def match(self, t: float, wait_until: Optional[float], stop: threading.Event,
              is_down: Callable[[], bool]) -> Optional[Frame]:
        """The frame nearest to media time `t`, waiting (until `wait_until`, or without limit when None) for a frame
        at or after `t` so the nearest one can lie in the future. Frames older than the chosen one are discarded
        (they cannot be nearer to any later `t`); the chosen one stays for the next call."""
        with self.cond:
            while not stop.is_set():
                # Keep at most one frame before t: older ones are farther from t and from every later t.
                while len(self.frames) >= 2 and self.frames[1].t_media <= t:
                    self.frames.popleft()
                    self.cond.notify_all()
                if (self.frames and self.frames[-1].t_media >= t) or self.ended or is_down():
                    break
                if wait_until is not None:
                    if self.frames:
                        # Live: a later frame helps only if it comes before t + (t - newest); with the camera's
                        # period known, don't wait when the next one is due after that (saves up to sync_ms of
                        # latency on every frame of the faster camera).
                        newest = self.frames[-1].t_media
                        horizon = t + (t - newest)
                        if self.period is not None and newest + self.period >= horizon:
                            break
                        wait_until = min(wait_until, horizon)
                    remaining = wait_until - time.monotonic()
                    if remaining <= 0:
                        break
                    self.cond.wait(min(remaining, 0.1))
                else:
                    self.cond.wait(0.1)
            if not self.frames:
                return None
            best = min(self.frames, key=lambda f: abs(f.t_media - t))
            while self.frames and self.frames[0] is not best:
                self.frames.popleft()
            self.cond.notify_all()
            return best


# --------------------------------------------------------------------------------------------------------- capture
class CaptureWorker(threading.Thread):
    """Reads one source into its FrameBuffer; reconnects a lost live source with exponential backoff.

    Files keep one continuous timeline across restarts (`loop`, or a reopen after a read failure): each pass starts
    one frame period after the last frame of the previous one, so pairing and real-time pacing never see time jump
    back or a pass-long gap ahead. With `realtime`, a file is paced like a camera (its frames are due at the media
    time on the wall clock); after an outage the clock is re-anchored instead of replaying the missed seconds at
    full speed, as a camera would not deliver the frames it missed either.
    """

    # Further behind the real-time schedule than this and a paced file re-anchors its clock.
    MAX_LAG_S = 1.0

    def __init__(self, role: str, source: Source, buffer: FrameBuffer, stats: StatsRecorder, stop: threading.Event,
                 realtime: bool = False, loop: bool = False, reconnect_max_s: float = 5.0, fps_override: float = 0.0):
        super().__init__(name=f"capture-{role}", daemon=True)
        self.role, self.source, self.buffer, self.stats, self.stop_event = role, source, buffer, stats, stop
        self.realtime = realtime and not source.live
        self.loop = loop
        self.reconnect_max_s = reconnect_max_s
        self.fps_override = fps_override
        self.state = "ok"
        self.error: Optional[BaseException] = None
        self.frames = 0
        self.passes = 1             # passes through a looped file (1 during the first)
        self._pass_frames = 0
        self._offset = 0.0          # added to the source's media time so restarts continue the timeline
        self._last_media: Optional[float] = None
        self._rebase = False        # the source was reopened: the next frame continues the timeline
        self._clock: Optional[float] = None   # realtime: wall-clock time of media time 0

    @property
    def down(self) -> bool:
        return self.state in ("lost", "reconnecting")

    @property
    def period(self) -> float:
        """The nominal interval between frames, seconds."""
        return 1.0 / (self.fps_override or self.source.fps or 30.0)

    def _set_state(self, state: str, **info) -> None:
        if state != self.state:
            self.state = state
            self.stats.event(f"{self.role}_{state}", **info)
        self.stats.source_state(self.role, state=state, **info)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the pipeline, which stops
            self.error = exc
            self.stop_event.set()
        finally:
            self.buffer.end()
            self.source.close()

    def _run(self) -> None:
        self.stats.source_state(self.role, state="ok", uri=self.source.uri, kind=self.source.kind,
                                fps=self.source.fps, reconnects=0)
        reconnects = 0
        while not self.stop_event.is_set():
            t0 = time.perf_counter()
            try:
                frame = self.source.read()
                if frame is None and self.loop and not self.source.live and self._pass_frames:
                    self._pass_frames = 0       # (a pass without a frame ends the source instead of spinning)
                    self.source.reopen()
                    self._rebase = True
                    self.passes += 1
                    self.stats.count(f"loops_{self.role}")
                    self.stats.source_state(self.role, passes=self.passes)
                    continue
            except SourceLost as exc:
                self._set_state("lost", reason=str(exc))
                self.stats.count(f"lost_{self.role}")
                if not self._reconnect():
                    return
                self._rebase = True
                self._clock = None        # re-anchor real-time pacing: the missed seconds are not replayed
                reconnects += 1
                self.stats.count(f"reconnects_{self.role}")
                self.stats.source_state(self.role, reconnects=reconnects)
                continue
            # A camera's read blocks until its next frame: that is waiting, not work.
            self.stats.add("capture_wait" if self.source.live else "capture", time.perf_counter() - t0)
            if frame is None:
                self._set_state("ended")
                return
            if not self.source.live:
                self._continue_timeline(frame)
            if self.realtime and not self._pace(frame):
                return
            self.frames += 1
            self._pass_frames += 1
            if self.state != "ok":
                self._set_state("ok")
            before = self.buffer.dropped
            self.buffer.put(frame, self.stop_event)
            if self.buffer.dropped != before:
                self.stats.count(f"stale_dropped_{self.role}", self.buffer.dropped - before)

    def _continue_timeline(self, frame: Frame) -> None:
        """A file's media time (its position in the current pass) onto the run's monotonic timeline."""
        t = frame.t_media
        if self.fps_override:
            t *= (self.source.fps or 30.0) / self.fps_override
        if self._rebase and self._last_media is not None:
            self._offset = self._last_media + self.period - t
        self._rebase = False
        frame.t_media = t + self._offset
        self._last_media = frame.t_media

    def _pace(self, frame: Frame) -> bool:
        """Realtime: wait until the frame is due, then give it a camera's clock. False when stopped meanwhile."""
        now = time.monotonic()
        if self._clock is None or now - (self._clock + frame.t_media) > self.MAX_LAG_S:
            self._clock = now - frame.t_media
        delay = self._clock + frame.t_media - now
        if delay > 0 and self.stop_event.wait(delay):
            return False
        frame.t_capture = frame.t_media = time.monotonic()
        return True

    def _reconnect(self) -> bool:
        delay = 0.25
        attempt = 0
        while not self.stop_event.is_set():
            attempt += 1
            self._set_state("reconnecting", attempt=attempt)
            try:
                self.source.reopen()
                return True
            except (SourceLost, FusionError, OSError) as exc:
                self.stats.source_state(self.role, last_error=str(exc))
            if self.stop_event.wait(delay):
                return False
            delay = min(delay * 2, self.reconnect_max_s)
        return False


# ---------------------------------------------------------------------------------------------------------- packets
@dataclass
class Packet:
    """One unit of work flowing through the stages."""

    index: int
    name: str
    ir: Optional[Frame]
    vis: Optional[Frame]
    t_capture: float                   # when the driving frame was captured (latency starts here)
    mode: str = "fused"                # fused | ir only | vis only
    pair_error_ms: Optional[float] = None
    model_ir: Any = None               # (1, 1, h, w) float32
    model_vis: Any = None              # (1, C, h, w) float32
    ycrcb: Any = None                  # VIS as YCrCb float32 at the output size, (H, W, 3) (its Y is replaced by
                                       # the fused one), or None for gray VIS
    out_size: Optional[tuple[int, int]] = None   # (H, W) of the output
    passthrough: Any = None            # RGB float image while a camera is lost
    fused: Any = None                  # model output


_END = object()


# --------------------------------------------------------------------------------------------------------- pipeline
class FusionPipeline:
    """IR + VIS sources in, fused colour frames out to any number of sinks. See the module docstring.

    Give a RunConfig, keyword overrides of its fields, or both. Ready-made objects can replace what the config
    would open: `ir_source`/`vis_source` (runtime.sources.Source), `backend` (runtime.backends.Backend), `sinks`.
    """

    def __init__(self, config: Optional[RunConfig] = None, *, ir_source: Optional[Source] = None,
                 vis_source: Optional[Source] = None, backend=None, sinks: Optional[List[Sink]] = None,
                 **overrides):
        if isinstance(backend, str):   # the backend's name (a config field), not a loaded Backend
            overrides["backend"], backend = backend, None
        config = dataclasses.replace(config or RunConfig(), **overrides) if overrides else (config or RunConfig())
        self.config = config
        if config.on_loss not in ("passthrough", "pause"):
            raise FusionError(f"on_loss must be 'passthrough' or 'pause', got '{config.on_loss}'")
        if config.primary not in ("auto", "ir", "vis"):
            raise FusionError(f"primary must be auto, ir or vis, got '{config.primary}'")
        if config.output_size not in ("auto", "model", "native"):
            raise FusionError(f"output size must be auto, model or native, got '{config.output_size}'")
        if config.sync_ms <= 0:
            raise FusionError(f"--sync-ms must be positive, got {config.sync_ms}")
        self.stats = StatsRecorder()
        self._stop = threading.Event()       # finish: stop capturing, drain what is in flight
        self._abort = threading.Event()      # fail: leave at once
        self._errors: List[BaseException] = []
        self._given_sources = (ir_source, vis_source)
        self._given_sinks = sinks
        self.backend = backend
        self._owns_backend = backend is None
        self.sinks: List[Sink] = []
        self.registration = Registration.from_file(config.homography, crop=config.crop)
        self.folder_mode = ir_source is None and vis_source is None and _is_dir(config.ir) and _is_dir(config.vis)
        if config.names and not self.folder_mode:
            raise FusionError("--names picks pairs of image folders; it needs --ir and --vis to be folders")
        if config.names and not Path(config.names).is_file():
            raise FusionError(f"--names {config.names} is not a file; give a list of pair names, one per line "
                              f"(like a dataset's test.txt)")
        self.model_size: Optional[tuple[int, int]] = None
        self.output_native = False
        self.workers: List[CaptureWorker] = []
        self.primary_role = "vis"
        self.live = False
        self.recorded = 0
        self._threads: List[threading.Thread] = []
        self._progress = None
        self._fit_aspect = False
        self._sizes: dict = {}

    # -------------------------------------------------------------------------------------------------- public API
    def stop(self) -> None:
        """Finish cleanly: stop capturing, fuse what is in flight, finalise the outputs (safe from any thread)."""
        self._stop.set()

    def abort(self) -> None:
        """Leave as soon as possible, dropping frames in flight (outputs are still finalised)."""
        self._abort.set()
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def fuse(self, ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
        """Fuse one pair synchronously: raw arrays (uint8/uint16 or float [0, 1]; IR (H, W), VIS (H, W[, 3]) RGB).
        Returns RGB (or gray) float32 in [0, 1] at the output size."""
        self._ensure_backend()
        now = time.monotonic()
        packet = Packet(0, "pair", Frame(ir, 0.0, now, 0), Frame(vis, 0.0, now, 0), now)
        self._preprocess(packet)
        self._infer(packet)
        return self._postprocess(packet)

    def run(self) -> dict:
        """Run until the sources end, `max_frames`/`duration_s` is reached or `stop()` is called.
        Returns the statistics report (also written to `config.stats`). Raises the first error of any stage."""
        config = self.config
        tune_allocator()
        try:
            self._check_output_paths()
            self._ensure_backend()
            self._open_sinks()
            stages = self._start_stages()
            deadline = time.monotonic() + config.duration_s if config.duration_s > 0 else None
            output_thread = stages[-1]
            next_trim = time.monotonic() + TRIM_EVERY_S
            while output_thread.is_alive():
                output_thread.join(0.1)
                if time.monotonic() >= next_trim:
                    release_free_memory()
                    next_trim = time.monotonic() + TRIM_EVERY_S
                if deadline is not None and time.monotonic() >= deadline:
                    self.stop()
                if any(getattr(sink, "stop_requested", False) for sink in self.sinks):
                    self.stop()
                if self._errors:
                    self._abort.set()
                    self._stop.set()
            for thread in stages:
                thread.join(5.0)
            for worker in self.workers:
                worker.join(5.0)
                if worker.error is not None and not isinstance(worker.error, (KeyboardInterrupt,)):
                    self._errors.append(worker.error)
        except BaseException:
            self.abort()
            for thread in self._threads:      # let the output stage leave before its sinks are closed
                thread.join(2.0)
            raise
        finally:
            self._close_sinks()
            if self._progress is not None:
                self._progress.close()
        report = self.report()
        if self._owns_backend and self.backend is not None:
            self.backend.close()
        if config.stats:
            try:
                write_json(config.stats, report)
            except OSError as exc:
                self._errors.append(output_error(f"statistics {config.stats}", exc))
        if self._errors:
            raise self._errors[0]
        return report

    def _check_output_paths(self) -> None:
        """Statistics and recorded pairs are written to paths given up front: prove them writable before any work
        (a bad path is a one-line error now, not after an hour's run)."""
        config = self.config
        if config.stats:
            stats = Path(config.stats)
            if stats.is_dir():
                raise FusionError(f"--stats {stats} is a folder; give a file name such as {stats / 'stats.json'}")
            ensure_writable_folder(stats.parent, f"statistics {stats}")
        if config.record_pairs:
            for sub in ("ir", "vi"):
                ensure_writable_folder(Path(config.record_pairs, sub), f"recorded pairs to {config.record_pairs}")

    def report(self) -> dict:
        report = self.stats.snapshot()
        report["mode"] = "folder" if self.folder_mode else "stream"
        report["primary"] = self.primary_role
        report["model"] = self.backend.describe() if self.backend is not None else None
        report["model_size"] = list(self.model_size) if self.model_size else "native"
        report["sync_ms"] = self.config.sync_ms
        report["outputs"] = [sink.describe() for sink in self.sinks]
        if self.config.record_pairs:
            report["recorded_pairs"] = self.recorded
        report["config"] = redacted_config(self.config)
        return report

    def summary(self) -> str:
        return format_report(self.report())

    # --------------------------------------------------------------------------------------------------- set-up
    def _log(self, message: str) -> None:
        if self.config.verbose:
            print(message, flush=True)

    def _ensure_backend(self) -> None:
        if self.backend is None:
            from runtime.backends import create_backend
            self.backend = create_backend(self.config.model, self.config.backend, self.config.threads,
                                          self.config.device)
        requested = parse_size(self.config.imgsz)
        fixed = self.backend.input_size
        native_requested = str(self.config.imgsz).strip().lower() == "native"
        if fixed is not None:
            if requested is not None and tuple(requested) != tuple(fixed):
                raise FusionError(f"the model takes {fixed[0]}x{fixed[1]} inputs but --imgsz is "
                                  f"{requested[0]}x{requested[1]}; drop --imgsz or export the model at that size "
                                  f"(or with --dynamic)")
            if native_requested:
                raise FusionError(f"--imgsz native needs a model exported with dynamic sizes; this one takes "
                                  f"{fixed[0]}x{fixed[1]} only")
            self.model_size = tuple(fixed)
        elif requested is not None:
            self.model_size = requested
        elif native_requested or (self.folder_mode and str(self.config.imgsz).lower() == "auto"):
            self.model_size = None      # each pair at its own size
        else:
            self.model_size = (480, 640)
            # A model that takes any size gets the camera's aspect ratio (640 wide), not a squashed 4:3 frame.
            self._fit_aspect = True
        output_size = self.config.output_size
        self.output_native = output_size == "native" or (output_size == "auto" and self.folder_mode)

    def _open_sinks(self) -> None:
        if self._given_sinks is not None:
            self.sinks = list(self._given_sinks)
            return
        fps = self.config.output_fps or 30.0
        outputs = list(self.config.outputs)
        if not outputs and not self.config.headless and not self.folder_mode:
            from runtime.sinks import gui_available
            if gui_available() and (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
                outputs = ["display://0"]
        opened: List[Sink] = []
        try:
            for uri in outputs:
                if self.config.headless and str(uri).startswith("display"):
                    continue
                sink = open_sink(uri, fps=fps, bind=self.config.bind, image_ext=self.config.image_ext,
                                 stats=self._live_stats, auth_token=self.config.auth_token,
                                 max_clients=self.config.max_clients)
                opened.append(sink)
                if sink.kind == "mjpeg":
                    if sink.token_generated:
                        print(sink.announcement(), flush=True)   # even with -q: nobody else knows the token
                    else:
                        self._log(sink.announcement())
                if getattr(sink, "warning", None):
                    print(sink.warning, file=sys.stderr, flush=True)
        except BaseException:
            for sink in opened:
                sink.close()
            raise
        if not opened and self.folder_mode:
            raise FusionError("folder mode writes one fused image per pair: give --output OUTDIR")
        self.sinks = opened

    def _live_stats(self) -> dict:
        report = self.stats.snapshot()
        report["fps_live"] = round(self.stats.live_fps(), 2)
        report.pop("events", None)
        return report

    def _close_sinks(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # one broken sink must not keep the others from being finalised
                self._errors.append(exc)

    def _start_stages(self) -> List[threading.Thread]:
        if not self.folder_mode:
            self._start_capture()
        # Live: one slot per queue, so a frame never waits behind another for the slowest stage (latency); files:
        # two, so a stage never idles while the one before hands over (throughput).
        size = self.config.queue_size or (1 if (not self.folder_mode and self.live) else 2)
        q_pre: queue.Queue = queue.Queue(size)
        q_inf: queue.Queue = queue.Queue(size)
        q_out: queue.Queue = queue.Queue(size)
        if self.folder_mode:
            producer = threading.Thread(target=self._guard, args=(self._folder_reader, q_pre), name="folder-reader",
                                        daemon=True)
        else:
            producer = threading.Thread(target=self._guard, args=(self._pairer, q_pre), name="pairing", daemon=True)
        threads = [
            producer,
            threading.Thread(target=self._guard, args=(self._stage, q_pre, q_inf, self._preprocess, "preprocess"),
                             name="preprocess", daemon=True),
            threading.Thread(target=self._guard, args=(self._stage, q_inf, q_out, self._infer, "inference"),
                             name="inference", daemon=True),
            threading.Thread(target=self._guard, args=(self._output_stage, q_out), name="output", daemon=True),
        ]
        self._threads = threads
        for thread in threads:
            thread.start()
        return threads

    def _start_capture(self) -> None:
        config = self.config
        ir_source, vis_source = self._given_sources
        opened: List[Source] = []
        try:
            if ir_source is None:
                if not config.ir:
                    raise FusionError("no IR source; give --ir (a camera index, device, URL, video file or folder)")
                ir_source = open_source(config.ir, "ir", fps=config.fps)
                opened.append(ir_source)
            if vis_source is None:
                if not config.vis:
                    raise FusionError("no VIS source; give --vis (a camera index, device, URL, video file or folder)")
                vis_source = open_source(config.vis, "vis", fps=config.fps)
                opened.append(vis_source)
        except BaseException:
            for source in opened:
                source.close()
            raise
        ir_rate = config.ir_fps or ir_source.fps
        vis_rate = config.vis_fps or vis_source.fps
        if config.primary == "auto":
            self.primary_role = "ir" if ir_rate > vis_rate > 0 else "vis"
        else:
            self.primary_role = config.primary
        if not config.output_fps:
            rate = ir_rate if self.primary_role == "ir" else vis_rate
            for sink in self.sinks:
                if hasattr(sink, "fps") and rate:
                    sink.fps = rate
        if not self.sinks:
            self._log("no outputs: fusing for the statistics only (add --output to keep the frames)")
        self._log(f"IR:  {ir_source.describe()}\nVIS: {vis_source.describe()}\n"
                  f"model: {self.backend.label()}  pairing on {self.primary_role.upper()} within "
                  f"{config.sync_ms:g} ms")
        buffers = {}
        for role, source, rate in (("ir", ir_source, config.ir_fps), ("vis", vis_source, config.vis_fps)):
            live = source.live or config.realtime
            primary = role == self.primary_role
            # Live: the driving camera keeps only its newest frame; the other keeps a short history so the frame
            # nearest in time can be chosen. Files: small lossless buffers.
            capacity = (1 if primary else 8) if live else (4 if primary else 16)
            buffers[role] = FrameBuffer(capacity, lossless=not live)
            self.workers.append(CaptureWorker(role, source, buffers[role], self.stats, self._stop,
                                              realtime=config.realtime, loop=config.loop,
                                              reconnect_max_s=config.reconnect_max_s, fps_override=rate))
        self.buffers = buffers
        self.live = any(w.source.live or config.realtime for w in self.workers)
        for worker in self.workers:
            worker.start()

    def _guard(self, target, *args) -> None:
        try:
            target(*args)
        except BaseException as exc:
            self._errors.append(exc)
            self._abort.set()
            self._stop.set()
        finally:
            # Always pass the end marker on so the downstream stages finish and the sinks get closed.
            out_queue = args[-1] if target in (self._pairer, self._folder_reader) else (
                args[1] if target == self._stage else None)
            if out_queue is not None:
                self._put(out_queue, _END, force=True)

    def _put(self, q: queue.Queue, item, force: bool = False) -> bool:
        while True:
            if self._abort.is_set() and not force:
                return False
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                if self._abort.is_set():
                    # Make room for the end marker: nothing in flight matters once we abort.
                    try:
                        q.get_nowait()
                    except queue.Empty:
                        pass

    def _emit(self, q: queue.Queue, packet: "Packet") -> bool:
        """Hand a pair to preprocessing. Files: wait for room (lossless). Live: replace a pair still waiting there,
        so preprocessing always starts from the newest frames (stale pairs are dropped and counted)."""
        if not self.live:
            return self._put(q, packet)
        while not self._abort.is_set():
            try:
                q.put_nowait(packet)
                return True
            except queue.Full:
                try:
                    q.get_nowait()
                    self.stats.count("stale_dropped_pairs")
                except queue.Empty:
                    pass
        return False

    def _wait_for_room(self, q: queue.Queue) -> None:
        """Live: start work only when the next stage can take it, so a frame is never prepared long before the
        model is free (what it waits for it waits as the newest pair, not in a queue)."""
        while q.full() and not self._abort.is_set():
            time.sleep(0.001)

    def _get(self, q: queue.Queue):
        while True:
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                if self._abort.is_set():
                    return _END

    # -------------------------------------------------------------------------------------------------- stages
    def _folder_reader(self, out_queue: queue.Queue) -> None:
        pairs = discover_pairs(ir_dir=self.config.ir, vis_dir=self.config.vis, names=self.config.names or None)
        total = len(pairs)
        if self.config.resume:
            from runtime.sinks import ImageFolderSink
            folders = [sink for sink in self.sinks if isinstance(sink, ImageFolderSink)]
            pairs = [p for p in pairs if not all((f.folder / f"{p.name}{f.ext}").is_file() for f in folders)]
            self.stats.count("skipped_done", total - len(pairs))
        self._log(f"folder mode: {len(pairs)} pairs to fuse ({total - len(pairs)} already done) from "
                  f"{self.config.ir} and {self.config.vis}; model: {self.backend.label()}")
        if self.config.verbose:
            from tqdm import tqdm
            self._progress = tqdm(total=len(pairs), unit="pair", desc="fusing", leave=False)
        for index, pair in enumerate(pairs):
            if self._stop.is_set() or (self.config.max_frames and index >= self.config.max_frames):
                break
            t0 = time.perf_counter()
            now = time.monotonic()
            ir, vis = read_raw(pair.ir), read_raw(pair.vis)
            if ir.ndim == 3:
                ir = cv2.cvtColor(ir, cv2.COLOR_RGB2GRAY)
            self.stats.add("capture", time.perf_counter() - t0)
            packet = Packet(index, pair.name, Frame(ir, 0.0, now, index, pair.name),
                            Frame(vis, 0.0, now, index, pair.name), now)
            if not self._put(out_queue, packet):
                return

    def _pairer(self, out_queue: queue.Queue) -> None:
        config = self.config
        sync_s = config.sync_ms / 1000.0
        primary_role = self.primary_role
        secondary_role = "ir" if primary_role == "vis" else "vis"
        workers = {w.role: w for w in self.workers}
        primary, secondary = self.buffers[primary_role], self.buffers[secondary_role]
        index = 0
        while not self._stop.is_set():
            if config.max_frames and index >= config.max_frames and not self.live:
                self.stop()
                break
            if workers[primary_role].down:
                # The driving camera is gone: show the other one (newest frame) until it is back.
                other = secondary.pop(timeout=0.1)
                if other is not None and config.on_loss == "passthrough":
                    other = secondary.pop_newest() or other
                    if not self._emit(out_queue, self._single(index, secondary_role, other)):
                        return
                    index += 1
                continue
            frame = primary.pop(timeout=0.1)
            if frame is None:
                if primary.exhausted():
                    break
                continue
            if workers[secondary_role].down:
                if config.on_loss == "passthrough":
                    if not self._emit(out_queue, self._single(index, primary_role, frame)):
                        return
                    index += 1
                continue
            t_wait = time.perf_counter()
            wait_until = frame.t_capture + sync_s if self.live else None
            partner = secondary.match(frame.t_media, wait_until, self._stop, lambda: workers[secondary_role].down)
            self.stats.add("pair_wait", time.perf_counter() - t_wait)
            if partner is None or abs(partner.t_media - frame.t_media) > sync_s:
                self.stats.count("unpaired")
                if secondary.exhausted() and not self.live and partner is None:
                    break
                continue
            error = partner.t_media - frame.t_media
            self.stats.add("pair_error", error)
            ir, vis = (partner, frame) if primary_role == "vis" else (frame, partner)
            packet = Packet(index, frame.name if primary_role == "vis" else partner.name, ir, vis,
                            frame.t_capture, pair_error_ms=error * 1000.0)
            if not self._emit(out_queue, packet):
                return
            index += 1

    def _single(self, index: int, role: str, frame: Frame) -> Packet:
        self.stats.count("passthrough")
        ir, vis = (frame, None) if role == "ir" else (None, frame)
        return Packet(index, frame.name, ir, vis, frame.t_capture, mode=f"{role} only")

    def _stage(self, in_queue: queue.Queue, out_queue: queue.Queue, work: Callable[[Packet], None], name: str):
        pull = self.live and not self.folder_mode and name == "preprocess"
        while True:
            if pull:
                self._wait_for_room(out_queue)
            packet = self._get(in_queue)
            if packet is _END:
                return
            t0 = time.perf_counter()
            work(packet)
            self.stats.add(name, time.perf_counter() - t0)
            if not self._put(out_queue, packet):
                return

    def _output_stage(self, in_queue: queue.Queue) -> None:
        while True:
            packet = self._get(in_queue)
            if packet is _END:
                return
            limit = self.config.max_frames
            if limit and self.stats.counters.get("frames_out", 0) >= limit:
                self.stop()           # live pipelines still have frames in flight: drain them unwritten
                continue
            t0 = time.perf_counter()
            rgb = unit_to_uint8(self._postprocess(packet))
            t1 = time.perf_counter()
            self.stats.add("postprocess", t1 - t0)
            if rgb.ndim == 2:
                rgb = np.repeat(rgb[:, :, None], 3, axis=2)
            info = self._output_info(packet) if self.sinks else None
            overlaid = None
            for sink in self.sinks:
                if self.config.overlay == "on" or (self.config.overlay == "auto" and sink.wants_overlay):
                    overlaid = draw_overlay(rgb, info) if overlaid is None else overlaid
                    sink.write(overlaid, info)
                else:
                    sink.write(rgb, info)
            if self.config.record_pairs and packet.mode == "fused":
                self._record(packet)
            now = time.monotonic()
            self.stats.add("output", time.perf_counter() - t1)
            self.stats.add("latency", now - packet.t_capture)
            self.stats.output_done(now)
            if self._progress is not None:
                self._progress.update(1)

    def _output_info(self, packet: Packet) -> OutputInfo:
        info = OutputInfo(packet.index, packet.name, mode=packet.mode, pair_error_ms=packet.pair_error_ms)
        info.fps = self.stats.live_fps()
        info.stages_ms = {name: self.stats.recent_ms(name) for name in ("preprocess", "inference", "postprocess")}
        info.health = {w.role: w.state for w in self.workers}
        return info

    def _record(self, packet: Packet) -> None:
        name = f"{self.recorded:06d}"
        root = Path(self.config.record_pairs)
        try:
            write_image(root / "ir" / f"{name}.png", packet.ir.image)
            write_image(root / "vi" / f"{name}.png", packet.vis.image)
        except OSError as exc:
            raise output_error(f"recorded pair {name} to {root}", exc, folder=root) from None
        self.recorded += 1

    # ------------------------------------------------------------------------------------------- per-frame work
    def _resize(self, img: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
        if img.shape[:2] == tuple(size_hw):
            return img
        shrinking = img.shape[0] > size_hw[0]
        return cv2.resize(img, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_AREA if shrinking else
                          cv2.INTER_LINEAR)

    def _preprocess(self, packet: Packet) -> None:
        """Register, resize to the model size, IR to float (16-bit AGC), VIS to luminance + chroma."""
        if packet.mode != "fused":
            self._prepare_passthrough(packet)
            return
        ir, vis = self.registration.apply(packet.ir.image, packet.vis.image)
        native_hw = tuple(vis.shape[:2])
        model_hw, out_native = self._sizes_for(native_hw)
        ir_small = ir_to_float(self._resize(ir, model_hw), clahe=self.config.clahe)
        vis_small = vis_to_float(self._resize(vis, model_hw))
        channels = self.backend.vis_channels
        if channels == 3:
            if vis_small.ndim == 2:
                vis_small = np.repeat(vis_small[:, :, None], 3, axis=2)
            packet.model_vis = np.ascontiguousarray(vis_small.transpose(2, 0, 1)[None])
            packet.ycrcb = None
        elif vis_small.ndim == 3:
            ycrcb_small = split_ycrcb(vis_small)
            packet.model_vis = np.ascontiguousarray(ycrcb_small[None, None, :, :, 0])
            if out_native and native_hw != model_hw:
                packet.ycrcb = split_ycrcb(vis_to_float(vis))
            else:
                packet.ycrcb = ycrcb_small
        else:
            packet.model_vis = np.ascontiguousarray(vis_small[None, None], dtype=np.float32)
            packet.ycrcb = None
        packet.model_ir = np.ascontiguousarray(ir_small[None, None], dtype=np.float32)
        packet.out_size = native_hw if out_native else model_hw

    def _sizes_for(self, native_hw: tuple) -> tuple:
        """(model input (H, W), whether the output is at the native size) for frames of `native_hw`, cached.

        Dynamic models at the default size keep the frame's aspect ratio (640 wide, height rounded to the model's
        multiple). A fixed-size model fed a frame of another aspect ratio returns its output to the native size
        (output_size auto), so the fused stream is never squashed."""
        sizes = self._sizes.get(native_hw)
        if sizes is None:
            model_hw = self.model_size or native_hw
            if self._fit_aspect:
                multiple = max(8, int(getattr(self.backend, "multiple", 1) or 1))
                width = model_hw[1]
                height = max(multiple, int(round(width * native_hw[0] / native_hw[1] / multiple)) * multiple)
                model_hw = (height, width)
            out_native = self.output_native
            if self.config.output_size == "auto" and not out_native:
                aspect_model, aspect_native = model_hw[1] / model_hw[0], native_hw[1] / native_hw[0]
                out_native = abs(aspect_model / aspect_native - 1.0) > 0.02
            sizes = self._sizes[native_hw] = (tuple(model_hw), out_native)
        return sizes

    def _prepare_passthrough(self, packet: Packet) -> None:
        frame = packet.ir if packet.ir is not None else packet.vis
        img = frame.image
        model_hw, out_native = self._sizes_for(tuple(img.shape[:2]))
        size = tuple(img.shape[:2]) if out_native else model_hw
        img = self._resize(img, size)
        packet.passthrough = ir_to_float(img) if packet.ir is not None else vis_to_float(img)
        packet.out_size = tuple(size)

    def _infer(self, packet: Packet) -> None:
        if packet.mode != "fused":
            return
        fused = self.backend.infer(packet.model_ir, packet.model_vis)
        expected = packet.model_vis.shape
        if fused.ndim != 4 or fused.shape[0] != 1 or fused.shape[1] != expected[1]:
            raise FusionError(f"the model returned an output of shape {tuple(fused.shape)} for inputs "
                              f"{tuple(expected)}; it is not a fusion model of this project")
        packet.fused = fused[0]

    def _postprocess(self, packet: Packet) -> np.ndarray:
        """Fused luminance + VIS chroma -> RGB float32 [0, 1] at the output size."""
        if packet.mode != "fused":
            img = packet.passthrough
            return np.repeat(img[:, :, None], 3, axis=2) if img.ndim == 2 else img
        out_hw = packet.out_size
        if packet.fused.shape[0] == 3:
            rgb = np.clip(packet.fused.transpose(1, 2, 0), 0.0, 1.0)
            return self._resize(rgb, out_hw)
        y = packet.fused[0]
        if y.shape != tuple(out_hw):
            y = self._resize(y, out_hw)
        if packet.ycrcb is None:
            return np.clip(y, 0.0, 1.0)
        return merge_ycrcb(y, packet.ycrcb)


# The per-frame colour conversions of the runtime: runtime.color's BT.601 full-range maths (split_luminance /
# merge_luminance) done by OpenCV's float32 YCrCb conversion, one C pass instead of numpy temporaries (0.1-0.3 ms
# instead of 1.5-6 ms per 640x480 frame here, which decided whether the pipeline met its 30% non-inference budget).
# Same coefficients (OpenCV rounds the chroma scales to 3 digits), float32 throughout:
# tests/test_pipeline_outputs.py holds both to within 5e-4 (an eighth of an 8-bit level) of runtime.color.
def split_ycrcb(vis_rgb: np.ndarray) -> np.ndarray:
    """RGB float32 (H, W, 3) in [0, 1] -> YCrCb float32 (H, W, 3): Y, Cr, Cb with chroma centred on 0.5
    (= runtime.color.split_luminance, channels in OpenCV's order)."""
    return cv2.cvtColor(np.asarray(vis_rgb, dtype=np.float32), cv2.COLOR_RGB2YCrCb)


def unit_to_uint8(img: np.ndarray) -> np.ndarray:
    """float in [0, 1] -> uint8 in one OpenCV pass: the same values as runtime.imageio.to_uint8 (x255, rounded half
    to even, saturated), 0.05 ms instead of 0.3-3 ms at 640x480. Only for images already in [0, 1] (everything
    `_postprocess` returns): OpenCV takes |x| first, so negatives would not clip to 0; anything else goes to
    to_uint8."""
    if img.dtype == np.uint8:
        return img
    if img.dtype not in (np.float32, np.float64):
        return to_uint8(img)
    return cv2.convertScaleAbs(img, alpha=255.0)


def merge_ycrcb(y: np.ndarray, ycrcb: np.ndarray) -> np.ndarray:
    """Fused Y (H, W) + the VIS YCrCb (H, W, 3) -> RGB float32 in [0, 1] (= runtime.color.merge_luminance).
    Overwrites the Y channel of `ycrcb` (each frame owns its own)."""
    ycrcb[..., 0] = y
    rgb = cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2RGB)
    return np.clip(rgb, 0.0, 1.0, out=rgb)


_ALLOCATOR_TUNED = False
_LIBC = None
TRIM_EVERY_S = 20.0       # how often a running pipeline hands freed heap memory back to the system


def tune_allocator() -> None:
    """Keep freed frame-sized buffers in the heap for reuse (glibc only; FUSION_NO_MALLOPT=1 disables).

    Every stage allocates a few megabytes of temporaries per frame; with glibc's default thresholds each one is a fresh
    mmap that the kernel must zero page by page (thousands of page faults per frame, measured), then gives back.
    The price is that freed memory stays with the process at its high-water mark, and fragments: resident memory
    crept up ~2 MB a minute in a 10-minute soak (benchmarks.soak). `release_free_memory`, called every
    TRIM_EVERY_S by the running pipeline, hands the free pages back.
    """
    global _ALLOCATOR_TUNED, _LIBC
    if _ALLOCATOR_TUNED or os.environ.get("FUSION_NO_MALLOPT") or not sys.platform.startswith("linux"):
        return
    _ALLOCATOR_TUNED = True
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)
        libc.mallopt(m_trim_threshold, 256 * 1024 * 1024)
        _LIBC = libc
    except (OSError, AttributeError):
        pass  # not glibc (musl, macOS): nothing to tune


def release_free_memory() -> None:
    """glibc's malloc_trim(0): return free heap pages (in every arena, not only at the top) to the system. A few
    milliseconds, off the frame path (the pipeline's supervising thread calls it)."""
    if _LIBC is not None:
        try:
            _LIBC.malloc_trim(0)
        except AttributeError:
            pass


def _is_dir(uri: str) -> bool:
    return bool(uri) and "://" not in str(uri) and Path(uri).is_dir()
