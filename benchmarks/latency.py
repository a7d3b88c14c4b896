"""Latency tooling of `fusion bench` and `benchmarks/student_speed.py`: a torch runner, ORT's per-op profile and the
real input frame. The timing itself (warm-up, interleaved rounds, p50/p90/p99) is `runtime.timing`'s and the
parameter/MAC counts are `distill.cost`'s, shared with `fusion distill profile` and the INT8 export; the plain ONNX
export they time is `distill.eval_profile.export_for_timing`, the one `fusion distill profile` times.

    from runtime.timing import ort_runner, ort_session, time_interleaved
    from benchmarks.latency import real_feeds
    from distill.eval_profile import export_for_timing
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Dict, Mapping

import numpy as np

from runtime.timing import ort_runner, ort_session

__all__ = ["torch_runner", "set_torch_threads", "ort_op_profile", "format_op_profile",
           "fmt_ms", "default_data_dir", "real_feeds"]


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

