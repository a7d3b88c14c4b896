"""`fusion bench`: latency and quality of every available backend of the student, beside its peers and teacher.

    fusion bench --quick                                   # under two minutes on a laptop CPU
    fusion bench                                           # 640x480 and 512x512, all backends present here
    fusion bench --imgsz 480x640 --backends onnxruntime onnxruntime-int8 --json bench.json --target-ms 30
    fusion bench --weights runs/x/best --plot latency_quality.png

Prints one Markdown table; writes results.md, results.json (the list of rows), latency_quality.png and the
resolved config.yaml under --out (default runs/bench). Heavy imports happen in the handler.
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path

from runtime.errors import FusionError

BACKEND_CHOICES = ("torch", "onnxruntime", "onnxruntime-int8", "onnxruntime-cuda", "torch-cuda", "torch-cuda-fp16",
                   "torch-cuda-graph", "tensorrt-fp16", "tensorrt-int8")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = textwrap.fill("Benchmark the student on every backend and precision available here (torch, ONNX Runtime "
                          "fp32/INT8 on the CPU, ONNX Runtime CUDA, TensorRT fp16/INT8) at each --imgsz, beside the "
                          "SeAFusion and DenseFuse peers, with quality on test pairs, the teacher's cost and the "
                          "runtime pipeline end to end. Only measurements are printed; rows that cannot run here "
                          "are left out with a note saying why.", width=100)
    parser.epilog = __doc__.split("\n\n")[1]
    model = parser.add_argument_group("model")
    model.add_argument("--weights", default=None, help="student folder or 'default' (runtime/models/default; a "
                       "random-weight nano is timed, with a note, when it is not installed)")
    model.add_argument("--variant", default=None, help="time a random-weight student of this variant instead "
                       "(latency only)")
    model.add_argument("--onnx", default=None, help="ONNX file for the ONNX Runtime rows (default: the shipped "
                       "model.onnx if it takes any size, else exported from the weights)")
    run = parser.add_argument_group("what to measure")
    run.add_argument("--imgsz", nargs="+", default=None, metavar="HxW",
                     help="input sizes, height x width (default: 480x640 512x512, i.e. 640x480 and 512x512)")
    run.add_argument("--backends", nargs="+", default=None, choices=BACKEND_CHOICES, metavar="BACKEND",
                     help=f"subset of: {', '.join(BACKEND_CHOICES)} (default: all; absent ones are noted)")
    run.add_argument("--threads", type=int, default=None, help="CPU threads for torch and ONNX Runtime (default 2)")
    run.add_argument("--runs", type=int, default=None, help="timed runs per student row (default 50)")
    run.add_argument("--warmup", type=int, default=None, help="untimed warm-up runs per student row (default 5)")
    run.add_argument("--peer-runs", type=int, default=None, help="timed runs per peer row (default 5)")
    run.add_argument("--peers", nargs="*", default=None, choices=("seafusion", "densefuse"), metavar="PEER",
                     help="peer baselines to time (default: seafusion densefuse; none: --peers with no name)")
    run.add_argument("--data", default=None, help="dataset folder with ir/, vi/, train.txt, test.txt "
                     "(default: $FUSION_DATA or ../shared/data/roadscene)")
    run.add_argument("--quality-count", type=int, default=None, help="test pairs for the quality columns "
                     "(default 10; 0: no quality)")
    run.add_argument("--teachers", nargs="*", default=None, choices=("em", "ddfm"), metavar="TEACHER",
                     help="teacher costs to measure (default: em ddfm; none: --teachers with no name)")
    run.add_argument("--teacher-count", type=int, default=None, help="test pairs the em teacher fuses (default 2)")
    run.add_argument("--ddfm-prior", default=None, help="DDFM prior folder (default: a tiny random prior, timing "
                     "only)")
    run.add_argument("--calib-count", type=int, default=None, help="training pairs calibrating INT8 (default 32)")
    run.add_argument("--no-e2e", dest="e2e", action="store_false", default=None,
                     help="skip the runtime pipeline on the sample clips")
    run.add_argument("--e2e-frames", type=int, default=None, help="fused frames per end-to-end run (default 60)")
    run.add_argument("--clips", default=None, help="folder with ir.mp4 + vis.mp4 (default runtime/assets/samples)")
    run.add_argument("--quick", action="store_true", default=None,
                     help="one resolution, fewer runs and pairs: under two minutes on a CPU")
    out = parser.add_argument_group("report")
    out.add_argument("--target-ms", type=float, default=None, help="latency target each row is marked against "
                     "(default 30)")
    out.add_argument("--plot-metric", default=None, help="quality metric on the plot's y axis (default Qabf)")
    out.add_argument("--out", default=None, help="folder for results.md/.json, the plot and config.yaml "
                     "(default runs/bench)")
    out.add_argument("--json", default=None, metavar="FILE", help="also write the rows (a JSON list) here")
    out.add_argument("--plot", default=None, metavar="FILE", help="write the latency-vs-quality PNG here "
                     "(default OUT/latency_quality.png)")
    parser.add_argument("--config", default=None, help="YAML with any of these settings (flags override it)")
    parser.set_defaults(func=run_bench)


def _parse_imgsz(items) -> list:
    out = []
    for text in items:
        parts = str(text).lower().replace(",", "x").split("x")
        try:
            values = [int(p) for p in parts if p.strip()]
        except ValueError:
            raise FusionError(f"--imgsz must look like HxW (for example 480x640), got '{text}'") from None
        if len(values) == 1:
            values *= 2
        if len(values) != 2 or min(values) < 16:
            raise FusionError(f"--imgsz must be HxW with both sides at least 16 pixels, got '{text}'")
        out.append(values)
    return out


def build_config(args: argparse.Namespace):
    """BenchConfig from --config (if any) with every flag that was given on top."""
    from benchmarks.bench import BenchConfig
    from runtime.config import load_config
    cfg = load_config(BenchConfig, args.config)
    for key in ("weights", "variant", "onnx", "backends", "threads", "runs", "warmup", "peer_runs", "peers", "data",
                "quality_count", "teachers", "teacher_count", "ddfm_prior", "calib_count", "e2e", "e2e_frames",
                "clips", "quick", "target_ms", "plot_metric", "out", "json", "plot"):
        value = getattr(args, key, None)
        if value is not None:
            setattr(cfg, key, value)
    if args.imgsz is not None:
        cfg.imgsz = _parse_imgsz(args.imgsz)
    for key in ("threads", "runs", "peer_runs"):
        if getattr(cfg, key) < 1:
            raise FusionError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(cfg, key)}")
    return cfg


def run_bench(args: argparse.Namespace) -> int:
    # Before torch loads OpenMP: idle OpenMP workers that spin (the default) turn a loaded or shared CPU into a
    # lottery (measured here: 0.15 s -> 12 s per forward pass); passive waiting costs ~nothing on a quiet machine.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from benchmarks.bench import run_benchmark
    from benchmarks.report import json_rows, markdown_table, plot_latency_quality, write_json
    from runtime.config import save_config
    from runtime.imageio import write_text
    cfg = build_config(args)
    result = run_benchmark(cfg)
    table = markdown_table(result)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "results.md", table)
    rows = json_rows(result)
    write_json(out / "results.json", rows)
    write_json(out / "summary.json", {"rows": rows, "teacher": result.teacher, "e2e": result.e2e,
                                      "notes": result.notes, "machine": result.machine, "config": result.config,
                                      "seconds": result.seconds})
    if cfg.json:
        write_json(cfg.json, rows)
    plot = Path(cfg.plot) if cfg.plot else out / "latency_quality.png"
    plot_latency_quality(result, plot, cfg.plot_metric)
    save_config(cfg, out / "config.yaml")
    sys.stdout.write(table)
    print(f"\nwritten: {out / 'results.md'}, {out / 'results.json'}, {plot}"
          + (f", {cfg.json}" if cfg.json else ""), file=sys.stderr)
    return 0
