"""The interface every RGB->IR generator implements (thermal query decoder, decomposition net, SD, FLUX).

`fusion teacher train-irgen` and `fusion teacher synth-ir` (teacher/irgen/cli.py) look a generator up in
teacher.registry (kind "irgen") and talk to it only through this class, so adding a generator is one module and
one registry line.

Contract for implementers:
- Keep the module light at import (no torch/diffusers at the top): `fusion teacher ...` imports every generator
  module to collect its options, so heavy imports go inside methods.
- `train(args)` receives the parsed `train-irgen` options: generator, data, names, config, overrides (the `--set`
  list), out, resume, device ("cpu"/"cuda", already resolved), seed, base, plus the generator's own options.
- `from_pretrained(folder, device, args)` receives the parsed `synth-ir` options (weights, rgb, out, names, shard,
  device, seed, base, prompt, count, visualize, ...), or None when called from Python.
- Options added by `add_arguments` share one namespace with other generators: the same flag from two generators must
  mean the same thing (a later identical definition replaces the earlier one).
"""
from __future__ import annotations

import argparse
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import FusionError


class IRGenerator(ABC):
    """An RGB->IR generator. Subclasses set `name` and implement the methods below."""

    name: str = ""
    #: False for text-to-IR generators that sample without an RGB frame (`sd-text`).
    needs_rgb: bool = True

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, verb: str) -> None:
        """Generator-specific options for `train-irgen` or `synth-ir` (verb); the common ones are added already."""

    @classmethod
    def train(cls, args: argparse.Namespace) -> int:
        """Train from the parsed `train-irgen` arguments; writes weights loadable by `from_pretrained(args.out)`."""
        raise FusionError(f"{cls.name or cls.__name__} cannot be trained with train-irgen")

    @classmethod
    @abstractmethod
    def from_pretrained(cls, folder: str | Path, device: str = "cpu", args: argparse.Namespace | None = None
                        ) -> "IRGenerator":
        """Load trained weights from a local folder; FusionError saying what the folder must hold when it doesn't."""

    @abstractmethod
    def generate(self, rgb: np.ndarray | None, seed: int = 0, prompt: str | None = None) -> np.ndarray:
        """RGB float32 (H, W, 3) in [0, 1] -> IR float32 (H, W) in [0, 1] of the same size."""

    def visualize(self, rgb: np.ndarray, ir: np.ndarray) -> np.ndarray | None:
        """An RGB uint8 (h, w, 3) panel showing the generator's internals for one image (attention maps,
        decomposition...), written by `synth-ir --visualize`; None when the generator has nothing to show."""
        return None

    def settings(self) -> dict[str, Any]:
        """What to record in a synth-ir manifest (weights hash, sampler settings...)."""
        return {"generator": self.name}


def list_images_in(folder: str | os.PathLike, names: str | None, subfolders: tuple[str, ...], what: str = "data"
                   ) -> dict[str, Path]:
    """Stem -> image path from the first of `subfolders` inside `folder` that holds images, else from `folder`
    itself; restricted to the stems listed in the `names` file (all when None). `what` names the folder in errors."""
    from runtime.imageio import list_images, read_names
    root = Path(folder)
    if not root.is_dir():
        raise FusionError(f"{what} folder not found: {root}")
    images = {}
    for child in subfolders:
        if (root / child).is_dir():
            images = list_images(root / child)
            if images:
                break
    images = images or list_images(root)
    if not images:
        raise FusionError(f"no images in {root} (nor in {'/ or '.join(subfolders)}/ inside it)")
    if names is None:
        return images
    wanted = read_names(names)
    missing = [stem for stem in wanted if stem not in images]
    if missing:
        raise FusionError(f"{len(missing)} name(s) from {names} have no image in {root} (first: {missing[0]})")
    return {stem: images[stem] for stem in wanted}
