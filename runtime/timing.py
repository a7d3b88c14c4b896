"""Timing models, owned once: `fusion distill profile`, the INT8 export's speed check and `fusion bench` all time
ONNX Runtime (or any callable) with these, so their numbers are measured the same way.

    from runtime.timing import ort_runner, ort_session, time_callable, time_interleaved
    session = ort_session("model.onnx", threads=2)
    stats = time_callable(ort_runner(session, feeds), runs=30, warmup=5)      # stats.p50_ms, stats.p90_ms
    stats = time_interleaved({"student": run_student, "peer": run_peer}, runs={"student": 50, "peer": 5})

Rules every number here follows, because the machines it runs on are shared and noisy:
- warm-up runs are discarded (first-call allocation, kernel selection, lazy initialisation);
- models compared in one table are timed interleaved, round by round, so a burst of background load hits all of them
  alike and the *ratios* stay meaningful even when the absolute milliseconds wander;
- latency is reported as percentiles (p50/p90/p99) of single-frame (batch 1) calls, FPS as 1000 / p50.

Part of the shared core (numpy only at import; onnxruntime is imported when a session is made).
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Mapping, Sequence

import numpy as np

__all__ = ["LatencyStats", "summarize", "schedule_rounds", "time_callable", "time_interleaved", "ort_session",
           "ort_runner"]


@dataclass
class LatencyStats:
    """Percentiles of per-call wall time, in milliseconds."""

    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float

    @property
    def fps(self) -> float:
        return 1000.0 / self.p50_ms if self.p50_ms > 0 else float("inf")

    def to_dict(self) -> dict:
        return {**asdict(self), "fps": self.fps}


def summarize(times_ms: Sequence[float]) -> LatencyStats:
    """LatencyStats of a list of per-call times (ms). Percentiles interpolate linearly (numpy's default)."""
    if not len(times_ms):
        raise ValueError("no timed runs to summarise")
    t = np.asarray(times_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    return LatencyStats(runs=int(t.size), p50_ms=float(p50), p90_ms=float(p90), p99_ms=float(p99),
                        mean_ms=float(t.mean()), min_ms=float(t.min()))


def schedule_rounds(runs: Mapping[str, int]) -> list[list[str]]:
    """Rounds of calls: a model with fewer runs is spread evenly over the rounds (not bunched at the start), so a
    slow peer timed 5 times and a fast student timed 50 times still see the same stretch of machine load. Models
    with equal counts are called once a round, in the order given."""
    rounds = max(runs.values()) if runs else 0
    slots: list[list[str]] = [[] for _ in range(rounds)]
    for name, count in runs.items():
        if count <= 0:
            continue
        for index in np.linspace(0, rounds - 1, count).round().astype(int):
            slots[int(index)].append(name)
    return slots


def time_callable(fn: Callable[[], object], runs: int = 30, warmup: int = 3, max_seconds: float | None = None,
                  min_runs: int = 3, clock: Callable[[], float] = time.perf_counter) -> LatencyStats:
    """Call `fn` `warmup` times untimed, then up to `runs` times timed (stopping early once `max_seconds` of timed
    calls have passed, but never before `min_runs`)."""
    return time_interleaved({"fn": fn}, runs={"fn": runs}, warmup=warmup, max_seconds=max_seconds,
                            min_runs=min_runs, clock=clock)["fn"]


def time_interleaved(fns: Mapping[str, Callable[[], object]], runs: int | Mapping[str, int] = 30,
                     warmup: int | Mapping[str, int] = 3, max_seconds: float | None = None,
                     min_runs: int = 3, clock: Callable[[], float] = time.perf_counter) -> Dict[str, LatencyStats]:
    """Time several callables round-robin (see module docstring). `runs` and `warmup`: one count for all, or one
    per name. Warm-up is round-robin too: each round calls every name that still has warm-up calls left.

    max_seconds bounds the whole timed phase: once exceeded, each callable stops as soon as it has `min_runs`.
    `clock`: seconds, monotonic (a test passes its own).
    """
    counts = {name: int(runs[name] if isinstance(runs, Mapping) else runs) for name in fns}
    warmups = {name: int(warmup[name] if isinstance(warmup, Mapping) else warmup) for name in fns}
    for round_ in range(max([0, *warmups.values()])):
        for name, fn in fns.items():
            if round_ < warmups[name]:
                fn()
    times: Dict[str, list[float]] = {name: [] for name in fns}
    started = clock()
    for names in schedule_rounds(counts):
        over = max_seconds is not None and clock() - started > max_seconds
        for name in names:
            if over and len(times[name]) >= min_runs:
                continue
            t0 = clock()
            fns[name]()
            times[name].append((clock() - t0) * 1000.0)
        if over and all(len(t) >= min(min_runs, counts[n]) for n, t in times.items()):
            break
    return {name: summarize(t) for name, t in times.items()}


def ort_session(path: str | os.PathLike, threads: int = 2, providers: Sequence | None = None,
                profile_prefix: str | os.PathLike | None = None, spinning: bool = False):
    """An ONNX Runtime session with a fixed intra-op thread count and one inter-op thread (default: CPU provider).
    `profile_prefix`: record ORT's per-node profile. `spinning`: let idle intra-op workers spin-wait (off by default:
    with interleaved timing a spinning session steals the cores of the next model timed, and of everyone else's jobs
    on a shared machine; measured here: spinning made torch 30x slower in between)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options,
                                providers=list(providers or ["CPUExecutionProvider"]))


def ort_runner(session, feeds: Mapping[str, np.ndarray]) -> Callable[[], object]:
    """A no-argument callable running the session once on fixed feeds (cast to the input types it declares) for
    its first output."""
    declared = {i.name: i for i in session.get_inputs()}
    fixed = {}
    for name, value in feeds.items():
        if name not in declared:
            continue
        dtype = np.float16 if "float16" in declared[name].type else np.float32
        fixed[name] = np.ascontiguousarray(value, dtype=dtype)
    output = session.get_outputs()[0].name

    def run():
        return session.run([output], fixed)
    return run
