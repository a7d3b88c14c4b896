"""Capture: one thread per source reading into a bounded FrameBuffer, with reconnection and looping.

    capture IR  ──> FrameBuffer ─┐
                                 ├─ pairing (runtime.pairing)
    capture VIS ──> FrameBuffer ─┘

Live sources (cameras, streams, `realtime` files) keep only their newest frames: when the pipeline falls behind,
stale frames are dropped, never queued, so latency stays bounded. Files and folders are read losslessly (a full
buffer makes the reader wait), so a video in gives every frame out. A source that stops delivering is reopened
with exponential backoff; a looped file continues one timeline across restarts.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, Deque, Dict, List, Optional, Tuple

from runtime.errors import FusionError
from runtime.sources import Frame, Source, SourceLost, open_source
from runtime.stats import StatsRecorder


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


class CaptureWorker(threading.Thread):
    """Reads one source into its FrameBuffer; reconnects a lost live source with exponential backoff.

    Files keep one continuous timeline across restarts (`loop`, or a reopen after a read failure): each pass starts
    one frame period after the last frame of the previous one, so pairing and real-time pacing never see time jump
    back or a pass-long gap ahead. With `realtime`, a file is paced like a camera (its frames are due at the media
    time on the wall clock); after an outage the clock is re-anchored instead of replaying the missed seconds at
    full speed, as a camera would not deliver the frames it missed either. `clock` is the wall clock that pacing
    follows (time.monotonic; tests pass a simulated one, whose time passes as `stop.wait` is called).
    """

    # Further behind the real-time schedule than this and a paced file re-anchors its clock.
    MAX_LAG_S = 1.0

    def __init__(self, role: str, source: Source, buffer: FrameBuffer, stats: StatsRecorder, stop: threading.Event,
                 realtime: bool = False, loop: bool = False, reconnect_max_s: float = 5.0, fps_override: float = 0.0,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(name=f"capture-{role}", daemon=True)
        self.role, self.source, self.buffer, self.stats, self.stop_event = role, source, buffer, stats, stop
        self.realtime = realtime and not source.live
        self.loop = loop
        self.reconnect_max_s = reconnect_max_s
        self.fps_override = fps_override
        self.clock = clock
        self.state = "ok"
        self.error: Optional[BaseException] = None
        self.frames = 0
        self.passes = 1             # passes through a looped file (1 during the first)
        self._pass_frames = 0
        self._offset = 0.0          # added to the source's media time so restarts continue the timeline
        self._last_media: Optional[float] = None
        self._rebase = False        # the source was reopened: the next frame continues the timeline
        self._anchor: Optional[float] = None  # realtime: wall-clock time of media time 0

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
                self._anchor = None       # re-anchor real-time pacing: the missed seconds are not replayed
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
        now = self.clock()
        if self._anchor is None or now - (self._anchor + frame.t_media) > self.MAX_LAG_S:
            self._anchor = now - frame.t_media
        delay = self._anchor + frame.t_media - now
        if delay > 0 and self.stop_event.wait(delay):
            return False
        frame.t_capture = frame.t_media = self.clock()
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


def open_sources(config, ir_source: Optional[Source] = None,
                 vis_source: Optional[Source] = None) -> Tuple[Source, Source]:
    """The IR and VIS sources: the given ones, else opened from config.ir / config.vis (none left open on error)."""
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
    return ir_source, vis_source


def primary_role(config, ir_source: Source, vis_source: Source) -> str:
    """The camera that drives the output: config.primary, or on auto the faster one (VIS on a tie)."""
    if config.primary != "auto":
        return config.primary
    ir_rate = config.ir_fps or ir_source.fps
    vis_rate = config.vis_fps or vis_source.fps
    return "ir" if ir_rate > vis_rate > 0 else "vis"


def capture_workers(config, sources: Dict[str, Source], primary: str, stats: StatsRecorder,
                    stop: threading.Event) -> Tuple[List[CaptureWorker], Dict[str, FrameBuffer]]:
    """One (not yet started) capture thread and buffer per role, sized for live or lossless reading."""
    workers, buffers = [], {}
    for role in ("ir", "vis"):
        source = sources[role]
        live = source.live or config.realtime
        # Live: the driving camera keeps only its newest frame; the other keeps a short history so the frame
        # nearest in time can be chosen. Files: small lossless buffers.
        capacity = (1 if role == primary else 8) if live else (4 if role == primary else 16)
        buffers[role] = FrameBuffer(capacity, lossless=not live)
        workers.append(CaptureWorker(role, source, buffers[role], stats, stop, realtime=config.realtime,
                                     loop=config.loop, reconnect_max_s=config.reconnect_max_s,
                                     fps_override=config.ir_fps if role == "ir" else config.vis_fps))
    return workers, buffers
