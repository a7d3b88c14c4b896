"""Training-input throughput in crops per second: the albumentations path (one crop at a time, as each DataLoader
worker runs it) against the device path (distill/gpu_augment.py, whole batches with kornia) on real RoadScene pairs.

    python -m benchmarks.augment_speed                         # CPU: both paths, one thread
    python -m benchmarks.augment_speed --device cuda --batch 1024 --out runs/bench/augment_speed.json

The CPU figure is per worker process (a DataLoader with W workers gives at most W times it); the device figure is
the whole batch pipeline, synchronised before and after the timed steps. Medians of --repeats runs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]


def load_items(data: Path, count: int):
    """(ir, vis, target) triplets of the first `count` training pairs; the target is the mean of IR and VIS luminance
    (a stand-in with the right shape: augmentation cost does not depend on the target's content)."""
    from runtime.color import luminance
    from runtime.errors import FusionError
    from runtime.imageio import discover_pairs, read_names, read_pair
    names = read_names(data / "train.txt")[:count]
    if not names:
        raise FusionError(f"no training names in {data / 'train.txt'}")
    items = []
    for pair in discover_pairs(data, names=names):
        ir, vis = read_pair(pair)
        items.append((ir, vis, (ir + luminance(vis)) / 2))
    return items


def cpu_crops_per_second(items, config, crops: int) -> float:
    import numpy as np
    import torch

    from distill.data import PairAugment
    from runtime.color import split_luminance
    augment, rng = PairAugment(config, seed=0), np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(crops):
        ir, vis, target = items[rng.integers(len(items))]
        ir, vis, target = augment(ir, vis, target)
        vis = split_luminance(vis)[0]
        # what FusionPairs.__getitem__ hands the collate function
        torch.from_numpy(ir[None].copy()), torch.from_numpy(vis[None].copy()), torch.from_numpy(target[None].copy())
    return crops / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.augment_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "roadscene"))
    parser.add_argument("--pairs", type=int, default=32, help="training pairs held (default 32)")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch", type=int, default=256, help="device-path batch size")
    parser.add_argument("--steps", type=int, default=10, help="timed device batches per repeat")
    parser.add_argument("--cpu-crops", type=int, default=200, help="timed CPU-path crops per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="device of the kornia path: cpu, cuda, cuda:1")
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenCV CPU threads (default 1)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    import cv2
    import torch

    from distill.data import AugmentConfig
    from distill.gpu_augment import DeviceBatches, crops_per_second
    from runtime.errors import FusionError
    try:
        if str(args.device).startswith("cuda") and not torch.cuda.is_available():
            raise FusionError(f"--device {args.device}: no CUDA GPU here; use --device cpu")
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
        items = load_items(Path(args.data), args.pairs)
    except FusionError as exc:
        print(f"augment_speed: error: {exc}", file=sys.stderr)
        return 2
    config = AugmentConfig(crop=args.crop)
    batches = DeviceBatches(SimpleNamespace(items=items, vis_channels=1), config, args.device,
                            batch_size=args.batch)
    cpu = [cpu_crops_per_second(items, config, args.cpu_crops) for _ in range(args.repeats)]
    device = [crops_per_second(batches, steps=args.steps) for _ in range(args.repeats)]
    name = torch.cuda.get_device_name(batches.device) if batches.device.type == "cuda" else "CPU"
    rows = [("albumentations, per crop (one worker)", "cpu", 1, statistics.median(cpu)),
            ("kornia batches (distill/gpu_augment.py)", f"{batches.device} ({name})", args.batch,
             statistics.median(device))]
    print(f"{len(items)} pairs, crop {args.crop}, {args.threads} CPU thread(s), median of {args.repeats}")
    print("| path | device | batch | crops/s |\n| --- | --- | ---: | ---: |")
    for label, where, batch, rate in rows:
        print(f"| {label} | {where} | {batch} | {rate:.0f} |")
    print(f"ratio device/cpu: {rows[1][3] / rows[0][3]:.2f}x")
    if args.out:
        from runtime.imageio import write_json
        write_json(args.out, {"pairs": len(items), "crop": args.crop, "threads": args.threads,
                              "rows": [{"path": r[0], "device": r[1], "batch": r[2], "crops_per_s": round(r[3], 1)}
                                       for r in rows]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
