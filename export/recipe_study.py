"""Compare INT8 quantisation recipes on a fp32 ONNX student: the table in docs/export.md.

    python -m export.recipe_study runtime/models/default/model.onnx --json /tmp/recipes.json     # ~4.5 min, 1 core

Every recipe is calibrated on training pairs only (64 spread over train.txt at --imgsz unless the recipe says
otherwise), scored on 16 other training pairs ("held-out", what `fusion export --calib-method auto` chooses on) and
reported on the test split at native sizes (never chosen on). Prints one Markdown table.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from export.quantize import QuantRecipe, compare_models, preprocess, quantize_int8, run_model

# (label, recipe, calibration set): "spread" = --calib-count pairs at --imgsz, "native" = the same pairs at their own
# sizes, "all" = every training pair that is not held out, at --imgsz.
RECIPES = [
    ("minmax, per-tensor weights", QuantRecipe("minmax", per_channel=False), "spread"),
    ("minmax, per-channel (auto: 1st)", QuantRecipe("minmax"), "spread"),
    ("minmax, per-channel, float first/last layers (auto: 2nd)", QuantRecipe("minmax", float_edges=True), "spread"),
    ("minmax, float first/last, calibrated at native sizes", QuantRecipe("minmax", float_edges=True), "native"),
    ("percentile 99.999, float first/last (auto: 3rd)", QuantRecipe("percentile", float_edges=True), "spread"),
    ("percentile 99.99, float first/last", QuantRecipe("percentile", float_edges=True, percentile=99.99), "spread"),
    ("entropy, per-channel", QuantRecipe("entropy"), "spread"),
    ("entropy, float first/last (auto: 4th)", QuantRecipe("entropy", float_edges=True), "spread"),
    ("entropy, float first/last, every op type (--int8-ops all)",
     QuantRecipe("entropy", float_edges=True, op_types=()), "spread"),
    ("entropy, float first/last, all training pairs but the held-out ones", QuantRecipe("entropy", float_edges=True),
     "all"),
    ("TensorRT form (symmetric int8), entropy", QuantRecipe("entropy", target="tensorrt"), "spread"),
    ("TensorRT form (symmetric int8), entropy, float first/last",
     QuantRecipe("entropy", float_edges=True, target="tensorrt"), "spread"),
]


def study(fp32_path, data, imgsz=(480, 640), calib_count=64, only=None, log=print) -> list[dict]:
    """Quantise `fp32_path` with every recipe (or the indices in `only`) and score each; returns one row per recipe."""
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
    select = load_inputs(data, held, None, None)
    test = load_inputs(data, data / "test.txt", None, None)
    select_ref, test_ref = run_model(fp32_path, select), run_model(fp32_path, test)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fusion-recipes-") as work:
        work = Path(work)
        pre = preprocess(fp32_path, work / "pre.onnx")
        for index, (label, recipe, calib_set) in enumerate(RECIPES):
            if only and index not in only:
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
            held_out = compare_models(fp32_path, out, select, select_ref)
            reported = compare_models(fp32_path, out, test, test_ref)
            rows.append({"index": index, "label": label, "calibration_pairs": len(inputs),
                         "heldout_psnr_db": held_out["psnr_db"], "heldout_min_psnr_db": held_out["min_psnr_db"],
                         "test_psnr_db": reported["psnr_db"], "test_min_psnr_db": reported["min_psnr_db"],
                         "test_mean_pair_psnr_db": reported["mean_pair_psnr_db"],
                         "seconds": round(time.perf_counter() - started, 1)})
            log(f"{index}: {label}: held-out {held_out['psnr_db']:.2f} dB, test {reported['psnr_db']:.2f} dB")
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| recipe | calibration pairs | held-out PSNR | test PSNR (worst pair) |", "| --- | --- | --- | --- |"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['label']} | - | failed: {row['error']} | - |")
        else:
            lines.append(f"| {row['label']} | {row['calibration_pairs']} | {row['heldout_psnr_db']:.2f} dB | "
                         f"{row['test_psnr_db']:.2f} dB ({row['test_min_psnr_db']:.2f}) |")
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
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args(argv)
    rows = study(args.onnx, Path(args.data) if args.data else default_data_dir(), parse_imgsz(args.imgsz),
                 args.calib_count, set(args.only) if args.only else None,
                 log=lambda m: print(m, file=sys.stderr, flush=True))
    if args.json:
        from runtime.imageio import write_json
        write_json(args.json, rows)
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
