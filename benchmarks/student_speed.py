"""Is a student fast enough? Params, GMACs and ONNX Runtime CPU latency beside the SeAFusion peer, in one run.

    .venv/bin/python -m benchmarks.student_speed                         # the default student (or a random nano)
    .venv/bin/python -m benchmarks.student_speed --variant small --runs 50
    .venv/bin/python -m benchmarks.student_speed --weights runs/x/best --json /tmp/speed.json
    .venv/bin/python -m benchmarks.student_speed --variant nano2 --ops   # + ORT's kernel time per op and node

    from benchmarks.student_speed import measure_student_speed, format_report
    report = measure_student_speed(create_student("nano", width=0.75))   # while designing a model
    print(format_report(report))

Both networks are exported to ONNX (opset 17, static 480x640 by default) and timed in ONNX Runtime on the CPU with
the same thread count, interleaved, so the speed-up ratio is measured side by side. The goals (issue 4): at least
20x faster than SeAFusion, at most 30 ms, 1.5 GMACs and 1 M parameters at 640x480.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from benchmarks.common import load_average
from export.onnx_export import static_input_size

GOALS = {"speedup_min": 20.0, "latency_ms_max": 30.0, "gmacs_max": 1.5, "params_max": 1_000_000}


def _resolve_student(weights: str | None, variant: str | None):
    """(model, label, note). weights wins; else variant; else the shipped default, else a random nano."""
    from distill.models import create_student, load_student
    if weights:
        model = load_student(weights)
        return model, f"student {model.config.variant} ({weights})", ""
    if variant:
        return create_student(variant).eval(), f"student {variant} (random weights)", ""
    try:
        model = load_student("default")
        return model, f"student {model.config.variant} (default)", ""
    except Exception as exc:  # noqa: BLE001 - any reason the default is unusable: fall back, and say why
        return (create_student("nano").eval(), "student nano (random weights)",
                f"the default student could not be loaded ({exc}); timing a random-weight nano instead")


def _shipped_onnx(imgsz) -> Path | None:
    """runtime/models/default/model.onnx when it takes imgsz (dynamic, or static at that size), else None."""
    from distill.models import default_model_dir
    path = default_model_dir() / "model.onnx"
    if not path.is_file():
        return None
    size = static_input_size(path)
    return path if size is None or tuple(size) == tuple(imgsz) else None


def measure_student_speed(model=None, weights: str | None = None, variant: str | None = None,
                          onnx_path: str | os.PathLike | None = None, imgsz: tuple[int, int] = (480, 640),
                          threads: int = 2, runs: int = 30, peer: str = "seafusion", peer_runs: int = 5,
                          warmup: int = 2, data: str | os.PathLike | None = None, ops: bool = False) -> dict:
    """Measure one student against a peer; see the module docstring. `model` (a torch module) wins over `weights`
    and `variant`. `onnx_path`: time this ONNX file for the student instead of exporting it (e.g. the shipped
    runtime/models/default/model.onnx; it must have static or dynamic inputs compatible with imgsz)."""
    from benchmarks.latency import ort_op_profile, real_feeds, set_torch_threads
    from distill.cost import count_macs, count_params
    from distill.eval_profile import export_for_timing
    from runtime.timing import ort_runner, ort_session, time_interleaved
    from distill.peers import PEER_PAPERS, create_peer
    set_torch_threads(threads)
    load_start = load_average()
    note = ""
    if model is None:
        model, label, note = _resolve_student(weights, variant)
    else:
        label = f"student {getattr(getattr(model, 'config', None), 'variant', type(model).__name__)}"
    model = model.eval()
    if onnx_path is None and label.endswith("(default)"):
        onnx_path = _shipped_onnx(imgsz)
    vis_channels = int(getattr(getattr(model, "config", None), "vis_channels", 1))
    peer_model = create_peer(peer)
    feeds, source = real_feeds(imgsz, data=data, vis_channels=vis_channels)
    peer_feeds = {"ir": feeds["ir"], "vis": feeds["vis"][:, :1]}
    with tempfile.TemporaryDirectory(prefix="fusion-speed-") as work:
        student_onnx = Path(onnx_path) if onnx_path else export_for_timing(model, Path(work) / "student.onnx",
                                                                           imgsz, vis_channels)
        peer_onnx = export_for_timing(peer_model, Path(work) / f"{peer}.onnx", imgsz, 1)
        sessions = {"student": ort_session(student_onnx, threads), peer: ort_session(peer_onnx, threads)}
        runners = {"student": ort_runner(sessions["student"], feeds), peer: ort_runner(sessions[peer], peer_feeds)}
        stats = time_interleaved(runners, runs={"student": runs, peer: peer_runs}, warmup=warmup)
        op_profile = ort_op_profile(student_onnx, feeds, threads, runs=max(10, runs // 2)) if ops else None
    student_ms, peer_ms = stats["student"].p50_ms, stats[peer].p50_ms
    macs = count_macs(model, *imgsz, vis_channels)
    report = {
        "imgsz": list(imgsz), "threads": threads, "input": source, "note": note,
        "load_avg": [load_start, load_average()],
        "student": {"label": label, "onnx": str(onnx_path) if onnx_path else "exported (opset 17)",
                    "params": count_params(model), "gmacs": macs["gmacs"], "thop_gmacs": macs["thop_gmacs"],
                    **stats["student"].to_dict()},
        "peer": {"name": peer, "paper": PEER_PAPERS[peer], "params": count_params(peer_model),
                 "gmacs": count_macs(peer_model, *imgsz, 1)["gmacs"], **stats[peer].to_dict()},
        "speedup": peer_ms / student_ms,
    }
    if op_profile is not None:
        report["op_profile"] = op_profile
    s = report["student"]
    report["goals"] = {
        f">= {GOALS['speedup_min']:g}x faster than {peer}": report["speedup"] >= GOALS["speedup_min"],
        f"<= {GOALS['latency_ms_max']:g} ms": student_ms <= GOALS["latency_ms_max"],
        f"<= {GOALS['gmacs_max']:g} GMACs": s["gmacs"] <= GOALS["gmacs_max"],
        f"<= {GOALS['params_max'] / 1e6:g} M params": s["params"] <= GOALS["params_max"],
    }
    return report


def format_report(report: dict) -> str:
    """A small Markdown table and the goal checklist."""
    from benchmarks.latency import fmt_ms
    h, w = report["imgsz"]
    s, p = report["student"], report["peer"]
    lines = [
        f"ONNX Runtime CPU, {report['threads']} threads, {w}x{h}, batch 1; input: {report['input']}; load average "
        f"{report['load_avg'][0]} -> {report['load_avg'][1]}",
        "",
        "| model | params | GMACs | p50 ms | p90 ms | runs | speed-up |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {s['label']} | {s['params'] / 1e6:.3f} M | {s['gmacs']:.3f} | {fmt_ms(s['p50_ms'])} | "
        f"{fmt_ms(s['p90_ms'])} | {s['runs']} | {report['speedup']:.1f}x |",
        f"| {p['name']} (random weights; {p['paper']}) | {p['params'] / 1e6:.3f} M | {p['gmacs']:.2f} | "
        f"{fmt_ms(p['p50_ms'])} | {fmt_ms(p['p90_ms'])} | {p['runs']} | 1.0x |",
        "",
    ]
    if s.get("thop_gmacs") is not None and s["thop_gmacs"] != s["gmacs"]:
        lines += [f"student GMACs: {s['thop_gmacs']:.3f} convs/linear (thop) + "
                  f"{s['gmacs'] - s['thop_gmacs']:.3f} cross-attention matmuls", ""]
    lines += [f"- [{'x' if ok else ' '}] {goal}" for goal, ok in report["goals"].items()]
    if report.get("note"):
        lines += ["", f"note: {report['note']}"]
    if report.get("op_profile"):
        from benchmarks.latency import format_op_profile
        lines += ["", format_op_profile(report["op_profile"])]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.student_speed", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--weights", default=None, help="student folder or 'default' (default: the shipped "
                        "default if present, else a random nano)")
    parser.add_argument("--variant", default=None, help="time a random-weight student of this registered variant")
    parser.add_argument("--onnx", default=None, help="time this ONNX file for the student (params/GMACs still come "
                        "from --weights/--variant)")
    parser.add_argument("--imgsz", default="480x640", help="HxW")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--runs", type=int, default=30, help="timed student runs")
    parser.add_argument("--peer", default="seafusion", choices=("seafusion", "densefuse"))
    parser.add_argument("--peer-runs", type=int, default=5, help="timed peer runs (spread over the student's)")
    parser.add_argument("--json", default=None, help="also write the report here")
    parser.add_argument("--ops", action="store_true", help="also profile the student's ONNX graph in ONNX Runtime: "
                        "kernel time per op type and the dearest nodes")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/cli.py: spinning OpenMP workers
    from runtime.errors import FusionError
    try:
        from export.pairs import parse_imgsz
        imgsz = parse_imgsz(args.imgsz)
        report = measure_student_speed(weights=args.weights, variant=args.variant, onnx_path=args.onnx, imgsz=imgsz,
                                       threads=args.threads, runs=args.runs, peer=args.peer,
                                       peer_runs=args.peer_runs, ops=args.ops)
    except FusionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.json:
        from runtime.imageio import write_json
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
