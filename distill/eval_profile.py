"""A student's cost: params, GMACs and ONNX Runtime CPU latency, beside a peer's latency measured in the same run
(`fusion distill profile`, and the profile of `fusion distill eval`). Params and GMACs are distill.cost's, timing is
runtime.timing's; export_for_timing is the plain ONNX export every latency of a model is measured on (fusion bench and
benchmarks/student_speed time through it too).

    from distill.eval_profile import format_profile, profile_student
    print(format_profile(profile_student(model, 480, 640, threads=2)))
"""
from __future__ import annotations

import copy
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from runtime.errors import require


def export_for_timing(model, path: str | os.PathLike, imgsz: tuple[int, int], vis_channels: int = 1,
                      opset: int = 17, dynamic: bool = False) -> Path:
    """An ONNX (inputs `ir`, `vis`, output `fused`; static at imgsz, or free N/H/W with `dynamic`) of any model with
    forward(ir, vis), for timing; the model itself is left as it was (a copy is exported, on the CPU).

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


def ort_latency_ms(onnx_path: Path, height: int, width: int, threads: int = 2, runs: int = 30, warmup: int = 5,
                   channels: int = 1) -> Dict[str, float]:
    """Median / p90 wall time of one ONNX Runtime CPU inference at (height, width) (runtime.timing)."""
    require("onnxruntime", "timing with ONNX Runtime")
    from runtime.timing import ort_runner, ort_session, time_callable
    session = ort_session(onnx_path, threads, spinning=True)   # timed alone, one model at a time
    stats = time_callable(ort_runner(session, _random_feeds(height, width, channels)), runs=runs, warmup=warmup)
    return {"median_ms": stats.p50_ms, "p90_ms": stats.p90_ms, "runs": runs}


def _random_feeds(height: int, width: int, channels: int = 1) -> Dict[str, np.ndarray]:
    """Fixed (seeded) `ir` (1, 1, H, W) and `vis` (1, channels, H, W) inputs in [0, 1)."""
    rng = np.random.default_rng(0)
    return {"ir": rng.random((1, 1, height, width), dtype=np.float32),
            "vis": rng.random((1, channels, height, width), dtype=np.float32)}


def profile_student(model, height: int = 480, width: int = 640, threads: int = 2, runs: int = 30,
                    peer: Optional[str] = "seafusion", peer_runs: int = 5) -> Dict[str, float]:
    """Params, GMACs and ONNX Runtime CPU latency of `model`; with `peer`, the peer's latency measured in the same
    run and the speed ratio: `runs` student and `peer_runs` peer calls interleaved by runtime.timing.time_interleaved
    (the peer's calls spread over the student's), so a burst of load hits both alike."""
    import torch

    from distill.cost import count_macs, count_params
    from runtime.timing import ort_runner, ort_session, time_interleaved
    require("onnxruntime", "timing with ONNX Runtime")
    torch.set_num_threads(max(1, threads))
    result: Dict[str, float] = {"params": count_params(model), **count_macs(model, height, width),
                                "height": height, "width": width, "threads": threads}
    channels = model.config.vis_channels
    with tempfile.TemporaryDirectory() as tmp:
        student_onnx = export_for_timing(model, Path(tmp) / "student.onnx", (height, width), channels,
                                         dynamic=True)
        if peer:
            try:
                from distill.peers import create_peer
                peer_model = create_peer(peer)
            except (ImportError, KeyError) as exc:
                print(f"peer '{peer}' unavailable ({exc}); no speed ratio", file=sys.stderr)
                peer = None
        if not peer:
            result.update({f"ort_{k}": v for k, v in ort_latency_ms(student_onnx, height, width, threads, runs,
                                                                      channels=channels).items()})
            return result
        peer_onnx = export_for_timing(peer_model, Path(tmp) / "peer.onnx", (height, width), dynamic=True)
        runners = {"student": ort_runner(ort_session(student_onnx, threads), _random_feeds(height, width, channels)),
                   "peer": ort_runner(ort_session(peer_onnx, threads), _random_feeds(height, width))}
        stats = time_interleaved(runners, runs={"student": runs, "peer": peer_runs},
                                 warmup={"student": 5, "peer": 1})
        result["ort_median_ms"] = stats["student"].p50_ms
        result["peer"] = peer
        result["peer_ort_median_ms"] = stats["peer"].p50_ms
        result["speedup_vs_peer"] = result["peer_ort_median_ms"] / result["ort_median_ms"]
        result["peer_params"] = count_params(peer_model)
    return result


def format_profile(p: Dict[str, float]) -> str:
    lines = [f"params {p['params'] / 1e6:.3f} M, {p['gmacs']:.3f} GMACs at {p['width']}x{p['height']} "
             f"(thop convs/linear {p['thop_gmacs']:.3f} + attention matmuls)",
             f"ONNX Runtime CPU, {p['threads']} threads: median {p['ort_median_ms']:.2f} ms"]
    if "peer" in p:
        lines.append(f"{p['peer']} peer (random weights, same run): median {p['peer_ort_median_ms']:.1f} ms -> "
                     f"student is {p['speedup_vs_peer']:.1f}x faster")
    return "\n".join(lines)
