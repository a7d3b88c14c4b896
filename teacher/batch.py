"""Batch-job plumbing shared by `fusion teacher fuse` and `fusion teacher synth-ir`: sharding, resume, manifests.

- Sharding: `--shard I/N` by hand, or, with no flag, the torch.distributed environment that `torchrun` /
  `accelerate launch` set (RANK, WORLD_SIZE), so each rank takes every N-th item with no extra flags. Shards are
  disjoint and their union is the whole list.
- Resume: an item is finished when its final output file exists; outputs are written atomically (temporary name,
  then rename), so a file under its final name is always complete.
- Manifest: a JSON record of what produced a folder (teacher, settings, model hash, package versions), one per
  shard so ranks never write the same file.
"""
from __future__ import annotations

import hashlib
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

from runtime.errors import FusionError
from runtime.imageio import write_json

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @property
    def label(self) -> str:
        return f"{self.index}of{self.count}"


def parse_shard(text: str | None) -> Shard | None:
    """'I/N' (0 <= I < N) -> Shard; None -> None."""
    if text is None:
        return None
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise FusionError(f"--shard must look like I/N (for example 0/4), got '{text}'") from None
    if count < 1 or not 0 <= index < count:
        raise FusionError(f"--shard {text}: need 0 <= I < N")
    return Shard(index, count)


def shard_from_environment() -> Shard | None:
    """The shard of this process under torchrun / accelerate (RANK and WORLD_SIZE), or None when not distributed."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return Shard(int(os.environ.get("RANK", "0")), world)


def resolve_shard(text: str | None) -> Shard | None:
    """`--shard` when given, else the distributed environment's rank; FusionError when both are given and differ."""
    by_hand, by_env = parse_shard(text), shard_from_environment()
    if by_hand and by_env and by_hand != by_env:
        raise FusionError(f"--shard {text} disagrees with the distributed environment (rank {by_env.index} of "
                          f"{by_env.count}); drop --shard when launching with torchrun")
    return by_hand or by_env


def take_shard(items: Sequence[T], shard: Shard | None) -> list[T]:
    """Every `count`-th item starting at `index` (round-robin keeps shards balanced for sorted inputs)."""
    if shard is None:
        return list(items)
    return [item for i, item in enumerate(items) if i % shard.count == shard.index]


def pending(items: Iterable[T], output_of: Callable[[T], Path], resume: bool) -> tuple[list[T], int]:
    """(items still to do, number already finished). Without `resume`, an existing output is an error, so a second
    run never silently overwrites finished work; with it, finished items are skipped."""
    todo, done = [], 0
    existing = []
    for item in items:
        if output_of(item).exists():
            if resume:
                done += 1
                continue
            existing.append(output_of(item))
        todo.append(item)
    if existing:
        raise FusionError(f"{len(existing)} output(s) already exist (first: {existing[0]}); pass --resume to keep "
                          f"them and do the rest, or choose another --out")
    return todo, done


def file_hash(path: str | os.PathLike, length: int = 16) -> str:
    """sha256 of a file (or of every file under a folder, in name order), shortened."""
    digest = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.relative_to(path).as_posix().encode() if path.is_dir() else b"")
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:length]


def package_versions(names: Sequence[str] = ("numpy", "opencv-python-headless", "torch", "diffusers",
                                               "irvis-fusion")) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def write_manifest(out_dir: Path, shard: Shard | None, **record) -> Path:
    """Write `manifest.json` (or `manifest.<I>of<N>.json` for a shard) into `out_dir`, atomically."""
    name = "manifest.json" if shard is None else f"manifest.{shard.label}.json"
    record = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv),
              "shard": None if shard is None else {"index": shard.index, "count": shard.count},
              **record, "versions": package_versions()}
    return write_json(out_dir / name, record)
