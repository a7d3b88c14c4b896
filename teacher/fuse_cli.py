"""`fusion teacher fuse`: run a fusion teacher over a dataset and write TEACHER_FUSED/ (resumable, sharded).

    fusion teacher fuse --teacher em --data ../shared/data/roadscene --names ../shared/data/roadscene/train.txt
    torchrun --nproc_per_node 4 -m runtime.cli teacher fuse --teacher ddfm --prior PRIOR --data DIR --resume

One 8-bit PNG of the fused luminance per pair (same stem), optionally a colour PNG (visible CbCr put back) under
OUT/color/. Outputs are written atomically, so `--resume` after Ctrl-C or a crash redoes nothing finished and never
trusts a truncated file. Under torchrun / accelerate each rank takes its own shard with no flags; `--shard I/N` does
the same by hand. A manifest (manifest.json, or manifest.IofN.json per shard) records the teacher, its settings,
the model hash and package versions.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from runtime.errors import FusionError

TEACHER_KINDS = ("fusion", "baseline")


def configure_fuse(parser: argparse.ArgumentParser) -> None:
    from teacher.registry import TEACHERS
    names = [n for n, e in TEACHERS.items() if e.kind in TEACHER_KINDS]
    parser.add_argument("--teacher", default="em", metavar="NAME",
                        help=f"fusion teacher or baseline: {', '.join(names)} (default em)")
    source = parser.add_argument_group("input (a dataset folder, or two folders)")
    source.add_argument("--data", help="dataset folder holding ir/ and vi/ (output defaults to DATA/TEACHER_FUSED)")
    source.add_argument("--ir", help="IR folder (with --vis)")
    source.add_argument("--vis", help="visible folder (with --ir)")
    source.add_argument("--names", help="split file listing the stems to fuse (default: every pair)")
    source.add_argument("--skip-bad", action="store_true",
                        help="skip unmatched, unreadable or misaligned pairs with a warning instead of stopping")
    parser.add_argument("--out", help="output folder (default DATA/TEACHER_FUSED)")
    parser.add_argument("--color", action="store_true", help="also write colour PNGs under OUT/color/")
    parser.add_argument("--resume", action="store_true", help="keep finished outputs and do the rest")
    parser.add_argument("--shard", metavar="I/N", help="do the I-th of N shards (default: torchrun's RANK/WORLD_SIZE)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:K or auto (default: cuda when present)")
    parser.add_argument("--steps", type=int, help="em: iteration cap; ddfm: sampling steps (default 100)")
    parser.add_argument("--seed", type=int, default=3407, help="random seed for sampling teachers (default 3407)")
    parser.add_argument("--batch-size", type=int, default=1, help="pairs of one size fused together (default 1)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    for name in names:
        cls = _teacher_class_or_none(name)
        if cls is not None:
            cls.add_arguments(parser)
    parser.set_defaults(func=run_fuse)


def _teacher_class_or_none(name: str):
    from teacher.registry import load_teacher_class
    try:
        return load_teacher_class(name, TEACHER_KINDS)
    except (ImportError, AttributeError, FusionError):
        return None


def resolve_device(requested: str | None) -> str:
    import torch
    requested = requested or "auto"
    local_rank = os.environ.get("LOCAL_RANK")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise FusionError(f"--device {requested} was asked for but no CUDA GPU is visible; use --device cpu")
        if requested == "cuda" and local_rank is not None:
            requested = f"cuda:{int(local_rank)}"
    elif requested != "cpu":
        raise FusionError(f"--device must be cpu, cuda, cuda:K or auto, got '{requested}'")
    return requested


def _init_distributed(device: str):
    """Join the torchrun / accelerate process group when launched by one (for the final barrier); else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "MASTER_ADDR" not in os.environ:
        return None
    import torch
    import torch.distributed as dist
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))  # one GPU per rank, or NCCL collectives hang
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist


def _leave(dist) -> None:
    """Wait for every rank, then leave the process group (no-op outside torchrun)."""
    if dist is not None:
        dist.barrier()
        dist.destroy_process_group()


def _check_same_producer(out_dir: Path, teacher_name: str, settings: dict) -> None:
    """Refuse to add outputs of one teacher (or other settings) to a folder another one filled."""
    import json
    for manifest in sorted(out_dir.glob("manifest*.json")) if out_dir.is_dir() else []:
        try:
            previous = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        same = previous.get("teacher") == teacher_name and json.loads(json.dumps(settings)) == previous.get("settings")
        if not same:
            raise FusionError(f"{out_dir} holds outputs of teacher '{previous.get('teacher')}' with settings "
                              f"{previous.get('settings')} ({manifest.name}); write {teacher_name} with these "
                              f"settings to another --out")


def _model_hash(teacher) -> str | None:
    folder = getattr(teacher, "weights_path", None)
    if not folder:
        return None
    from teacher.batch import file_hash
    return file_hash(folder)


