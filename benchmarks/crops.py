"""Pixel-exact crops of fused images beside their sources: how fine texture (foliage, brick, text) survives fusion.

    python -m benchmarks.crops --data ../shared/data/roadscene --name FLIR_08284 --box 300,120,160,120 \\
        --column "teacher=runs/distill/eval/default/roadscene_test/teacher_pyramid-sharp" \\
        --column "nano2=runs/distill/eval/default/roadscene_test/student" --zoom 3 --out docs/img/crop.png

Each tile is the same box of one image (IR, VIS luminance, then every --column folder's <name>.png) enlarged by an
integer factor with nearest-neighbour sampling, so every source pixel is a visible square and nothing is smoothed
or sharpened by the picture itself. Sources are shown as the fusion saw them: IR and the VIS luminance (BT.601).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def load_gray(path: Path) -> np.ndarray:
    """8-bit gray image of a file (colour files as BT.601 luminance)."""
    import cv2

    from runtime.errors import FusionError
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise FusionError(f"cannot read {path}")
    if img.dtype != np.uint8:
        img = (img / 257).astype(np.uint8)
    if img.ndim == 3:
        img = cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2YCrCb)[..., 0]
    return img


def crop_strip(tiles: list[tuple[str, np.ndarray]], box: tuple[int, int, int, int], zoom: int) -> np.ndarray:
    """One row: each (label, gray image) cropped to box (x, y, w, h), enlarged `zoom` times (nearest), labelled."""
    import cv2

    from runtime.errors import FusionError
    from runtime.imageio import draw_label
    x, y, w, h = box
    out = []
    for label, img in tiles:
        if y + h > img.shape[0] or x + w > img.shape[1]:
            raise FusionError(f"--box {x},{y},{w},{h} does not fit the {label} image ({img.shape[1]}x{img.shape[0]})")
        tile = cv2.resize(img[y:y + h, x:x + w], (w * zoom, h * zoom), interpolation=cv2.INTER_NEAREST)
        tile = np.ascontiguousarray(np.repeat(tile[..., None], 3, axis=2))
        draw_label(tile, label)
        out += [tile, np.full((h * zoom, 4, 3), 255, np.uint8)]
    return np.concatenate(out[:-1], axis=1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.crops", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="dataset folder with ir/ and vi/")
    parser.add_argument("--name", action="append", required=True, help="pair stem (repeat: one row each)")
    parser.add_argument("--box", action="append", required=True,
                        help="x,y,w,h of the crop in source pixels (one per --name, or one for all)")
    parser.add_argument("--column", action="append", default=[], help="LABEL=FOLDER of fused <name>.png images")
    parser.add_argument("--zoom", type=int, default=3, help="integer enlargement (nearest neighbour)")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    from runtime.errors import FusionError
    from runtime.imageio import write_image
    try:
        boxes = args.box * len(args.name) if len(args.box) == 1 else args.box
        if len(boxes) != len(args.name):
            raise FusionError("give one --box, or one per --name")
        columns = []
        for spec in args.column:
            label, sep, folder = spec.partition("=")
            if not sep:
                raise FusionError(f"--column {spec!r}: use LABEL=FOLDER")
            columns.append((label, Path(folder)))
        rows = []
        for name, box_text in zip(args.name, boxes):
            box = tuple(int(v) for v in box_text.split(","))
            if len(box) != 4 or min(box[2:]) <= 0:
                raise FusionError(f"--box {box_text!r}: use x,y,w,h with positive w and h")
            def find(folder: Path) -> Path:
                hits = sorted(folder.glob(f"{name}.*"))
                if not hits:
                    raise FusionError(f"no image {name}.* in {folder}")
                return hits[0]
            tiles = [("IR", load_gray(find(args.data / "ir"))), ("VIS (Y)", load_gray(find(args.data / "vi")))]
            tiles += [(label, load_gray(find(folder))) for label, folder in columns]
            rows.append(crop_strip(tiles, box, args.zoom))
        width = max(r.shape[1] for r in rows)
        rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
        print(write_image(args.out, np.concatenate(rows, axis=0)[:-4]))
    except (FusionError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
