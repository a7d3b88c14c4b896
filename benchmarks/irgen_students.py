"""Side-by-side table of students evaluated on the same real pairs: one trained on real IR/VIS pairs, others on
synthetic pairs (synthesised IR + the real VIS), each with em targets. Reads the metrics.json files that
`fusion distill eval` writes and adds the teacher row of the first one (all evaluations must share the teacher).

    python -m benchmarks.irgen_students --run real=runs/irgen/eval/student-real \\
        --run synth-tqd=runs/irgen/eval/student-synth-tqd --out runs/irgen/eval/students.md

Runs labelled `NAME-seedS` (and the bare `NAME` for seed 0) are also summarised per NAME as mean +- sample standard
deviation over seeds, because one 500-step CPU run per condition is within seed noise of another.

With `--paired BASE` (a NAME, e.g. `real`), each other NAME is also compared with BASE image by image: per test pair
the metric averaged over the seeds, then "in how many pairs NAME scores higher" and the mean difference. A student
that is better on most pairs is better systematically, whatever the seed spread of the means.

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


def _per_image(folder: Path) -> Dict[str, Dict[str, float]]:
    """{pair: {metric: value}} of the student of one `fusion distill eval` folder (its metrics_per_image.json)."""
    path = (folder if folder.is_dir() else folder.parent) / "metrics_per_image.json"
    if not path.is_file():
        raise FusionError(f"no metrics_per_image.json in {path.parent}; rerun `fusion distill eval` there")
    data = json.loads(path.read_text())
    for label, rows in data.items():
        if label.startswith("student"):
            return rows
    raise FusionError(f"{path} has no student rows")


def paired(runs: List[Tuple[str, Path]], base: str, columns=COLUMNS) -> Dict[str, Dict[str, dict]]:
    """{NAME: {metric: {"higher": pairs where NAME > BASE, "pairs": N, "mean_diff": NAME - BASE}}} for every NAME
    other than BASE, on per-pair metrics averaged over each NAME's seeds."""
    by_name: Dict[str, List[Dict[str, Dict[str, float]]]] = {}
    for label, folder in runs:
        by_name.setdefault(SEED_SUFFIX.sub("", label), []).append(_per_image(folder))
    if base not in by_name:
        raise FusionError(f"--paired {base}: no run is labelled {base} (or {base}-seedS); labels: "
                          f"{', '.join(sorted(by_name))}")

    def seed_mean(per_seed, pairs, metric):
        return [statistics.fmean(rows[p][metric] for rows in per_seed) for p in pairs]

    pairs = sorted(set.intersection(*(set(rows) for group in by_name.values() for rows in group)))
    if not pairs:
        raise FusionError("the runs share no evaluated pair; evaluate every student on the same split")
    result: Dict[str, Dict[str, dict]] = {}
    for name, per_seed in by_name.items():
        if name == base:
            continue
        result[name] = {}
        for m in columns:
            ours, theirs = seed_mean(per_seed, pairs, m), seed_mean(by_name[base], pairs, m)
            diffs = [a - b for a, b in zip(ours, theirs)]
            result[name][m] = {"higher": sum(d > 0 for d in diffs), "pairs": len(pairs),
                               "mean_diff": statistics.fmean(diffs)}
    return result


def paired_table(result: Dict[str, Dict[str, dict]], base: str, columns=COLUMNS) -> str:
    lines = [f"| vs {base}, per pair: higher in / mean diff | " + " | ".join(columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for name, cells in result.items():
        lines.append(f"| {name} | " + " | ".join(f"{c['higher']}/{c['pairs']} ({c['mean_diff']:+.4f})"
                                                for c in (cells[m] for m in columns)) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.irgen_students", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=DIR",
                        help="a `fusion distill eval` output folder (or its metrics.json); repeatable")
    parser.add_argument("--out", help="write the Markdown table here as well (and a .json beside it)")
    parser.add_argument("--paired", metavar="BASE", help="also compare every other NAME with BASE pair by pair")
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
        pairs_vs = paired(runs, args.paired) if args.paired else None
        if pairs_vs is not None:
            table += "\n" + paired_table(pairs_vs, args.paired)
        print(table, end="")
        if args.out:
            from runtime.imageio import write_json, write_text
            write_text(args.out, table)
            seeds = {label: {m: [r[m] for r in group if m in r] for m in COLUMNS}
                     for label, group in seed_groups(rows).items()}
            write_json(Path(args.out).with_suffix(".json"), {"rows": rows, "per_seed": seeds, "paired": pairs_vs,
                                                             **{k: v for k, v in info.items() if k != "teacher"}})
    except FusionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
