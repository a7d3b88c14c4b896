"""How much the pipeline costs beyond the model: bare inference speed vs the full `fusion run` on the demo clips.

    python -m runtime.measure [--model runtime/models/default/model.onnx] [--threads 2] [--repeats 3]

For each repeat, measured back to back on the same machine (so a busy shared machine slows both alike):
  1. bare: ONNX Runtime alone on one real 640x480 frame pair, in a loop (median ms -> frames/s);
  2. pipeline: `fusion run` headless on the bundled clips (decode both videos, pair 9 fps IR with 30 fps VIS,
     AGC/resize/YCbCr, inference, chroma restored, mp4 encode) with --stats.
Prints, per repeat and as medians: bare fps, pipeline fps, pipeline/bare, and the share of the frame time spent
outside inference (work per frame from --stats). Writes everything as JSON with --out.
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

SAMPLES = Path(__file__).resolve().parent / "assets" / "samples"


def cpu_seconds() -> float:
    """CPU time of this process, all threads (ONNX Runtime's workers included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bare_inference(backend, size_hw, iterations: int = 60) -> tuple[float, float]:
    """(median wall ms, mean CPU ms) of one inference on a real 480x640 frame of the demo clip."""
    import cv2

    from runtime.color import split_luminance
    from runtime.imageio import vis_to_float
    capture = cv2.VideoCapture(str(SAMPLES / "vis.mp4"))
    ok, frame = capture.read()
    capture.release()
    rgb = cv2.cvtColor(cv2.resize(frame, (size_hw[1], size_hw[0])), cv2.COLOR_BGR2RGB)
    y, _ = split_luminance(vis_to_float(rgb))
    vis = np.ascontiguousarray(y[None, None], dtype=np.float32)
    ir = np.ascontiguousarray(1.0 - vis)
    for _ in range(5):
        backend.infer(ir, vis)
    times = []
    cpu_start = cpu_seconds()
    for _ in range(iterations):
        start = time.perf_counter()
        backend.infer(ir, vis)
        times.append(time.perf_counter() - start)
    cpu_ms = (cpu_seconds() - cpu_start) / iterations * 1000.0
    return float(np.median(times) * 1000.0), cpu_ms


def pipeline_run(backend, out_dir: Path) -> tuple[dict, float]:
    """(the --stats report, CPU ms per fused frame) of the whole pipeline on the demo clips."""
    from runtime.pipeline import FusionPipeline
    pipeline = FusionPipeline(ir=str(SAMPLES / "ir.mp4"), vis=str(SAMPLES / "vis.mp4"), backend=backend,
                              imgsz="480x640", headless=True, outputs=[str(out_dir / "fused.mp4")], verbose=False)
    cpu_start = cpu_seconds()
    report = pipeline.run()
    return report, (cpu_seconds() - cpu_start) / max(report["frames"], 1) * 1000.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    from runtime.backends import create_backend
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            backend = create_backend(args.model, "onnxruntime", args.threads, "cpu")
            bare_ms, bare_cpu_ms = bare_inference(backend, (480, 640))
            report, pipeline_cpu_ms = pipeline_run(backend, Path(tmp))
            row = {"bare_ms": round(bare_ms, 2), "bare_fps": round(1000.0 / bare_ms, 2),
                   "bare_cpu_ms": round(bare_cpu_ms, 2), "pipeline_cpu_ms": round(pipeline_cpu_ms, 2),
                   "cpu_outside_inference_share": round(1.0 - bare_cpu_ms / pipeline_cpu_ms, 4),
                   "pipeline_fps": report["fps"], "frames": report["frames"],
                   "pipeline_over_bare": round(report["fps"] * bare_ms / 1000.0, 3),
                   "non_inference_share": report.get("non_inference_share"),
                   "non_inference_ms": report.get("non_inference_ms"),
                   "work_per_frame_ms": report.get("work_per_frame_ms"),
                   "latency_p50_ms": report["latency_ms"].get("p50"),
                   "latency_p99_ms": report["latency_ms"].get("p99")}
            rows.append(row)
            print(f"repeat {repeat + 1}: bare {row['bare_fps']:.1f} fps ({bare_ms:.1f} ms), pipeline "
                  f"{row['pipeline_fps']:.1f} fps ({row['frames']} frames) = {100 * row['pipeline_over_bare']:.0f}% "
                  f"of bare; outside inference {row['non_inference_ms']:.1f} ms/frame = "
                  f"{100 * (row['non_inference_share'] or 0):.0f}% of the frame time; CPU per frame: model "
                  f"{bare_cpu_ms:.1f} ms, pipeline {pipeline_cpu_ms:.1f} ms -> "
                  f"{100 * row['cpu_outside_inference_share']:.0f}% outside inference", flush=True)
    summary = {key: float(np.median([r[key] for r in rows])) for key in
               ("bare_fps", "pipeline_fps", "pipeline_over_bare", "non_inference_share", "non_inference_ms",
                "bare_cpu_ms", "pipeline_cpu_ms", "cpu_outside_inference_share", "latency_p50_ms", "latency_p99_ms")}
    print("median: " + ", ".join(f"{k} {v:.3g}" for k, v in summary.items()))
    if args.out:
        from runtime.imageio import write_json
        write_json(args.out, {"model": args.model, "threads": args.threads, "repeats": rows, "median": summary})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
