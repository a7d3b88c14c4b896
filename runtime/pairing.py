"""Pairing: which IR frame goes with which VIS frame.

Streams are paired by timestamp. The faster camera drives the output (auto: the higher nominal frame rate, VIS on a
tie): each of its frames gets the other camera's frame nearest in time, waiting (live: at most sync_ms) for one that
may still come; pairs farther apart than sync_ms are dropped and counted (`unpaired`). While a camera is lost, the
other one's frames pass through unfused (on_loss "passthrough") or the output pauses.

Image folders are paired by name (the same stem in both folders), optionally picked and ordered by a split file.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Dict, Optional

import cv2

from runtime.capture import CaptureWorker, FrameBuffer
from runtime.imageio import discover_pairs, read_raw
from runtime.motion import VisHistory
from runtime.sources import Frame
from runtime.stages import Packet
from runtime.stats import StatsRecorder


def match_latest(buffer: FrameBuffer, t: float, lossless: bool, stop: threading.Event,
                 is_down: Callable[[], bool]) -> Optional[Frame]:
    """The newest frame taken at or before media time `t` (IR motion compensation carries it forward to `t`), or the
    oldest one when all are later. Live buffers never wait: what has arrived is what there is. Lossless (files)
    waits until a frame after `t` has been read (or the source ended), so the choice is the one a live run would
    make with every frame on time. Older frames are discarded; the chosen one stays for the next call."""
    with buffer.cond:
        while True:
            # Drop what a later frame at or before t supersedes (also while waiting: a full lossless buffer of
            # frames all before t would otherwise keep the reader from adding the one after t).
            while len(buffer.frames) >= 2 and buffer.frames[1].t_media <= t:
                buffer.frames.popleft()
                buffer.cond.notify_all()
            if not lossless or stop.is_set() or (buffer.frames and buffer.frames[-1].t_media > t) or \
                    buffer.ended or is_down():
                break
            buffer.cond.wait(0.1)
        return buffer.frames[0] if buffer.frames else None


def match_nearest(buffer: FrameBuffer, t: float, wait_until: Optional[float], stop: threading.Event,
                  is_down: Callable[[], bool]) -> Optional[Frame]:
    """The frame nearest to media time `t`, waiting (until `wait_until`, or without limit when None) for a frame
    at or after `t` so the nearest one can lie in the future. Frames older than the chosen one are discarded
    (they cannot be nearer to any later `t`); the chosen one stays for the next call."""
    with buffer.cond:
        while not stop.is_set():
            # Keep at most one frame before t: older ones are farther from t and from every later t.
            while len(buffer.frames) >= 2 and buffer.frames[1].t_media <= t:
                buffer.frames.popleft()
                buffer.cond.notify_all()
            if (buffer.frames and buffer.frames[-1].t_media >= t) or buffer.ended or is_down():
                break
            if wait_until is not None:
                if buffer.frames:
                    # Live: a later frame helps only if it comes before t + (t - newest); with the camera's
                    # period known, don't wait when the next one is due after that (saves up to sync_ms of
                    # latency on every frame of the faster camera).
                    newest = buffer.frames[-1].t_media
                    horizon = t + (t - newest)
                    if buffer.period is not None and newest + buffer.period >= horizon:
                        break
                    wait_until = min(wait_until, horizon)
                remaining = wait_until - time.monotonic()
                if remaining <= 0:
                    break
                buffer.cond.wait(min(remaining, 0.1))
            else:
                buffer.cond.wait(0.1)
        if not buffer.frames:
            return None
        best = min(buffer.frames, key=lambda f: abs(f.t_media - t))
        while buffer.frames and buffer.frames[0] is not best:
            buffer.frames.popleft()
        buffer.cond.notify_all()
        return best


class Pairer:
    """The pairing thread's work: frames from the two capture buffers in, Packets out through `emit` (which returns
    False when the pipeline is aborting). `finish` is called when a lossless run reached `max_frames`."""

    def __init__(self, config, stats: StatsRecorder, buffers: Dict[str, FrameBuffer], workers: Dict[str, CaptureWorker],
                 primary_role: str, live: bool, stop_event: threading.Event, emit: Callable[[Packet], bool],
                 finish: Callable[[], None], history: Optional[VisHistory] = None):
        self.config, self.stats, self.buffers, self.workers = config, stats, buffers, workers
        self.primary_role, self.live, self.stop_event = primary_role, live, stop_event
        self.emit, self.finish = emit, finish
        # IR motion compensation (VIS driving): pair with the latest IR frame, and remember the VIS frames so that
        # preprocessing can measure the motion since that IR frame was taken.
        self.history = history if primary_role == "vis" else None

    def run(self) -> None:
        config = self.config
        sync_s = config.sync_ms / 1000.0
        primary_role = self.primary_role
        secondary_role = "ir" if primary_role == "vis" else "vis"
        workers = self.workers
        primary, secondary = self.buffers[primary_role], self.buffers[secondary_role]
        index = 0
        while not self.stop_event.is_set():
            if config.max_frames and index >= config.max_frames and not self.live:
                self.finish()
                break
            if workers[primary_role].down:
                # The driving camera is gone: show the other one (newest frame) until it is back.
                other = secondary.pop(timeout=0.1)
                if other is not None and config.on_loss == "passthrough":
                    other = secondary.pop_newest() or other
                    if not self.emit(self.single(index, secondary_role, other)):
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
                    if not self.emit(self.single(index, primary_role, frame)):
                        return
                    index += 1
                continue
            t_wait = time.perf_counter()
            window = sync_s
            if self.history is not None:
                self.history.add(frame)
                partner = match_latest(secondary, frame.t_media, not self.live, self.stop_event,
                                       lambda: workers[secondary_role].down)
                window = sync_s + workers[secondary_role].period     # a held frame is up to one IR period old
            else:
                wait_until = frame.t_capture + sync_s if self.live else None
                partner = match_nearest(secondary, frame.t_media, wait_until, self.stop_event,
                                        lambda: workers[secondary_role].down)
            self.stats.add("pair_wait", time.perf_counter() - t_wait)
            if partner is None or abs(partner.t_media - frame.t_media) > window:
                self.stats.count("unpaired")
                if secondary.exhausted() and not self.live and partner is None:
                    break
                continue
            error = partner.t_media - frame.t_media
            self.stats.add("pair_error", error)
            ir, vis = (partner, frame) if primary_role == "vis" else (frame, partner)
            packet = Packet(index, frame.name if primary_role == "vis" else partner.name, ir, vis,
                            frame.t_capture, pair_error_ms=error * 1000.0)
            if self.history is not None:
                packet.vis_ref = self.history.nearest(partner.t_media)
            if not self.emit(packet):
                return
            index += 1

    def single(self, index: int, role: str, frame: Frame) -> Packet:
        self.stats.count("passthrough")
        ir, vis = (frame, None) if role == "ir" else (None, frame)
        return Packet(index, frame.name, ir, vis, frame.t_capture, mode=f"{role} only")


def pairs_to_fuse(config, done_folders=()) -> tuple[list, int]:
    """Folder mode: the pairs (same stems) of config.ir and config.vis, in the order of config.names when given;
    with config.resume, without those whose output image exists in every folder of `done_folders` (ImageFolderSinks).
    Returns (pairs, how many were skipped as done)."""
    pairs = discover_pairs(ir_dir=config.ir, vis_dir=config.vis, names=config.names or None)
    total = len(pairs)
    if config.resume:
        pairs = [p for p in pairs if not all((f.folder / f"{p.name}{f.ext}").is_file() for f in done_folders)]
    return pairs, total - len(pairs)


def read_pair(index: int, pair, stats: StatsRecorder) -> Packet:
    """A folder pair read from disk into a Packet (IR as one channel)."""
    t0 = time.perf_counter()
    now = time.monotonic()
    ir, vis = read_raw(pair.ir), read_raw(pair.vis)
    if ir.ndim == 3:
        ir = cv2.cvtColor(ir, cv2.COLOR_RGB2GRAY)
    stats.add("capture", time.perf_counter() - t0)
    return Packet(index, pair.name, Frame(ir, 0.0, now, index, pair.name), Frame(vis, 0.0, now, index, pair.name), now)
