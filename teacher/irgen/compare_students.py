"""Side-by-side table of students evaluated on the same real pairs: one trained on real IR/VIS pairs, others on
synthetic pairs (synthesised IR + the real VIS), each with em targets. Reads the metrics.json files that
`fusion distill eval` writes and adds the teacher row of the first one (all evaluations must share the teacher).

    python -m teacher.irgen.compare_students --run real=runs/irgen/eval/student-real \\
        --run synth-tqd=runs/irgen/eval/student-synth-tqd --out runs/irgen/eval/students.md

Metrics are the fusion metrics of `distill.metrics` (against the REAL IR and VIS of the evaluated split), so the
comparison asks one question: does training on synthesised IR give a student that fuses real pairs as well?
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Tuple

from runtime.errors import FusionError

# The columns reported in docs/irgen.md (PSNR/CC/MSE against the sources say little about fusion quality).
COLUMNS = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM")


def _load(folder: Path) -> dict:
    path = folder / "metrics.json" if folder.is_dir() else folder
    if not path.is_file():
        raise FusionError(f"no metrics.json in {folder}; run `fusion distill eval --out {folder} ...` first")
    return json.loads(path.read_text())


def _row_of(summary: dict, prefix: str, source: str) -> Tuple[str, dict]:
    for label, row in summary["rows"].items():
        if label.startswith(prefix):
            return label, row
    raise FusionError(f"{source} has no '{prefix}...' row; was it written by `fusion distill eval`?")


def compare(runs: List[Tuple[str, Path]], columns=COLUMNS) -> Tuple[Dict[str, Dict[str, float]], dict]:
    """Rows {"student (LABEL)": {metric: value}} plus "teacher (...)"; refuses evaluations of different splits."""
    rows: Dict[str, Dict[str, float]] = {}
    info = {"count": None, "teacher": None, "runs": {}}
    for label, folder in runs:
        summary = _load(folder)
        if info["count"] is None:
            info["count"] = summary["count"]
        elif summary["count"] != info["count"]:
            raise FusionError(f"{folder} evaluated {summary['count']} pairs, the first run {info['count']}; "
                              "evaluate every student on the same split")
        _, student = _row_of(summary, "student", str(folder))
        rows[f"student ({label})"] = {m: student[m] for m in columns if m in student}
        info["runs"][label] = {"folder": str(folder), "weights": summary.get("weights")}
        teacher_label, teacher = _row_of(summary, "teacher", str(folder))
        teacher_row = {m: teacher[m] for m in columns if m in teacher}
        if info["teacher"] is None:
            info["teacher"] = (teacher_label, teacher_row)
        elif any(abs(teacher_row[m] - info["teacher"][1][m]) > 1e-6 for m in teacher_row):
            raise FusionError(f"{folder} scored a different teacher output than the first run; pass the same "
                              "--teacher-dir to every `fusion distill eval`")
    if info["teacher"] is not None:
        rows[info["teacher"][0]] = info["teacher"][1]
    return rows, info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m teacher.irgen.compare_students", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=DIR",
                        help="a `fusion distill eval` output folder (or its metrics.json); repeatable")
    parser.add_argument("--out", help="write the Markdown table here as well (and a .json beside it)")
    args = parser.parse_args(argv)
    try:
        runs = []
        for item in args.run:
            label, sep, folder = item.partition("=")
            if not sep or not label or not folder:
                raise FusionError(f"--run expects LABEL=DIR, got '{item}'")
            runs.append((label, Path(folder)))
        rows, info = compare(runs)
        from distill.metrics import markdown_table
        table = markdown_table(rows, label=f"{info['count']} real pairs")
        print(table, end="")
        if args.out:
            from runtime.imageio import write_json, write_text
            write_text(args.out, table)
            write_json(Path(args.out).with_suffix(".json"), {"rows": rows, **{k: v for k, v in info.items()
                                                                              if k != "teacher"}})
    except FusionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
