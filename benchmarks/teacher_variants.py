"""Settings of the `pyramid` teacher side by side on training pairs: sharpness (SF, AG) against VIF and Qabf.

    python -m benchmarks.teacher_variants                                   # the table in docs/distill.md
    python -m benchmarks.teacher_variants "detail_gain=1.2" "energy_sigma=1.0,detail_gain=1.1"

Each argument is one variant: keyword settings of teacher.multiscale.SaliencyPyramidFusion. Rows for the plain
`pyramid` and the `laplacian` baseline come first. Pairs: the first --count-day RoadScene train.txt pairs and the
first --count-night LLVIP-mini train.txt pairs (training lists only: choosing a teacher is tuning), luminance by
OpenCV's BT.601 YCrCb, frames larger than --max-side downscaled with INTER_AREA (LLVIP's 1280x1024 to 640x512, as
the training recipe loads them); each fusion rounded to 8 bits before the metrics (distill.metrics).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

DEFAULT_VARIANTS = ("energy_sigma=1.0", "energy_sigma=0.5", "detail_gain=1.1", "detail_gain=1.15", "detail_gain=1.3",
                    "detail_gain=1.3,detail_levels=2", "detail_gain=1.2,detail_levels=1",
                    "detail_gain=1.1,energy_sigma=1.0")


def parse_settings(text: str) -> dict:
    """"a=1,b=2.5" -> {"a": 1, "b": 2.5} (numbers only)."""
    from runtime.errors import FusionError
    settings = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        try:
            settings[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise FusionError(f"teacher variant {text!r}: use key=number[,key=number]")
    return settings


def load_pairs(root: Path, names: str, count: int, max_side: int) -> list[tuple[np.ndarray, np.ndarray]]:
    import cv2

    from runtime.errors import FusionError
    pairs = []
    for name in (root / names).read_text().split()[:count]:
        ir = cv2.imread(str(root / "ir" / name), cv2.IMREAD_GRAYSCALE)
        vis = cv2.imread(str(root / "vi" / name), cv2.IMREAD_COLOR)
        if ir is None or vis is None:
            raise FusionError(f"cannot read the pair {name} under {root}")
        vis_y = cv2.cvtColor(vis, cv2.COLOR_BGR2YCrCb)[..., 0]
        scale = max_side / max(ir.shape)
        if scale < 1:
            ir = cv2.resize(ir, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            vis_y = cv2.resize(vis_y, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        pairs.append((ir, vis_y))
    return pairs


def score(teacher, pairs) -> dict:
    import torch

    from distill import metrics
    rows = []
    for ir, vis_y in pairs:
        a = torch.from_numpy(ir).float()[None, None] / 255
        b = torch.from_numpy(vis_y).float()[None, None] / 255
        fused = (teacher.fuse_batch(a, b)[0, 0].numpy() * 255).round().clip(0, 255).astype(np.uint8)
        rows.append([metrics.spatial_frequency(fused), metrics.average_gradient(fused),
                     metrics.visual_information_fidelity(ir, vis_y, fused), metrics.qabf(ir, vis_y, fused),
                     metrics.entropy(fused), metrics.standard_deviation(fused)])
    return dict(zip(("SF", "AG", "VIF", "Qabf", "EN", "SD"), np.mean(rows, axis=0).tolist()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.teacher_variants", description=__doc__.split("\n")[0])
    parser.add_argument("variants", nargs="*", help="key=value[,key=value] settings of the pyramid teacher "
                                                    "(default: the variants of docs/distill.md)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--count-day", type=int, default=30)
    parser.add_argument("--count-night", type=int, default=8)
    parser.add_argument("--max-side", type=int, default=640)
    args = parser.parse_args(argv)
    import torch

    from runtime.errors import FusionError
    from teacher.registry import load_teacher_class
    torch.set_num_threads(1)
    try:
        sets = {"RoadScene train": load_pairs(args.data / "roadscene", "train.txt", args.count_day, args.max_side),
                "LLVIP train": load_pairs(args.data / "llvip_mini", "train.txt", args.count_night, args.max_side)}
        pyramid = load_teacher_class("pyramid", "fusion")
        teachers = {"pyramid": pyramid(), "laplacian": load_teacher_class("laplacian", "baseline")()}
        for text in args.variants or DEFAULT_VARIANTS:
            teachers[f"pyramid {text}"] = pyramid(**parse_settings(text))
    except (FusionError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("| teacher | set | SF | AG | VIF | Qabf | EN | SD |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, teacher in teachers.items():
        for set_name, pairs in sets.items():
            s = score(teacher, pairs)
            print(f"| {label} | {set_name} ({len(pairs)}) | {s['SF']:.2f} | {s['AG']:.2f} | {s['VIF']:.3f} | "
                  f"{s['Qabf']:.3f} | {s['EN']:.3f} | {s['SD']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
