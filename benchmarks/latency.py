"""Latency measurement shared by `fusion bench` and `benchmarks/student_speed.py` (params and GMACs: distill.cost).

    from benchmarks.latency import time_interleaved
    stats = time_interleaved({"student": run_student, "seafusion": run_peer}, runs={"student": 50, "seafusion": 5})
    stats["student"].p50_ms, stats["student"].fps

Rules every number here follows, because the machines it runs on are shared and noisy:
- warm-up runs are discarded (first-call allocation, kernel selection, lazy initialisation);
- models compared in one table are timed interleaved, round by round, so a burst of background load hits all of them
  alike and the *ratios* stay meaningful even when the absolute milliseconds wander;
- latency is reported as percentiles (p50/p90/p99) of single-frame (batch 1) calls, FPS as 1000 / p50.
"""
from __future__ import annotations

import copy
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Mapping, Sequence

import numpy as np

__all__ = ["LatencyStats", "summarize", "time_callable", "time_interleaved", "export_onnx_for_bench", "ort_session",
           "ort_runner", "torch_runner", "set_torch_threads"]


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


def time_callable(fn: Callable[[], object], runs: int = 30, warmup: int = 3,
                  max_seconds: float | None = None, min_runs: int = 3) -> LatencyStats:
    """Call `fn` `warmup` times untimed, then up to `runs` times timed (stopping early once `max_seconds` of timed
    calls have passed, but never before `min_runs`)."""
    return time_interleaved({"fn": fn}, runs={"fn": runs}, warmup=warmup, max_seconds=max_seconds,
                            min_runs=min_runs)["fn"]


def _schedule(runs: Mapping[str, int]) -> list[list[str]]:
    """Rounds of calls: a model with fewer runs is spread evenly over the rounds (not bunched at the start), so a
    slow peer timed 5 times and a fast student timed 50 times still see the same stretch of machine load."""
    rounds = max(runs.values()) if runs else 0
    slots: list[list[str]] = [[] for _ in range(rounds)]
    for name, count in runs.items():
        if count <= 0:
            continue
        for index in np.linspace(0, rounds - 1, count).round().astype(int):
            slots[int(index)].append(name)
    return slots


def time_interleaved(fns: Mapping[str, Callable[[], object]], runs: int | Mapping[str, int] = 30,
                     warmup: int | Mapping[str, int] = 3, max_seconds: float | None = None,
                     min_runs: int = 3) -> Dict[str, LatencyStats]:
    """Time several callables round-robin (see module docstring). `runs` and `warmup`: one count for all, or one
    per name.

    max_seconds bounds the whole timed phase: once exceeded, each callable stops as soon as it has `min_runs`.
    """
    counts = {name: int(runs[name] if isinstance(runs, Mapping) else runs) for name in fns}
    warmups = {name: int(warmup[name] if isinstance(warmup, Mapping) else warmup) for name in fns}
    for name, fn in fns.items():
        for _ in range(max(warmups[name], 0)):
            fn()
    times: Dict[str, list[float]] = {name: [] for name in fns}
    started = time.perf_counter()
    for names in _schedule(counts):
        over = max_seconds is not None and time.perf_counter() - started > max_seconds
        for name in names:
            if over and len(times[name]) >= min_runs:
                continue
            t0 = time.perf_counter()
            fns[name]()
            times[name].append((time.perf_counter() - t0) * 1000.0)
        if over and all(len(t) >= min(min_runs, counts[n]) for n, t in times.items()):
            break
    return {name: summarize(t) for name, t in times.items()}


# ---------------------------------------------------------------------------------------------------- runners
def set_torch_threads(threads: int) -> None:
    import torch
    torch.set_num_threads(max(1, int(threads)))


