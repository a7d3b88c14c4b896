"""Run statistics: per-stage timings, capture-to-output latency, pairing error, drops and reconnects.

Everything is recorded in seconds and reported in milliseconds. The recorder is thread-safe and bounded (a ring of
the most recent samples per series, 8 bytes a sample in a numpy array rather than a 32-byte Python float in a
deque), so a pipeline that runs for days does not grow past a few megabytes of statistics.
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from typing import Deque, Dict, Optional

import numpy as np

STAGES = ("capture", "capture_wait", "pair_wait", "preprocess", "inference", "postprocess", "output")
WAITING = ("capture_wait", "pair_wait")   # reported, but not work
PARTS = ("motion", "temporal")            # reported, but already inside a stage above (IR motion: preprocess;
                                          # the temporal filter: postprocess)
PERCENTILES = (50, 90, 99)
LIVE_WINDOW = 1800        # samples per series behind the live statistics: about a minute at 30 fps


def summarize(values_s, scale: float = 1000.0) -> dict:
    """count, mean, p50/p90/p99, max of a series (seconds -> milliseconds by default)."""
    if not isinstance(values_s, np.ndarray):
        values_s = list(values_s)
    values = np.asarray(values_s, dtype=np.float64) * scale
    if values.size == 0:
        return {"count": 0}
    out = {"count": int(values.size), "mean": round(float(values.mean()), 3)}
    for p in PERCENTILES:
        out[f"p{p}"] = round(float(np.percentile(values, p)), 3)
    out["max"] = round(float(values.max()), 3)
    return out


class SampleRing:
    """The newest `capacity` samples of a series in a float64 array, overwritten oldest first once full. Not
    thread-safe on its own: StatsRecorder holds its lock around it.

    The array is allocated and written at its full size up front: a ring that grew as it filled (it used to double)
    made resident memory creep for the first hour and a half of a run at 20 fps, and the 60-minute soak read that as
    growth. 100,000 samples are 800 kB, paid at start and then flat."""

    __slots__ = ("capacity", "data", "size", "start")

    def __init__(self, capacity: int):
        self.capacity = max(1, int(capacity))
        self.data = np.full(self.capacity, np.nan, dtype=np.float64)   # full(): every page touched now, not later
        self.size = 0          # samples held
        self.start = 0         # index of the oldest once full

    def append(self, value: float) -> None:
        if self.size < self.capacity:
            self.data[self.size] = value
            self.size += 1
        else:
            self.data[self.start] = value
            self.start = (self.start + 1) % self.capacity

    def values(self) -> np.ndarray:
        """All samples held, oldest first (a copy)."""
        if self.size < self.capacity:
            return self.data[:self.size].copy()
        return np.concatenate((self.data[self.start:], self.data[:self.start]))

    def newest(self, n: int) -> np.ndarray:
        """The newest min(n, size) samples (a copy)."""
        n = min(n, self.size)
        if self.size < self.capacity:
            return self.data[self.size - n:self.size].copy()
        end = self.start
        if n <= end:
            return self.data[end - n:end].copy()
        return np.concatenate((self.data[self.capacity - (n - end):], self.data[:end]))

    def __len__(self) -> int:
        return self.size


class StatsRecorder:
    """Thread-safe counters and bounded sample series."""

    def __init__(self, window: int = 100_000):
        self._lock = threading.Lock()
        self._series: Dict[str, SampleRing] = defaultdict(lambda: SampleRing(window))
        self._totals: Dict[str, float] = defaultdict(float)
        self.counters: Dict[str, int] = defaultdict(int)
        self.sources: Dict[str, dict] = {}
        self.events: Deque[dict] = deque(maxlen=200)
        self.started = time.monotonic()
        self.first_output: Optional[float] = None
        self.last_output: Optional[float] = None
        self._recent_outputs: Deque[float] = deque(maxlen=60)

    def add(self, series: str, seconds: float) -> None:
        with self._lock:
            self._series[series].append(float(seconds))
            self._totals[series] += float(seconds)

    def total(self, series: str) -> float:
        """The sum of every value added to `series` so far (seconds)."""
        with self._lock:
            return self._totals.get(series, 0.0)

    def count(self, counter: str, n: int = 1) -> None:
        with self._lock:
            self.counters[counter] += n

    def event(self, kind: str, **info) -> None:
        with self._lock:
            self.events.append({"t": round(time.monotonic() - self.started, 3), "event": kind, **info})

    def source_state(self, role: str, **state) -> None:
        with self._lock:
            self.sources.setdefault(role, {}).update(state)

    def output_done(self, now: Optional[float] = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            if self.first_output is None:
                self.first_output = now
            self.last_output = now
            self._recent_outputs.append(now)
            self.counters["frames_out"] += 1

    def live_fps(self) -> float:
        """Output rate over the last second or so (what the overlay shows)."""
        with self._lock:
            times = list(self._recent_outputs)
        if len(times) < 2:
            return 0.0
        return (len(times) - 1) / max(times[-1] - times[0], 1e-9)

    def recent_ms(self, series: str, n: int = 30) -> float:
        # The newest n only: copying the whole series (up to `window` samples) per frame for the overlay cost
        # milliseconds a frame once a long run had filled it.
        with self._lock:
            ring = self._series.get(series)
            values = ring.newest(n) if ring is not None else ()
        return float(np.median(values) * 1000.0) if len(values) else 0.0

    def snapshot(self, recent: Optional[int] = None) -> dict:
        """Everything as plain JSON-able data (what `--stats FILE` writes). The percentiles cover the newest `window`
        samples of each series, or only the newest `recent` when given (what the live page and stats.json use: a
        poll a second that sorted the whole window cost 46 ms of CPU and megabytes of temporaries once a long run
        had filled it, and drifted the frame rate down as the run went on)."""
        with self._lock:
            if recent is None:
                series = {name: ring.values() for name, ring in self._series.items()}
            else:
                series = {name: ring.newest(recent) for name, ring in self._series.items()}
            totals = dict(self._totals)
            counters = dict(self.counters)
            sources = {k: dict(v) for k, v in self.sources.items()}
            events = list(self.events)
            first, last = self.first_output, self.last_output
        frames = counters.get("frames_out", 0)
        elapsed = time.monotonic() - self.started
        # Throughput over the span between the first and last output, so model loading and the first frame's
        # warm-up do not count as frame time.
        span = (last - first) if (first is not None and last is not None and last > first) else 0.0
        fps = (frames - 1) / span if frames > 1 and span > 0 else 0.0
        stages = {name: summarize(series[name]) for name in STAGES + PARTS if name in series}
        report = {
            "frames": frames,
            "elapsed_s": round(elapsed, 3),
            "fps": round(fps, 3),
            "stages_ms": stages,
            "latency_ms": summarize(series.get("latency", ())),
            "pair_error_ms": summarize(np.abs(series.get("pair_error", np.empty(0)))),
            "counters": counters,
            "sources": sources,
            "events": events,
        }
        if fps > 0 and frames and totals.get("inference"):
            # Work per output frame: the total time each stage spent working, divided by the frames that came
            # out (capture reads both cameras, at their own rates; waiting for a partner frame is not work).
            frame_ms = 1000.0 / fps
            per_frame = {name: 1000.0 * totals.get(name, 0.0) / frames for name in STAGES if name not in WAITING}
            other = sum(v for name, v in per_frame.items() if name != "inference")
            report["work_per_frame_ms"] = {k: round(v, 3) for k, v in per_frame.items()}
            report["frame_time_ms"] = round(frame_ms, 3)
            report["non_inference_ms"] = round(other, 3)
            report["non_inference_share"] = round(other / frame_ms, 4)
            report["inference_share"] = round(per_frame["inference"] / frame_ms, 4)
        return report


def format_report(report: dict) -> str:
    """The human-readable summary printed at exit."""
    lines = [f"frames: {report['frames']}   throughput: {report['fps']:.1f} fps   elapsed: {report['elapsed_s']:.1f} s"]
    header = f"  {'stage':<12}{'mean':>9}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}  (ms)"
    lines.append(header)
    rows = list(report["stages_ms"].items()) + [("capture->out", report["latency_ms"]),
                                                 ("pair error", report["pair_error_ms"])]
    for name, s in rows:
        if not s.get("count"):
            continue
        lines.append(f"  {name:<12}{s['mean']:>9.2f}{s['p50']:>9.2f}{s['p90']:>9.2f}{s['p99']:>9.2f}{s['max']:>9.2f}")
    if "non_inference_share" in report:
        lines.append(f"  work per fused frame, as a share of the frame time ({report['frame_time_ms']:.1f} ms): inference "
                     f"{100 * report['inference_share']:.0f}%, everything else "
                     f"{100 * report['non_inference_share']:.0f}% (stages overlap in their own threads)")
    counters = report["counters"]
    interesting = {k: v for k, v in counters.items() if k != "frames_out" and v}
    if interesting:
        lines.append("  " + ", ".join(f"{k}: {v}" for k, v in sorted(interesting.items())))
    return "\n".join(lines)
