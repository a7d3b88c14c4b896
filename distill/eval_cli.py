"""`fusion eval`: the field's fusion metrics on a folder of fused images, as a Markdown table, JSON and CSV.

    fusion eval --ir DIR --vis DIR --fused DIR [--names FILE] [--json OUT] [--csv OUT] [--per-image]
    fusion eval --data ../shared/data/roadscene --names test.txt --fused runs/fused --json runs/metrics.json

Fused images match their sources by file stem (any image extension; colour files are scored on their luminance).
Only numpy and OpenCV are needed, except for LPIPS (--lpips-backbone), which needs torch and lpips.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Evaluate a folder of fused images against their IR/VIS sources with the metrics of the "
                          "published tables (EN SD SF AG MI SCD VIF Qabf SSIM PSNR CC MSE, optionally LPIPS).")
    sources = parser.add_argument_group("sources (a dataset folder, or --ir and --vis)")
    sources.add_argument("--data", type=Path, help="dataset folder holding ir/ and vi/ (instead of --ir/--vis)")
    sources.add_argument("--ir", type=Path, help="folder of infrared source images")
    sources.add_argument("--vis", type=Path, help="folder of visible source images")
    parser.add_argument("--fused", type=Path, required=True,
                        help="folder of fused images, named like their sources (extension may differ)")
    parser.add_argument("--names", type=Path,
                        help="split file listing the images to evaluate, e.g. test.txt (looked up in --data too; "
                             "default: every IR/VIS pair)")
    parser.add_argument("--json", type=Path, metavar="OUT",
                        help='write {"mean": {...}, "per_image": {name: {...}}, "count": N} here')
    parser.add_argument("--csv", type=Path, metavar="OUT", help="write one row per image and a final 'mean' row here")
    parser.add_argument("--per-image", action="store_true", help="print a table row per image above the mean")
    parser.add_argument("--lpips-backbone", type=Path, metavar="PATH",
                        help="add LPIPS, loading the backbone (torchvision alexnet/vgg16 weights, .pth or "
                             ".safetensors) from PATH; needs torch and lpips")
    parser.add_argument("--lpips", action="store_true",
                        help="add LPIPS with the backbone named by $FUSION_LPIPS_BACKBONE")
    parser.add_argument("--lpips-net", choices=("alex", "vgg"), default="alex",
                        help="LPIPS backbone architecture (default: %(default)s)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip source pairs whose IR or VIS partner is missing (with a warning) instead of failing")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _source_folders(args) -> tuple[Path, Path]:
    from runtime.errors import FusionError
    from runtime.imageio import dataset_folders

    if args.data is not None:
        if args.ir is not None or args.vis is not None:
            raise FusionError("give either --data DIR or --ir DIR and --vis DIR, not both")
        ir_dir, vis_dir, _ = dataset_folders(args.data)
        return ir_dir, vis_dir
    if args.ir is None or args.vis is None:
        raise FusionError("give the source folders: --ir DIR and --vis DIR (or --data DIR holding ir/ and vi/)")
    return args.ir, args.vis


def _finite_or_none(value: float):
    return value if math.isfinite(value) else None


def results_to_json(results: dict) -> dict:
    """The JSON document: non-finite values (PSNR of a perfect match, a correlation with a flat image) as null."""
    clean = lambda row: {k: _finite_or_none(v) for k, v in row.items()}  # noqa: E731
    return {"mean": clean(results["mean"]),
            "per_image": {name: clean(row) for name, row in results["per_image"].items()},
            "count": results["count"]}


def results_to_csv(results: dict) -> str:
    keys = list(results["mean"])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["name"] + keys)
    for name, row in list(results["per_image"].items()) + [("mean", results["mean"])]:
        writer.writerow([name] + [repr(float(row[k])) for k in keys])
    return buffer.getvalue()


def run(args) -> int:
    from distill.metrics import evaluate_folder, markdown_table
    from runtime.imageio import write_json, write_text

    ir_dir, vis_dir = _source_folders(args)
    names = args.names
    if names is not None and not names.is_file() and args.data is not None and (args.data / names).is_file():
        names = args.data / names  # `--data DIR --names test.txt` means DIR/test.txt
    lpips_net = args.lpips_net if (args.lpips or args.lpips_backbone is not None) else None
    results = evaluate_folder(ir_dir, vis_dir, args.fused, names=names, skip_bad=args.skip_bad,
                              progress=not args.quiet and sys.stderr.isatty(),
                              lpips_backbone=args.lpips_backbone, lpips_net=lpips_net)
    rows = dict(results["per_image"]) if args.per_image else {}
    mean_label = f"mean ({results['count']} images)"
    rows[mean_label] = results["mean"]
    sys.stdout.write(markdown_table(rows, label="image"))
    sys.stdout.flush()
    if args.json is not None:
        write_json(args.json, results_to_json(results))
        print(f"wrote {args.json}", file=sys.stderr)
    if args.csv is not None:
        write_text(args.csv, results_to_csv(results))
        print(f"wrote {args.csv}", file=sys.stderr)
    return 0