def torch_runner(model, feeds: Mapping[str, np.ndarray], device: str = "cpu", half: bool = False) -> Callable[[], object]:
    """A no-argument callable running one forward pass of a torch model on fixed inputs (synchronised on CUDA so the
    time covers the work, not just the launch)."""
    import torch
    model = model.to(device).eval()
    dtype = torch.float16 if half else torch.float32
    if half:
        model = model.half()
    ir = torch.from_numpy(np.ascontiguousarray(feeds["ir"])).to(device=device, dtype=dtype)
    vis = torch.from_numpy(np.ascontiguousarray(feeds["vis"])).to(device=device, dtype=dtype)
    cuda = device.startswith("cuda")

    def run():
        with torch.inference_mode():
            out = model(ir, vis)
        if cuda:
            torch.cuda.synchronize()
        return out
    return run


def export_onnx_for_bench(model, path: str | os.PathLike, imgsz: tuple[int, int], vis_channels: int = 1,
                          opset: int = 17, dynamic: bool = False) -> Path:
    """An ONNX (inputs `ir`, `vis`, output `fused`; static at imgsz, or free N/H/W with `dynamic`) of any model with
    forward(ir, vis), for timing.

    Students go through export/ (`fusion export`) when they ship; this plain export exists so peers and candidate
    students are timed in the very same runtime as the shipped model.
    """
    import torch
    path = Path(path)
    h, w = imgsz
    example = (torch.rand(1, 1, h, w), torch.rand(1, vis_channels, h, w))
    model = copy.deepcopy(model).cpu().eval()
    kwargs = {"dynamo": False} if "dynamo" in torch.onnx.export.__code__.co_varnames else {}
    if dynamic:
        axes = {0: "N", 2: "H", 3: "W"}
        kwargs["dynamic_axes"] = {name: axes for name in ("ir", "vis", "fused")}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, example, str(path), input_names=["ir", "vis"], output_names=["fused"],
                          opset_version=opset, do_constant_folding=True, **kwargs)
    return path


