"""Side-by-side table of students evaluated on the same real pairs: one trained on real IR/VIS pairs, others on
synthetic pairs (synthesised IR + the real VIS), each with em targets. Reads the metrics.json files that
`fusion distill eval` writes and adds the teacher row of the first one (all evaluations must share the teacher).

    python -m teacher.irgen.compare_students --run real=runs/irgen/eval/student-real \\
        --run synth-tqd=runs/irgen/eval/student-synth-tqd --out runs/irgen/eval/students.md

Runs labelled `NAME-seedS` (and the bare `NAME` for seed 0) are also summarised per NAME as mean +- sample standard
deviation over seeds, because one 500-step CPU run per condition is within seed noise of another.

Metrics are the fusion metrics of `distill.metrics` (against the REAL IR and VIS of the evaluated split), so the
comparison asks one question: does training on synthesised IR give a student that fuses real pairs as well?
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
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


SEED_SUFFIX = re.compile(r"-seed(\d+)$")


def seed_groups(rows: Dict[str, Dict[str, float]]) -> Dict[str, List[Dict[str, float]]]:
    """{"student (NAME)": rows of every seed of NAME}: `student (NAME-seedS)` joins `student (NAME)`."""
    groups: Dict[str, List[Dict[str, float]]] = {}
    for label, row in rows.items():
        match = re.fullmatch(r"student \((.+)\)", label)
        if match is None:
            continue
        name = SEED_SUFFIX.sub("", match.group(1))
        groups.setdefault(f"student ({name})", []).append(row)
    return groups


def seed_summary_table(rows: Dict[str, Dict[str, float]], teacher: Tuple[str, Dict[str, float]] | None,
                       columns=COLUMNS) -> str:
    """Markdown: mean +- sample sd over the seeds of each student (n seeds), then the teacher row as is."""
    from distill.metrics import format_value
    lines = ["| seeds: mean +- sd | n | " + " | ".join(columns) + " |",
             "|---|---:|" + "---:|" * len(columns)]
    for label, group in seed_groups(rows).items():
        cells = []
        for m in columns:
            values = [r[m] for r in group if m in r]
            if not values:
                cells.append("")
                continue
            sd = statistics.stdev(values) if len(values) > 1 else float("nan")
            cells.append(format_value(m, statistics.fmean(values)) +
                         ("" if len(values) < 2 else " +- " + format_value(m, sd)))
        lines.append(f"| {label} | {len(group)} | " + " | ".join(cells) + " |")
    if teacher is not None:
        lines.append(f"| {teacher[0]} | | " + " | ".join(format_value(m, teacher[1][m]) if m in teacher[1] else ""
                                                          for m in columns) + " |")
    return "\n".join(lines) + "\n"


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
        if any(len(group) > 1 for group in seed_groups(rows).values()):
            table += "\n" + seed_summary_table(rows, info["teacher"])
        print(table, end="")
        if args.out:
            from runtime.imageio import write_json, write_text
            write_text(args.out, table)
            seeds = {label: {m: [r[m] for r in group if m in r] for m in COLUMNS}
                     for label, group in seed_groups(rows).items()}
            write_json(Path(args.out).with_suffix(".json"), {"rows": rows, "per_seed": seeds,
                                                             **{k: v for k, v in info.items() if k != "teacher"}})
    except FusionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
