"""Is an INT8 ONNX student good enough to ship? Its output against the fp32 student's on the test pairs.

    python -m export.int8_check m8.onnx                           # against --weights default, on test.txt (all 50)
    python -m export.int8_check runtime/models/default/model.int8.onnx --json /tmp/int8_check.json

The reference is the student's PyTorch output (what every export is parity-checked against, 1e-4 at most), from
the weights the INT8 model records (`weights_sha256` in its metadata must match --weights, so a model quantised
from other weights is refused rather than scored). The pairs are read as the INT8 model takes them: resized and
centre-cropped to its input size when it is static (the README's INT8 line makes a 480x640 one), at their native
sizes when it is dynamic. Passes (exit 0) when the median per-pair PSNR is at least --min-median-psnr (45 dB) and
each metric of --max-metric-drop (VIF and Qabf: 0.02) is at most that much below fp32, as `fusion eval` would score
the saved 8-bit images; prints what it measured and "PASS" or "FAIL: <what>" last (exit 1 on FAIL).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from runtime.errors import FusionError

MIN_MEDIAN_PSNR_DB = 45.0


def check_int8(int8_path, weights: str = "default", data=None, names=None, count: int | None = None,
               min_median_psnr: float = MIN_MEDIAN_PSNR_DB, limits: dict[str, float] | None = None,
               threads: int = 2) -> dict:
    """Score `int8_path` against the fp32 student `weights` on real test pairs; returns the measurements and
    `passed`/`failures`. FusionError when the INT8 model was not made from these weights."""
    from distill.models import load_student, resolve_weights
    from export.common import set_threads
    from export.onnx_export import (compare_outputs, read_onnx_metadata, static_input_size, torch_outputs,
                                    weights_metadata)
    from export.pairs import default_data_dir, load_inputs, shown_path, split_file
    from export.quantize import limit_violations, mean_fusion_metrics, metric_drop, run_model

    int8_path = Path(int8_path)
    if not int8_path.is_file():
        raise FusionError(f"{int8_path} not found; make it with `fusion export --format onnx-int8 --out {int8_path}`")
    limits = {"VIF": 0.02, "Qabf": 0.02} if limits is None else limits
    folder = resolve_weights(weights)
    recorded = read_onnx_metadata(int8_path).get("weights_sha256")
    current = weights_metadata(folder).get("weights_sha256")
    if recorded and current and recorded != current:
        raise FusionError(f"{int8_path} was quantised from other weights (sha256 {recorded}) than {folder} "
                          f"({current}); re-export it from these weights or pass the --weights it came from")
    set_threads()
    model = load_student(folder)
    data = Path(data) if data else default_data_dir()
    names = names or split_file(data, "test")
    size = static_input_size(int8_path)
    inputs = load_inputs(data, names, count, size, model.config.vis_channels)
    reference = torch_outputs(model, inputs)
    candidate = run_model(int8_path, inputs, threads=threads)
    compared = compare_outputs(reference, candidate, [i.name for i in inputs])
    pair_psnrs = np.array([p["psnr_db"] for p in compared["per_pair"].values()])
    fp32_metrics, int8_metrics = mean_fusion_metrics(inputs, reference), mean_fusion_metrics(inputs, candidate)
    delta = {m: int8_metrics[m] - fp32_metrics[m] for m in fp32_metrics}
    failures = []
    median = float(np.median(pair_psnrs))
    if not median >= min_median_psnr:
        failures.append(f"median PSNR {median:.2f} dB < {min_median_psnr:g} dB")
    for m in limit_violations(delta, limits):
        failures.append(f"{m} {metric_drop(m, delta[m]):.4f} below fp32 > {limits[m]:g}")
    return {"int8": shown_path(int8_path), "weights": shown_path(folder), "quantization":
            read_onnx_metadata(int8_path).get("quantization"), "data": shown_path(data),
            "pairs": len(inputs), "scored_at": list(size) if size else "native sizes",
            "median_pair_psnr_db": median, "mean_pair_psnr_db": float(pair_psnrs.mean()),
            "min_pair_psnr_db": float(pair_psnrs.min()), "worst_pair": min(compared["per_pair"],
                                                                           key=lambda n: compared["per_pair"][n]["psnr_db"]),
            "all_pixels_psnr_db": compared["psnr_db"], "metrics": {"fp32": fp32_metrics, "int8": int8_metrics,
                                                                  "delta": delta},
            "min_median_psnr_db": min_median_psnr, "max_metric_drop": limits,
            "passed": not failures, "failures": failures,
            "per_pair_psnr_db": {n: p["psnr_db"] for n, p in compared["per_pair"].items()}}


def main(argv=None) -> int:
    from export.quantize import DEFAULT_METRIC_DROP, format_deltas, parse_metric_limits
    from runtime.errors import EXIT_USAGE
    parser = argparse.ArgumentParser(prog="python -m export.int8_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("int8", help="the INT8 ONNX to check (e.g. m8.onnx, runtime/models/default/model.int8.onnx)")
    parser.add_argument("--weights", default="default", help="the fp32 student it was quantised from")
    parser.add_argument("--data", default=None, help="dataset folder (default: $FUSION_DATA or "
                        "../shared/data/roadscene)")
    parser.add_argument("--names", default=None, help="pairs to score (default: DATA/test.txt, all of them)")
    parser.add_argument("--count", type=int, default=None, help="score only this many, spread over --names")
    parser.add_argument("--min-median-psnr", type=float, default=MIN_MEDIAN_PSNR_DB, help="dB")
    parser.add_argument("--max-metric-drop", default=DEFAULT_METRIC_DROP, help="METRIC=AMOUNT,... or 'none'")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")
    parser.add_argument("--json", default=None, help="also write the full result (per-pair PSNR) here")
    args = parser.parse_args(argv)
    try:
        result = check_int8(args.int8, args.weights, args.data, args.names, args.count, args.min_median_psnr,
                            parse_metric_limits(args.max_metric_drop), args.threads)
    except FusionError as exc:
        print(f"python -m export.int8_check: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        from runtime.imageio import write_json
        write_json(args.json, result)
    delta = result["metrics"]["delta"]
    print(f"{result['int8']} ({result['quantization']}) vs fp32 {result['weights']} on {result['pairs']} pairs of "
          f"{result['data']} at {result['scored_at']}:")
    print(f"  PSNR per pair: median {result['median_pair_psnr_db']:.2f} dB, mean {result['mean_pair_psnr_db']:.2f}, "
          f"worst {result['min_pair_psnr_db']:.2f} ({result['worst_pair']}); all pixels "
          f"{result['all_pixels_psnr_db']:.2f} dB")
    print(f"  metric deltas (INT8 - fp32): {format_deltas(delta)}")
    print("PASS" if result["passed"] else "FAIL: " + "; ".join(result["failures"]))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
