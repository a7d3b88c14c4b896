"""Compare INT8 quantisation recipes on a fp32 ONNX student: the table in docs/export.md.

    python -m export.recipe_study runtime/models/default/model.onnx --json /tmp/recipes.json     # dynamic: native sizes
    python -m export.recipe_study /tmp/static/model.onnx --time                                  # static 480x640

Every recipe is calibrated on training pairs only (64 spread over train.txt at --imgsz unless the recipe says
otherwise), scored on 16 other training pairs (the "selection" pairs, what `fusion export --calib-method auto` chooses
on) and reported on the test split (never chosen on): PSNR against fp32 and the VIF and Qabf deltas. A static model is
scored at its own input size (the pairs resized and centre-cropped, as `fusion export` does), a dynamic one at the
pairs' native sizes. --time adds each recipe's CPU latency (ONNX Runtime, interleaved with fp32 in one run, at
--imgsz). Prints one Markdown table.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from export.quantize import (QuantRecipe, compare_models, cpu_latency, mean_fusion_metrics, preprocess, quantize_int8,
                             run_model)

# (label, recipe, calibration set): "spread" = --calib-count pairs at --imgsz, "native" = the same pairs at their own
# sizes, "all" = every training pair that is not held out, at --imgsz. "(auto)": a candidate of --calib-method auto.
RECIPES = [
    ("minmax, per-tensor weights", QuantRecipe("minmax", per_channel=False), "spread"),
    ("minmax, per-channel (auto)", QuantRecipe("minmax"), "spread"),
    ("minmax, per-channel, float first/last layers (auto)", QuantRecipe("minmax", float_edges=True), "spread"),
    ("minmax, float first/last, calibrated at native sizes", QuantRecipe("minmax", float_edges=True), "native"),
    ("percentile 99.999 (auto)", QuantRecipe("percentile"), "spread"),
    ("percentile 99.999, float first/last (auto)", QuantRecipe("percentile", float_edges=True), "spread"),
    ("percentile 99.99, float first/last", QuantRecipe("percentile", float_edges=True, percentile=99.99), "spread"),
    ("entropy, per-channel (auto)", QuantRecipe("entropy"), "spread"),
    ("entropy, float first/last (auto)", QuantRecipe("entropy", float_edges=True), "spread"),
    ("entropy, float first/last, every op type (--int8-ops all)",
     QuantRecipe("entropy", float_edges=True, op_types=()), "spread"),
    ("entropy, float first/last, all training pairs but the selection ones", QuantRecipe("entropy", float_edges=True),
     "all"),
    ("TensorRT form (symmetric int8), entropy", QuantRecipe("entropy", target="tensorrt"), "spread"),
    ("TensorRT form (symmetric int8), entropy, float first/last",
     QuantRecipe("entropy", float_edges=True, target="tensorrt"), "spread"),
]


def study(fp32_path, data, imgsz=(480, 640), calib_count=64, only=None, timing_runs=0,
          log=print) -> tuple[list[dict], dict]:
    """Quantise `fp32_path` with every recipe (or the indices in `only`) and score each; returns one row per recipe
    and what was measured for fp32 (latency when timed)."""
    from export.onnx_export import static_input_size
    from export.pairs import load_inputs, spread
    from runtime.imageio import read_names

    data = Path(data)
    train = read_names(data / "train.txt")
    calib = spread(train, calib_count)
    held = spread([n for n in train if n not in set(calib)], 16)
    calib_sets = {
        "spread": lambda: load_inputs(data, calib, None, imgsz),
        "native": lambda: load_inputs(data, calib, None, None),
        "all": lambda: load_inputs(data, [n for n in train if n not in set(held)], None, imgsz),
    }
    loaded: dict[str, list] = {}
    score_size = static_input_size(fp32_path)
    select = load_inputs(data, held, None, score_size)
    test = load_inputs(data, data / "test.txt", None, score_size)
    select_ref, test_ref = run_model(fp32_path, select), run_model(fp32_path, test)
    select_metrics, test_metrics = mean_fusion_metrics(select, select_ref), mean_fusion_metrics(test, test_ref)
    rows, models = [], {}
    fp32 = {"scored_at": list(score_size) if score_size else "native sizes", "test_metrics": test_metrics}
    with tempfile.TemporaryDirectory(prefix="fusion-recipes-") as work:
        work = Path(work)
        pre = preprocess(fp32_path, work / "pre.onnx")
        for index, (label, recipe, calib_set) in enumerate(RECIPES):
            if only and index not in only:
                continue
            if calib_set == "native" and score_size:
                rows.append({"index": index, "label": label, "error": "a static model takes one input size"})
                continue
            if calib_set not in loaded:
                loaded[calib_set] = calib_sets[calib_set]()
            inputs = loaded[calib_set]
            started = time.perf_counter()
            out = work / f"recipe-{index}.onnx"
            cache = work / f"ranges-{calib_set}"
            cache.mkdir(exist_ok=True)
            try:
                quantize_int8(fp32_path, out, inputs, recipe, cache_dir=cache, preprocessed=pre)
            except ValueError as exc:  # ONNX Runtime's histogram calibrators need inputs of one size
                rows.append({"index": index, "label": label, "error": str(exc).split(".")[0]})
                log(f"{index}: {label}: failed ({rows[-1]['error']})")
                continue
            selected = compare_models(fp32_path, out, select, select_ref)
            reported = compare_models(fp32_path, out, test, test_ref)
            sel_m = mean_fusion_metrics(select, selected.pop("outputs"))
            test_m = mean_fusion_metrics(test, reported.pop("outputs"))
            rows.append({"index": index, "label": label, "calibration_pairs": len(inputs),
                         "selection_psnr_db": selected["psnr_db"], "selection_min_psnr_db": selected["min_psnr_db"],
                         "selection_delta": {m: sel_m[m] - select_metrics[m] for m in sel_m},
                         "test_psnr_db": reported["psnr_db"], "test_min_psnr_db": reported["min_psnr_db"],
                         "test_mean_pair_psnr_db": reported["mean_pair_psnr_db"],
                         "test_median_pair_psnr_db": reported["median_pair_psnr_db"],
                         "test_delta": {m: test_m[m] - test_metrics[m] for m in test_m},
                         "seconds": round(time.perf_counter() - started, 1)})
            models[index] = out
            log(f"{index}: {label}: selection {selected['psnr_db']:.2f} dB, test median "
                f"{reported['median_pair_psnr_db']:.2f} dB, test VIF {rows[-1]['test_delta']['VIF']:+.4f} "
                f"Qabf {rows[-1]['test_delta']['Qabf']:+.4f}")
        if timing_runs and models:
            feeds = load_inputs(data, data / "test.txt", 1, imgsz)[0].feeds()
            log(f"timing fp32 and {len(models)} recipes interleaved, {timing_runs} runs each")
            medians = cpu_latency({"fp32": fp32_path, **models}, feeds, runs=timing_runs)
            fp32["cpu_median_ms"] = medians["fp32"]
            for row in rows:
                if row["index"] in medians:
                    row["cpu_median_ms"] = medians[row["index"]]
    return rows, fp32


def markdown(rows: list[dict], fp32: dict | None = None) -> str:
    timed = any("cpu_median_ms" in row for row in rows)
    head = ["recipe", "selection PSNR", "selection VIF / Qabf", "test PSNR: median per pair (all pixels, worst)",
            "test VIF / Qabf"] + (["CPU ms"] if timed else [])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    if timed and fp32 and "cpu_median_ms" in fp32:
        lines.append("| fp32 | - | - | - | - | " + f"{fp32['cpu_median_ms']:.1f} |")
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['label']} | failed: {row['error']} |" + " - |" * (len(head) - 2))
            continue
        sel, tst = row["selection_delta"], row["test_delta"]
        cells = [row["label"], f"{row['selection_psnr_db']:.2f} dB", f"{sel['VIF']:+.3f} / {sel['Qabf']:+.3f}",
                 f"{row['test_median_pair_psnr_db']:.2f} dB ({row['test_psnr_db']:.2f}, {row['test_min_psnr_db']:.2f})",
                 f"{tst['VIF']:+.3f} / {tst['Qabf']:+.3f}"]
        if timed:
            cells.append(f"{row['cpu_median_ms']:.1f}" if "cpu_median_ms" in row else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from export.pairs import default_data_dir, parse_imgsz
    parser = argparse.ArgumentParser(prog="python -m export.recipe_study", description=__doc__.split("\n\n")[0])
    parser.add_argument("onnx", help="fp32 ONNX student (e.g. runtime/models/default/model.onnx)")
    parser.add_argument("--data", default=None, help="dataset with ir/, vi/, train.txt, test.txt "
                        "(default: $FUSION_DATA or ../shared/data/roadscene)")
    parser.add_argument("--imgsz", default="480x640", help="calibration size HxW")
    parser.add_argument("--calib-count", type=int, default=64)
    parser.add_argument("--only", type=int, nargs="*", default=None, help="recipe indices to run (default: all)")
    parser.add_argument("--time", type=int, nargs="?", const=30, default=0, metavar="RUNS",
                        help="also time every recipe and fp32 on the CPU, interleaved (default 30 runs each)")
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args(argv)
    rows, fp32 = study(args.onnx, Path(args.data) if args.data else default_data_dir(), parse_imgsz(args.imgsz),
                       args.calib_count, set(args.only) if args.only else None, args.time,
                       log=lambda m: print(m, file=sys.stderr, flush=True))
    if args.json:
        from runtime.imageio import write_json
        write_json(args.json, {"fp32": fp32, "recipes": rows})
    print(markdown(rows, fp32))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
