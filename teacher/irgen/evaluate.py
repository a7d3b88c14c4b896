"""Evaluate synthesised IR against the real IR of aligned pairs: PSNR, SSIM (and LPIPS when its backbone weights are
on disk), beside two honest baselines, with a picture grid.

    python -m teacher.irgen.evaluate --data ../shared/data/roadscene --names ../shared/data/roadscene/test.txt \\
        --pred tqd=build/irgen/synth/tqd-test --pred decomp=build/irgen/synth/decomp-test --out build/irgen/eval

Baselines: `vis-luminance` uses the visible luminance (BT.601 Y) as the IR image; `inverted-luminance` uses 1 - Y;
with `--train-names`, `train-mean` is a flat image at the mean IR level of the training pairs (what a model that
learned only the average would score). A generator that does not beat them has learned nothing useful about thermal
appearance.

Metrics on 8-bit images (every prediction and baseline is rounded to 8 bits first, like a written PNG):
- PSNR with a peak of 255;
- SSIM: Wang et al. 2004, Gaussian window 11 / sigma 1.5, K1 0.01, K2 0.03, data range 255 (not the fusion papers'
  7x7 uniform-window variant used by `fusion eval`);
- LPIPS (AlexNet, v0.1): only when the `lpips` package and the AlexNet ImageNet weights are both present locally;
  otherwise reported as unavailable, never approximated.
Works on any generator's output (tqd, decomp, diffusion): a folder of IR images named like the pairs, or a dataset
folder holding ir/.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from runtime.color import luminance
from runtime.errors import FusionError
from runtime.imageio import (IR_FOLDER_NAMES, discover_pairs, list_images, read_ir, read_vis, to_uint8, write_image,
                             write_json, write_text)

BASELINES = ("vis-luminance", "inverted-luminance")


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """PSNR in dB of two 8-bit-valued images (floats in [0,255])."""
    mse = float(np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)


def ssim(reference: np.ndarray, test: np.ndarray) -> float:
    """Mean SSIM (Gaussian 11x11, sigma 1.5, data range 255) of two gray images in [0,255]."""
    x, y = reference.astype(np.float64), test.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(a):
        return cv2.GaussianBlur(a, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    # Drop the 5-pixel border where the window leaves the image (as skimage does with its `pad`).
    return float(ssim_map[5:-5, 5:-5].mean())


class LPIPSMetric:
    """LPIPS (AlexNet) when the lpips package and the torchvision AlexNet ImageNet weights are on disk, else None
    with `reason` saying what is missing. Never downloads."""

    ALEXNET_FILE = "alexnet-owt-7be5be79.pth"

    def __init__(self):
        self.model, self.reason = None, ""
        try:
            import lpips  # noqa: F401
            import torch
        except ImportError as exc:
            self.reason = f"the lpips package is not installed ({exc.name})"
            return
        checkpoint = Path(torch.hub.get_dir()) / "checkpoints" / self.ALEXNET_FILE
        if not checkpoint.is_file():
            self.reason = f"the AlexNet ImageNet weights LPIPS needs are not on this machine ({checkpoint})"
            return
        import lpips
        self.model = lpips.LPIPS(net="alex", verbose=False).eval()

    def __call__(self, reference: np.ndarray, test: np.ndarray) -> float:
        import torch

        def prep(a):
            t = torch.from_numpy(a.astype(np.float32) / 127.5 - 1.0)[None, None]
            return t.expand(1, 3, *a.shape)

        with torch.no_grad():
            return float(self.model(prep(reference), prep(test)))


def prediction_files(folder: str | Path) -> dict[str, Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FusionError(f"prediction folder not found: {folder}")
    files = list_images(folder)
    if not files:
        for name in IR_FOLDER_NAMES:
            if (folder / name).is_dir():
                return list_images(folder / name)
    return files


def as_8bit(image: np.ndarray) -> np.ndarray:
    """float [0,1] -> float64 in [0,255] holding 8-bit values."""
    return to_uint8(image).astype(np.float64)


def training_mean_ir(data: str, names: str) -> float:
    """Mean IR level over the training pairs, in [0,1]."""
    return float(np.mean([read_ir(p.ir).mean() for p in discover_pairs(data=data, names=names)]))


def evaluate(data: str, names: str | None, predictions: dict[str, str], lpips_metric: LPIPSMetric | None = None,
             baselines: bool = True, train_mean: float | None = None) -> dict:
    pairs = discover_pairs(data=data, names=names)
    sources = {label: prediction_files(folder) for label, folder in predictions.items()}
    for label, files in sources.items():
        missing = [p.name for p in pairs if p.name not in files]
        if missing:
            raise FusionError(f"prediction '{label}' has no image for {len(missing)} pair(s) (first: {missing[0]}); "
                              f"run synth-ir on the same names")
    methods = (list(BASELINES) + (["train-mean"] if train_mean is not None else []) if baselines else []) \
        + list(predictions)
    per_image: dict[str, dict[str, dict[str, float]]] = {m: {} for m in methods}
    from tqdm import tqdm
    for pair in tqdm(pairs, desc="evaluating", unit="pair", file=sys.stderr, leave=False):
        real = as_8bit(read_ir(pair.ir))
        vis = read_vis(pair.vis)
        y = luminance(vis) if vis.ndim == 3 else vis
        candidates = {}
        if baselines:
            candidates["vis-luminance"] = y
            candidates["inverted-luminance"] = 1.0 - y
            if train_mean is not None:
                candidates["train-mean"] = np.full_like(y, train_mean)
        for label, files in sources.items():
            candidates[label] = read_ir(files[pair.name])
        for label, image in candidates.items():
            if image.shape != real.shape:
                raise FusionError(f"'{label}' image of {pair.name} is {image.shape[1]}x{image.shape[0]}, the real IR "
                                  f"is {real.shape[1]}x{real.shape[0]}")
            test = as_8bit(image)
            scores = {"PSNR": psnr(real, test), "SSIM": ssim(real, test)}
            if lpips_metric is not None and lpips_metric.model is not None:
                scores["LPIPS"] = lpips_metric(real, test)
            per_image[label][pair.name] = scores
    summary = {}
    for label, rows in per_image.items():
        keys = next(iter(rows.values())).keys()
        summary[label] = {k: float(np.mean([r[k] for r in rows.values()])) for k in keys}
        summary[label].update({f"{k}_median": float(np.median([r[k] for r in rows.values()])) for k in keys})
    return {"count": len(pairs), "mean": summary, "per_image": per_image, "train_mean_ir": train_mean,
            "lpips": "computed" if lpips_metric is not None and lpips_metric.model is not None else
            (lpips_metric.reason if lpips_metric is not None else "not requested")}


def markdown(result: dict) -> str:
    lines = [f"| method | PSNR (dB) | SSIM | LPIPS | n |", "| --- | --- | --- | --- | --- |"]
    for label, scores in result["mean"].items():
        lp = f"{scores['LPIPS']:.4f}" if "LPIPS" in scores else "n/a"
        lines.append(f"| {label} | {scores['PSNR']:.2f} (median {scores['PSNR_median']:.2f}) | "
                     f"{scores['SSIM']:.4f} (median {scores['SSIM_median']:.4f}) | {lp} | {result['count']} |")
    if result["lpips"] != "computed":
        lines.append(f"\nLPIPS not computed: {result['lpips']}.")
    return "\n".join(lines) + "\n"


def picture_grid(data: str, names: list[str], predictions: dict[str, str], result: dict | None = None,
                 width: int = 200) -> np.ndarray:
    """Rows of RGB | real IR | baselines | each prediction, labelled with the per-image PSNR."""
    from teacher.irgen.visualize import grid
    pairs = {p.name: p for p in discover_pairs(data=data, names=names)}
    sources = {label: prediction_files(folder) for label, folder in predictions.items()}
    rows = []
    for name in names:
        pair = pairs[name]
        vis = read_vis(pair.vis)
        y = luminance(vis) if vis.ndim == 3 else vis
        row = [(name, vis), ("real IR", read_ir(pair.ir))]
        images = {"vis-luminance": y, "inverted-luminance": 1.0 - y}
        images.update({label: read_ir(files[name]) for label, files in sources.items()})
        for label, image in images.items():
            score = ""
            if result is not None and name in result["per_image"].get(label, {}):
                score = f" {result['per_image'][label][name]['PSNR']:.1f}dB"
            row.append((label + score, image))
        rows.append(row)
    return grid(rows, width=width)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset folder with the real ir/ and vi/")
    parser.add_argument("--names", help="split file of the pairs to evaluate (e.g. test.txt)")
    parser.add_argument("--pred", action="append", default=[], metavar="LABEL=DIR",
                        help="synthesised IR to evaluate (a folder of images, or a synth-ir dataset folder); "
                             "repeatable")
    parser.add_argument("--train-names", help="training split: adds the flat `train-mean` baseline")
    parser.add_argument("--out", required=True, help="folder for results.json, results.md and grid.png")
    parser.add_argument("--no-lpips", action="store_true", help="skip LPIPS even when it is available")
    parser.add_argument("--grid", type=int, default=6, metavar="N", help="pairs in the picture grid (0: none)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    predictions = {}
    for item in args.pred:
        if "=" not in item:
            raise FusionError(f"--pred must look like LABEL=DIR, got '{item}'")
        label, folder = item.split("=", 1)
        predictions[label] = folder
    train_mean = training_mean_ir(args.data, args.train_names) if args.train_names else None
    result = evaluate(args.data, args.names, predictions, None if args.no_lpips else LPIPSMetric(),
                      train_mean=train_mean)
    out = Path(args.out)
    write_json(out / "results.json", result)
    table = markdown(result)
    write_text(out / "results.md", table)
    print(table)
    if args.grid > 0:
        names = list(result["per_image"][next(iter(result["per_image"]))])
        step = max(1, len(names) // args.grid)
        write_image(out / "grid.png", picture_grid(args.data, names[::step][: args.grid], predictions, result))
        print(f"picture grid: {out / 'grid.png'}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m teacher.irgen.evaluate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except FusionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
