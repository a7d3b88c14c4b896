"""Evaluation of a student: fused images, the field's metric table beside the teacher and baselines, a picture grid,
and the student's cost (params, GMACs, ONNX Runtime CPU latency, ratio to the SeAFusion-architecture peer).

    fusion distill eval --weights default --data ../shared/data/roadscene --names test.txt [--out DIR]
    fusion distill eval --weights default --suite validation          # every validation set, one table each
    fusion distill eval --weights default --data ../shared/data/msrs_mini:val.txt:N --data DIR2:val.txt
    fusion distill profile --weights default [--size 480x640] [--peer seafusion]

Metrics come from distill.metrics (numpy + OpenCV); images are written as 8-bit PNG and the metrics read them back,
exactly as for any other fusion method, so every row of the table is computed the same way.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from distill.eval_images import colourise, fuse_pairs, fuse_with_teacher, picture_grid
from distill.eval_profile import format_profile, profile_student
from distill.eval_sets import SUITES, parse_set, set_label, set_pairs
from runtime.errors import FusionError, require

DEFAULT_BASELINES = ("mean", "max", "laplacian")
# metrics on which a fusion must not fall below the plain average of the sources (the "below mean" line)
MEAN_FLOOR_METRICS = ("EN", "SD", "SF", "AG", "VIF", "Qabf")
TABLE_METRICS = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM")


def below_baseline(rows: Dict[str, dict], subject: str, baseline: str = "mean",
                   metrics_: Sequence[str] = MEAN_FLOOR_METRICS) -> List[str]:
    """The metrics of `metrics_` on which row `subject` is below row `baseline`."""
    return [m for m in metrics_ if rows[subject][m] < rows[baseline][m]]


def wins_over(rows: Dict[str, dict], subject: str, baseline: str, metrics_: Sequence[str] = TABLE_METRICS) -> List[str]:
    return [m for m in metrics_ if rows[subject][m] >= rows[baseline][m]]


def evaluate_sets(weights: str, sets: Sequence[str], out: Path, **kwargs) -> dict:
    """`evaluate` on each set spec (PATH[:NAMES[:SUFFIX]]) into out/<label>/, with one Markdown report
    (out/summary.md) holding a table per set, the metrics where the student is below `mean`, and its wins over
    `laplacian`. The cost profile is measured once (first set)."""
    from runtime.imageio import write_json, write_text
    results, lines = {}, []
    profile = kwargs.pop("profile", True)
    for index, spec in enumerate(sets):
        path, names, suffix = parse_set(spec)
        label = set_label(path, names, suffix)
        summary = evaluate(weights, path, names, out / label, profile=profile and index == 0, suffix=suffix,
                           **kwargs)
        results[label] = summary
        lines += [f"### {label} ({summary['count']} pairs)", "", summary["table"], ""]
        lines.append(describe_against_baselines(summary))
        lines += ["", f"![{label}]({label}/grid.png)", ""]
    report = "\n".join(lines)
    write_text(out / "summary.md", report + "\n")
    write_json(out / "summary.json", {k: {kk: vv for kk, vv in v.items() if kk != "table"}
                                      for k, v in results.items()})
    return {"sets": results, "report": report}


def describe_against_baselines(summary: dict) -> str:
    parts = []
    if "below_mean" in summary:
        below = summary["below_mean"]
        parts.append("below `mean` on: " + (", ".join(below) if below else "none of " + ", ".join(MEAN_FLOOR_METRICS)))
    if "wins_over_laplacian" in summary:
        wins = summary["wins_over_laplacian"]
        parts.append(f"at least `laplacian` on {len(wins)} of {len(TABLE_METRICS)}: {', '.join(wins) or '-'}")
    return "; ".join(parts)


# ------------------------------------------------------------------------------------------------------- eval
def evaluate(weights: str, data: str, names: Optional[str], out: Path, teacher: str = "pyramid",
             teacher_dir: Optional[str] = None, baselines: Sequence[str] = DEFAULT_BASELINES, device: str = "cpu",
             grid_rows: int = 4, profile: bool = True, threads: int = 2, suffix: str = "") -> dict:
    import torch

    from distill.models import load_student
    from runtime.imageio import dataset_folders, write_json, write_text
    try:
        from distill import metrics
    except ImportError:
        raise FusionError("distill.metrics is not available in this installation; cannot compute the metric table") \
            from None
    if threads > 0:
        torch.set_num_threads(threads)
    model = load_student(weights, device=device)
    names, pairs = set_pairs(data, names, suffix)
    ir_dir, vis_dir, found_teacher = dataset_folders(data)
    stems = [p.name for p in pairs]

    student_dir, colour_dir = out / "student", out / "student_rgb"
    fuse_pairs(model, pairs, student_dir, device, colour_dir)
    folders: Dict[str, Path] = {f"student ({model.config.variant})": student_dir}

    # the teacher: a given folder, the dataset's TEACHER_FUSED when it covers the split, or computed now
    chosen = Path(teacher_dir) if teacher_dir else found_teacher
    if chosen is None or not all((chosen / f"{s}.png").is_file() or any(chosen.glob(f"{s}.*")) for s in stems):
        chosen = out / f"teacher_{teacher}"
        fuse_with_teacher(teacher, ("fusion", "baseline"), pairs, chosen)
    folders[f"teacher ({teacher})"] = chosen
    for name in baselines:
        folder = out / f"baseline_{name}"
        try:
            fuse_with_teacher(name, "baseline", pairs, folder)
        except (ImportError, FusionError) as exc:
            print(f"baseline '{name}' unavailable ({exc}); row left out", file=sys.stderr)
            continue
        folders[name] = folder

    rows, per_image = {}, {}
    for label, folder in folders.items():
        result = metrics.evaluate_folder(ir_dir, vis_dir, folder, names=stems)
        rows[label] = result["mean"]
        per_image[label] = result["per_image"]
    table = metrics.markdown_table(rows)
    student_label = next(iter(folders))
    summary = {"weights": str(weights), "data": str(data), "names": names, "suffix": suffix, "count": len(stems),
               "rows": rows, "folders": {k: str(v) for k, v in folders.items()}}
    if "mean" in rows:
        summary["below_mean"] = below_baseline(rows, student_label)
    if "laplacian" in rows:
        summary["wins_over_laplacian"] = wins_over(rows, student_label, "laplacian")
    if profile:
        summary["profile"] = profile_student(model.cpu(), threads=threads)
    write_text(out / "metrics.md", table + "\n")
    write_json(out / "metrics.json", summary)
    write_json(out / "metrics_per_image.json", per_image)
    teacher_rgb = out / f"teacher_{teacher}_rgb"
    colourise(pairs, chosen, teacher_rgb)
    grid_columns = {f"teacher {teacher}": teacher_rgb, "student": colour_dir}
    summary["grid"] = str(picture_grid(pairs, grid_columns, out / "grid.png", rows=grid_rows))
    summary["table"] = table
    return summary


def own_teacher(weights: str, fallback: str = "pyramid") -> str:
    """The registered fusion teacher a student was distilled from (its config.json metadata), else `fallback`."""
    from distill.models import read_student_config, resolve_weights
    from teacher.registry import TEACHERS
    _, data = read_student_config(resolve_weights(weights))
    teacher = data.get("metadata", {}).get("teacher")
    entry = TEACHERS.get(teacher) if isinstance(teacher, str) else None
    return teacher if entry is not None and entry.kind == "fusion" else fallback


def configure_eval(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", default="default", help="student folder (config.json + model.safetensors) or "
                                                             "'default' (default: %(default)s)")
    parser.add_argument("--data", action="append", default=[],
                        help="dataset folder with ir/ and vi/, optionally PATH:NAMES[:SUFFIX] (SUFFIX keeps names "
                             "ending with it, e.g. msrs_mini:val.txt:N); repeat for several sets, one table each")
    parser.add_argument("--suite", choices=sorted(SUITES), help="add a named group of sets under --shared: "
                        "'validation' = roadscene test, msrs_mini day (D) and night (N), llvip_mini val")
    parser.add_argument("--shared", default="../shared/data", help="folder the --suite sets live in "
                                                                   "(default: %(default)s)")
    parser.add_argument("--names", default=None, help="split file for a single --data (e.g. test.txt; looked up in "
                                                      "--data too)")
    parser.add_argument("--out", default=None, help="output folder (default: runs/distill/eval/<weights name>)")
    parser.add_argument("--teacher", default=None, help="teacher row (default: the student's own teacher, from its "
                                                        "config.json, when that is a registered teacher; else pyramid)")
    parser.add_argument("--teacher-dir", default=None, help="precomputed teacher fusions (default: the dataset's "
                                                            "TEACHER_FUSED/ when complete, else computed into --out)")
    parser.add_argument("--baselines", default=",".join(DEFAULT_BASELINES), help="comma-separated baseline rows "
                                                                                 "(default: %(default)s)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch / ONNX Runtime CPU threads (default: 2)")
    parser.add_argument("--grid-rows", type=int, default=4, help="pairs shown in grid.png (default: 4)")
    parser.add_argument("--no-profile", action="store_true", help="skip the params / GMACs / latency report")
    parser.set_defaults(func=run_eval)


def run_eval(args) -> int:
    require("torch", "`fusion distill eval`")
    out = Path(args.out) if args.out else Path("runs/distill/eval") / Path(str(args.weights)).name
    sets = list(args.data) + [str(Path(args.shared) / spec) for spec in SUITES.get(args.suite, ())]
    if not sets:
        raise FusionError("give a dataset with --data PATH (repeatable) or a group of sets with --suite validation")
    options = dict(teacher=args.teacher or own_teacher(args.weights), teacher_dir=args.teacher_dir,
                   baselines=[b for b in args.baselines.split(",") if b], device=args.device,
                   grid_rows=args.grid_rows, profile=not args.no_profile, threads=args.threads)
    if len(sets) > 1:
        if args.names or args.teacher_dir:
            raise FusionError("--names and --teacher-dir go with a single --data; give each set as PATH:NAMES[:SUFFIX]")
        result = evaluate_sets(args.weights, sets, out, **options)
        print(result["report"])
        first = next(iter(result["sets"].values()))
        if "profile" in first:
            print(format_profile(first["profile"]))
        print(f"report: {out / 'summary.md'}; per set: fused images, metrics and grid.png under {out}/<set>/")
        return 0
    path, names, suffix = parse_set(sets[0])
    summary = evaluate(args.weights, path, args.names or names, out, suffix=suffix, **options)
    print(f"{summary['count']} pairs from {path}" + (f" ({args.names or names})" if (args.names or names) else ""))
    print(summary["table"])
    if "below_mean" in summary or "wins_over_laplacian" in summary:
        print(describe_against_baselines(summary))
    if "profile" in summary:
        print(format_profile(summary["profile"]))
    print(f"fused images: {out / 'student'} (colour: {out / 'student_rgb'}); grid: {summary['grid']}; "
          f"table: {out / 'metrics.md'}")
    return 0


def configure_profile(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", default=None, help="student folder or 'default' (default: a fresh --variant)")
    parser.add_argument("--variant", default="nano", help="registered student when no --weights (default: nano)")
    parser.add_argument("--size", default="480x640", help="HxW (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--peer", default="seafusion", help="latency peer measured in the same run ('' for none)")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    parser.set_defaults(func=run_profile)


def run_profile(args) -> int:
    require("torch", "`fusion distill profile`")
    from distill.models import create_student, load_student
    try:
        height, width = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise FusionError(f"--size must look like 480x640 (height x width), got '{args.size}'") from None
    model = load_student(args.weights) if args.weights else create_student(args.variant).eval()
    result = profile_student(model, height, width, args.threads, args.runs, peer=args.peer or None)
    print(format_profile(result))
    if args.json:
        from runtime.imageio import write_json
        write_json(args.json, result)
    return 0
