"""How a `fusion bench` result is shown: one Markdown table, a JSON list of rows, and latency-vs-quality PNG."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, List

from benchmarks.bench import TABLE_METRICS, BenchResult, finite

ROW_KEYS = ("model", "backend", "precision", "resolution", "p50_ms", "p90_ms", "p99_ms", "fps", "params", "gmacs")


def _ms(value) -> str:
    if not finite(value):
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _num(value, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if finite(value) else "-"


def _params(value) -> str:
    return f"{value / 1e6:.3f} M" if finite(value) else "-"


def _mark(row: dict, target_ms: float) -> str:
    if row.get("role") == "teacher" and row.get("unit") != "pair":
        return "-"
    return "yes" if row.get("meets_target") else "no"


def markdown_table(result: BenchResult, metrics: Iterable[str] = TABLE_METRICS) -> str:
    """The whole report: the table, the teacher speed-up, end-to-end results, notes and the machine."""
    cfg = result.config
    target = float(cfg.get("target_ms", 30.0))
    metrics = [m for m in metrics if any(m in r for r in result.rows)]
    head = ["model", "backend", "precision", "resolution", "params", "GMACs", "p50 ms", "p90 ms", "p99 ms", "FPS",
            "vs SeAFusion", f"<= {target:g} ms", *metrics]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(["---"] * 4 + ["---:"] * (len(head) - 4)) + " |"]
    for row in result.rows:
        teacher = row.get("role") == "teacher"
        if teacher:
            unit = row.get("unit", "pair")
            latency = [f"{row['p50_ms'] / 1000:.2f} s/{unit}", "-", "-"]
        else:
            latency = [_ms(row["p50_ms"]), _ms(row["p90_ms"]), _ms(row["p99_ms"])]
        vs = f"{row['vs_seafusion']:.1f}x" if finite(row.get("vs_seafusion")) else "-"
        quality = ["-" if row.get("role") == "peer" else _num(row.get(m), 3 if m != "SD" else 2) for m in metrics]
        name = row["model"] + (" (random weights)" if row.get("role") == "peer" else "")
        fps = f"{row['fps']:.1f}" if finite(row.get("fps")) and row["fps"] >= 1 else _num(row.get("fps"), 3)
        lines.append("| " + " | ".join([name, row["backend"], row["precision"], row["resolution"],
                                         _params(row.get("params")), _num(row.get("gmacs"), 2), *latency, fps, vs,
                                         _mark(row, target), *quality]) + " |")
    out = ["\n".join(lines), ""]
    for name, t in result.teacher.items():
        if "speedup" in t:
            out.append(f"- {name}: {t['per_unit_s']:.2f} s per pair (median of {len(t['seconds'])} test pair(s), "
                       f"first {t.get('size', '?')}{'; ' + t['detail'] if t.get('detail') else ''}); the student "
                       f"({t['student_backend']}) takes {t['student_s_per_pair'] * 1000:.1f} ms on the same pairs: "
                       f"**{t['speedup']:,.0f}x faster**")
        elif t.get("unit") == "step":
            out.append(f"- {name}: {t['per_unit_s']:.3f} s per sampling step ({t.get('detail', '')})")
    if result.e2e:
        out += ["", "End to end (runtime pipeline as `fusion run` runs it, with its own inference thread count; capture "
                "to fused output):", "",
                "| clip | backend | threads | mode | frames | resolution | FPS | latency p50 ms | latency p90 ms |",
                "| --- | --- | ---: | --- | ---: | --- | ---: | ---: | ---: |"]
        for e in result.e2e:
            out.append(f"| {e['clip']} | {e['backend']} | {e.get('threads', '-')} | {e['mode']} | {e['frames']} | "
                       f"{e.get('resolution', '-')} | {e['fps']:.1f} | {_ms(e.get('latency_p50_ms'))} | "
                       f"{_ms(e.get('latency_p90_ms'))} |")
    out.append("")
    if metrics:
        out.append(f"Quality: means over {cfg.get('quality_count')} pairs of test.txt at native size "
                   f"(distill/metrics.py); peers have random weights, so latency only.")
    m = result.machine
    load = ""
    if m.get("load_avg_start") is not None:
        load = f", load average {m['load_avg_start']} -> {m.get('load_avg_end')} during the run"
    out.append(f"Machine: {m.get('cpu')} ({m.get('cpu_count')} cores, {m.get('threads')} threads used{load})"
               f"{', GPU ' + m['gpu'] if m.get('gpu') else ', no GPU'}; torch {m.get('torch')}, onnxruntime "
               f"{m.get('onnxruntime')}{', tensorrt ' + m['tensorrt'] if m.get('tensorrt') else ''}; "
               f"{m.get('date_utc')} UTC; {result.seconds:.0f} s.")
    if result.notes:
        out += ["", "Notes:"] + [f"- {n}" for n in result.notes]
    return "\n".join(out).rstrip() + "\n"


def json_rows(result: BenchResult) -> List[dict]:
    """The --json payload: a list of rows with ROW_KEYS first, then the metric means and the rest."""
    out = []
    for row in result.rows:
        ordered = {k: row.get(k) for k in ROW_KEYS}
        ordered.update({k: v for k, v in row.items() if k not in ordered})
        out.append({k: (None if isinstance(v, float) and (math.isnan(v) or math.isinf(v)) else v)
                    for k, v in ordered.items()})
    return out


def write_json(path, payload) -> Path:
    from runtime.imageio import write_text
    return write_text(path, json.dumps(payload, indent=2) + "\n")


def plot_latency_quality(result: BenchResult, path, metric: str = "Qabf") -> Path:
    """Latency (p50, log scale) against a quality metric; peers (no quality: random weights) as vertical lines,
    the target as a red line. Written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target = float(result.config.get("target_ms", 30.0))
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    scored = [r for r in result.rows if r.get("role") != "peer" and finite(r.get(metric))]
    # Students in a legend (one colour per backend + precision, one marker shape per resolution): their rows share
    # the quality of their backend (measured at native size), so labels next to the points would overprint.
    shapes = ["o", "s", "^", "D", "v", "P"]
    resolutions = list(dict.fromkeys(r["resolution"] for r in scored if r.get("role") != "teacher"))
    kinds = list(dict.fromkeys((r["backend"], r["precision"]) for r in scored if r.get("role") != "teacher"))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row in scored:
        if row.get("role") == "teacher":
            ax.scatter(row["p50_ms"], row[metric], marker="*", s=140, color="black", zorder=3)
            ax.annotate(row["model"], (row["p50_ms"], row[metric]), textcoords="offset points", xytext=(6, 4),
                        fontsize=7)
            continue
        kind = kinds.index((row["backend"], row["precision"]))
        ax.scatter(row["p50_ms"], row[metric], marker=shapes[resolutions.index(row["resolution"]) % len(shapes)],
                   s=55, color=colours[kind % len(colours)], zorder=3,
                   label=f"{row['model']} {row['backend']} {row['precision']} {row['resolution']}")
    if any(r.get("role") != "teacher" for r in scored):
        ax.legend(fontsize=7, loc="best", framealpha=0.85)
    ymin, ymax = ax.get_ylim() if scored else (0.0, 1.0)
    for row in result.rows:
        if row.get("role") == "peer" and row["backend"].endswith("cpu") or (
                row.get("role") == "peer" and row["backend"].endswith("cuda")):
            ax.axvline(row["p50_ms"], color="grey", linestyle="--", linewidth=0.8)
            ax.text(row["p50_ms"], ymin + 0.02 * (ymax - ymin), f" {row['model']} {row['backend']} "
                    f"{row['resolution']}", rotation=90, fontsize=6, color="grey", va="bottom")
    ax.axvline(target, color="red", linewidth=1.0)
    ax.text(target, ymax, f" {target:g} ms target", color="red", fontsize=7, va="top")
    ax.set_xscale("log")
    ax.set_xlabel("latency p50, ms (log; measured on this machine)")
    ax.set_ylabel(f"{metric} (mean over test pairs)" if scored else "(no quality measured)")
    m = result.machine
    ax.set_title(f"latency vs quality -- {m.get('gpu') or m.get('cpu')}, {m.get('threads')} threads", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    return save_figure(fig, path)


def save_figure(fig, path) -> Path:
    """A matplotlib figure laid out and written as PNG atomically (folders made), then closed."""
    import matplotlib.pyplot as plt

    from runtime.imageio import atomic_path
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