def run_fuse(args) -> int:
    from runtime.imageio import discover_pairs
    from runtime.errors import require
    from teacher.batch import pending, resolve_shard, take_shard, write_manifest
    from teacher.registry import load_teacher_class

    torch = require("torch", purpose="`fusion teacher fuse`")
    if args.data is None and (args.ir is None or args.vis is None):
        raise FusionError("give a dataset folder (--data DIR) or both --ir DIR and --vis DIR")
    if args.out is None and args.data is None:
        raise FusionError("--out is required with --ir/--vis (the default is DATA/TEACHER_FUSED)")
    if args.batch_size < 1:
        raise FusionError("--batch-size must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = Path(args.out) if args.out else Path(args.data) / "TEACHER_FUSED"
    shard = resolve_shard(args.shard)
    device = resolve_device(args.device)
    args.device = device
    teacher_cls = load_teacher_class(args.teacher, TEACHER_KINDS)

    pairs = discover_pairs(data=args.data, ir_dir=args.ir, vis_dir=args.vis, names=args.names,
                           skip_bad=args.skip_bad)
    mine = take_shard(pairs, shard)

    def output_of(pair):
        return out_dir / f"{pair.name}.png"

    todo, already = pending(mine, output_of, args.resume)
    if args.color and args.resume:
        # A luminance PNG without its colour partner (interrupted between the two writes) is redone.
        missing_color = [p for p in mine if output_of(p).exists() and not (out_dir / "color" / f"{p.name}.png").exists()]
        todo = sorted(set(todo) | set(missing_color), key=mine.index)
        already -= len(missing_color)
    dist = _init_distributed(device)

    teacher = teacher_cls.from_args(args)
    _check_same_producer(out_dir, args.teacher, teacher.settings())
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / ("manifest.json" if shard is None else f"manifest.{shard.label}.json")
    if not todo and manifest_path.exists():
        # Everything is there: keep the manifest of the run that made it (its timings), do not rewrite it empty.
        print(f"{args.teacher}: nothing to do, all {already} pair(s) already in {out_dir}", file=sys.stderr)
        _leave(dist)  # other ranks may still have work: this one must still meet them at the barrier
        return 0
    record = dict(teacher=args.teacher, settings=teacher.settings(), model_hash=_model_hash(teacher),
                  data=str(args.data) if args.data else {"ir": str(args.ir), "vis": str(args.vis)},
                  names=str(args.names) if args.names else None, device=device, seed=args.seed,
                  pairs_total=len(pairs), pairs_in_shard=len(mine), already_done=already)
    write_manifest(out_dir, shard, **record, status="running")
    label = f" [shard {shard.index}/{shard.count}]" if shard else ""
    print(f"{args.teacher}: {len(todo)} pair(s) to fuse, {already} already done, into {out_dir}{label}",
          file=sys.stderr)

    skipped: list[str] = []

    def unreadable(pair, exc: FusionError) -> None:
        if not args.skip_bad:
            raise FusionError(f"{exc} (nothing else was changed; fix or remove this pair, or pass --skip-bad)"
                              ) from None
        print(f"warning: skipping {pair.name}: {exc}", file=sys.stderr)
        skipped.append(pair.name)

    done = fuse_into(teacher, todo, output_of, device, batch_size=args.batch_size, seed=args.seed,
                     colour_dir=out_dir / "color" if args.color else None, on_unreadable=unreadable,
                     desc=f"fuse {args.teacher}")
    written, seconds = list(done), list(done.values())
    median = sorted(seconds)[len(seconds) // 2] if seconds else None
    write_manifest(out_dir, shard, **record, status="complete", fused=len(written), skipped=skipped,
                   seconds_per_pair_median=median, written=written)
    _leave(dist)
    print(f"{args.teacher}: wrote {len(seconds)} pair(s) to {out_dir}"
          + (f" ({median:.2f} s/pair median)" if median is not None else "")
          + (f"; skipped {len(skipped)}" if skipped else ""), file=sys.stderr)
    return 0


def fuse_into(teacher, pairs, output_of: Callable[[Any], Path], device: str, batch_size: int = 1,
              seed: int | None = None, colour_dir: Path | None = None,
              on_unreadable: Callable[[Any, FusionError], None] | None = None, desc: str = "fuse") -> dict[str, float]:
    """Fuse each pair with `teacher` into output_of(pair) (an 8-bit PNG of the fused luminance, and the colour one
    under colour_dir), pairs of one size `batch_size` at a time; returns {pair name: seconds} of those written.

    The luminance PNG is written last, atomically, so its presence means the pair is complete: a caller resumes by
    passing only the pairs whose output is missing (teacher.batch.pending). `seed`: torch's seed before each batch
    (sampling teachers). An unreadable pair goes to `on_unreadable(pair, error)` (which may raise), or raises."""
    import torch
    from tqdm import tqdm

    from runtime.color import luminance, merge_luminance, split_luminance
    from runtime.imageio import read_pair, write_image

    written: dict[str, float] = {}
    bar = tqdm(total=len(pairs), desc=desc, unit="pair", disable=None)
    batch: list = []  # (pair, ir, vis) of one size

    def flush():
        if not batch:
            return
        ir = torch.stack([torch.from_numpy(item[1]) for item in batch])[:, None].to(device)
        vis_y = torch.stack([torch.from_numpy(luminance(item[2])) for item in batch])[:, None].to(device)
        if seed is not None:
            torch.manual_seed(seed)
        start = time.perf_counter()
        with torch.no_grad():
            fused = teacher.fuse_batch(ir, vis_y).clamp(0, 1).float().cpu().numpy()[:, 0]
        elapsed = time.perf_counter() - start
        for (pair, _, vis), image in zip(batch, fused):
            if colour_dir is not None:
                _, cbcr = split_luminance(vis)
                write_image(colour_dir / f"{pair.name}.png", merge_luminance(image, cbcr))
            write_image(output_of(pair), image)  # last, so its presence means the pair is complete
            written[pair.name] = elapsed / len(batch)
        bar.update(len(batch))
        batch.clear()

    for pair in pairs:
        try:
            ir, vis = read_pair(pair)
        except FusionError as exc:
            if on_unreadable is None:
                raise
            on_unreadable(pair, exc)
            bar.update(1)
            continue
        if batch and batch[0][1].shape != ir.shape:
            flush()
        batch.append((pair, ir, vis))
        if len(batch) >= batch_size:
            flush()
    flush()
    bar.close()
    return written
