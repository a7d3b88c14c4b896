"""Teachers and baselines side by side on several sets: the field's metrics, seconds per pair, one table per set.

    python -m benchmarks.teacher_compare --suite validation --teachers pyramid,gff,vsmwls,em,laplacian,max,mean \
        --out runs/teacher/compare

Fusions are written under OUT/<set>/<teacher>/ and reused on a rerun (resumable); the report is OUT/summary.md.
Sets are given like `fusion distill eval` takes them (PATH[:NAMES[:SUFFIX]], or --suite validation).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from runtime.errors import FusionError


def compare(sets, teachers, out: Path) -> str:
    from distill import metrics
    from distill.eval_images import fuse_with_teacher
    from distill.eval_sets import parse_set, set_label, set_pairs
    from runtime.imageio import dataset_folders, write_json, write_text
    lines, report = [], {}
    for spec in sets:
        path, names, suffix = parse_set(spec)
        names, pairs = set_pairs(path, names, suffix)
        ir_dir, vis_dir, _ = dataset_folders(path)
        label = set_label(path, names, suffix)
        rows, seconds = {}, {}
        for name in teachers:
            folder = out / label / name
            missing = sum(not (folder / f"{p.name}.png").is_file() for p in pairs)
            started = time.perf_counter()
            fuse_with_teacher(name, ("fusion", "baseline"), pairs, folder)   # resumable: fuses only what is missing
            if missing:
                seconds[name] = (time.perf_counter() - started) / missing
            rows[name] = metrics.evaluate_folder(ir_dir, vis_dir, folder, names=[p.name for p in pairs])["mean"]
            print(f"{label}: {name} done", file=sys.stderr)
        table = metrics.markdown_table(rows)
        timing = ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items())
        lines += [f"### {label} ({len(pairs)} pairs)", "", table, ""]
        if timing:
            lines += [f"seconds per pair (this run, 1 thread): {timing}", ""]
        report[label] = {"count": len(pairs), "rows": rows, "seconds_per_pair": seconds}
    text = "\n".join(lines)
    write_text(out / "summary.md", text + "\n")
    write_json(out / "summary.json", report)
    return text


def main(argv=None) -> int:
    from distill.eval_sets import SUITES
    parser = argparse.ArgumentParser(prog="python -m benchmarks.teacher_compare", description=__doc__.split("\n")[0])
    parser.add_argument("--data", action="append", default=[], help="PATH[:NAMES[:SUFFIX]], repeatable")
    parser.add_argument("--suite", choices=sorted(SUITES))
    parser.add_argument("--shared", default="../shared/data")
    parser.add_argument("--teachers", default="pyramid,gff,vsmwls,em,laplacian,max,mean")
    parser.add_argument("--out", default="runs/teacher/compare")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        import torch
        torch.set_num_threads(args.threads)
        sets = list(args.data) + [str(Path(args.shared) / s) for s in SUITES.get(args.suite, ())]
        if not sets:
            raise FusionError("give --data PATH[:NAMES[:SUFFIX]] (repeatable) or --suite validation")
        print(compare(sets, [t for t in args.teachers.split(",") if t], Path(args.out)))
    except FusionError as exc:
        print(f"benchmarks.teacher_compare: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