def ort_session(path: str | os.PathLike, threads: int = 2, providers: Sequence | None = None,
                profile_prefix: str | os.PathLike | None = None):
    """An ONNX Runtime session with a fixed intra-op thread count (default: CPU provider). `profile_prefix`: record
    ORT's per-node profile (read it with `ort_op_profile`)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Interleaved timing: a session whose idle workers spin-wait would steal the cores of the next model timed
    # (and of everyone else's jobs on a shared machine). Measured here: spinning made torch 30x slower in between.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options,
                                providers=list(providers or ["CPUExecutionProvider"]))


def ort_runner(session, feeds: Mapping[str, np.ndarray]) -> Callable[[], object]:
    """A no-argument callable running the session once on fixed feeds (cast to the input types it declares)."""
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


def ort_op_profile(path: str | os.PathLike, feeds: Mapping[str, np.ndarray], threads: int = 2, runs: int = 20,
                   warmup: int = 3) -> dict:
    """Where an ONNX model's time goes in ONNX Runtime on the CPU: kernel time per op type and per node, from ORT's
    own profiler (after graph optimisation, so fused ops and layout reorders show as ORT runs them).

    Returns {"runs", "kernel_ms" (sum of kernel times per run), "nodes" (kernels per run), "ops": [{op, ms, count,
    share}] by cost, "top_nodes": [{node, op, ms}] (the 15 dearest)}; ms are per run, warm-up runs left out. The
    kernel sum is not the latency: with several threads kernels overlap, and session overhead is not in it."""
    import json
    import tempfile
    from collections import defaultdict
    with tempfile.TemporaryDirectory(prefix="fusion-ortprof-") as work:
        session = ort_session(path, threads, profile_prefix=Path(work) / "profile")
        run = ort_runner(session, feeds)
        for _ in range(warmup + runs):
            run()
        events = json.loads(Path(session.end_profiling()).read_text())
    durations: dict = defaultdict(list)   # node -> kernel time of each run, in order
    node_op: dict = {}
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            durations[event["name"]].append(event["dur"])
            node_op[event["name"]] = event.get("args", {}).get("op_name", "?")
    per_node = {name: sum(d[warmup:]) / max(1, len(d) - warmup) for name, d in durations.items()}  # us per run
    per_op: dict = defaultdict(float)
    count: dict = defaultdict(int)
    for name, us in per_node.items():
        per_op[node_op[name]] += us
        count[node_op[name]] += 1
    total = sum(per_op.values()) or 1.0
    ops = [{"op": op, "ms": us / 1000, "count": count[op], "share": us / total}
           for op, us in sorted(per_op.items(), key=lambda item: -item[1])]
    top = [{"node": name[:-len("_kernel_time")], "op": node_op[name], "ms": us / 1000}
           for name, us in sorted(per_node.items(), key=lambda item: -item[1])[:15]]
    return {"runs": runs, "kernel_ms": total / 1000, "nodes": len(per_node), "ops": ops, "top_nodes": top}


def format_op_profile(profile: dict, top_ops: int = 12) -> str:
    """Markdown: kernel time per op type (and the dearest nodes) from `ort_op_profile`."""
    lines = [f"ONNX Runtime kernel time: {profile['kernel_ms']:.2f} ms per run in {profile['nodes']} kernels "
             f"({profile['runs']} runs profiled)", "", "| op | ms per run | kernels | share |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {o['op']} | {o['ms']:.2f} | {o['count']} | {100 * o['share']:.0f}% |" for o in profile["ops"][:top_ops]]
    lines += ["", "| dearest nodes | op | ms per run |", "| --- | --- | ---: |"]
    lines += [f"| {n['node']} | {n['op']} | {n['ms']:.3f} |" for n in profile["top_nodes"]]
    return "\n".join(lines)


def fmt_ms(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def default_data_dir() -> Path:
    """$FUSION_DATA, else ../shared/data/roadscene beside the repository."""
    env = os.environ.get("FUSION_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "roadscene"


def real_feeds(imgsz: tuple[int, int], data: str | os.PathLike | None = None, split: str = "train",
               vis_channels: int = 1) -> tuple[Dict[str, np.ndarray], str]:
    """One real pair resized (cover + centre crop, no stretching) to imgsz (H, W) as {'ir', 'vis'} (1, C, H, W)
    float32 feeds, and where it came from. Latency barely depends on content, but a real frame keeps INT8 and
    fp16 paths honest. Falls back to uniform noise, saying so, when the dataset is absent (a fresh machine)."""
    import cv2

    from runtime.color import luminance
    from runtime.imageio import discover_pairs, read_names, read_pair
    h, w = imgsz
    root = Path(data) if data else default_data_dir()
    names_file = root / f"{split}.txt"
    if root.is_dir() and names_file.is_file():
        pair = discover_pairs(root, names=read_names(names_file)[:1])[0]
        ir, vis = read_pair(pair)
        if vis_channels == 1 and vis.ndim == 3:
            vis = luminance(vis)
        elif vis_channels == 3 and vis.ndim == 2:
            vis = np.repeat(vis[..., None], 3, axis=2)

        def fit(img):
            scale = max(h / img.shape[0], w / img.shape[1])
            nh, nw = max(h, round(img.shape[0] * scale)), max(w, round(img.shape[1] * scale))
            img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
            top, left = (nh - h) // 2, (nw - w) // 2
            return img[top:top + h, left:left + w]
        ir, vis = fit(ir), fit(vis)
        vis_chw = vis[None] if vis.ndim == 2 else vis.transpose(2, 0, 1)
        return ({"ir": np.ascontiguousarray(ir[None, None], dtype=np.float32),
                 "vis": np.ascontiguousarray(vis_chw[None], dtype=np.float32)},
                f"{split} pair {pair.name} resized to {h}x{w}")
    rng = np.random.default_rng(0)
    return ({"ir": rng.random((1, 1, h, w), dtype=np.float32), "vis": rng.random((1, vis_channels, h, w),
                                                                                 dtype=np.float32)},
            f"uniform noise {h}x{w} (no dataset at {root})")

