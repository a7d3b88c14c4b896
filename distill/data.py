"""Training data: IR / VIS / teacher-target triplets with albumentations augmentation.

A dataset folder holds ir/, vi/ (or vis/) and TEACHER_FUSED/ (built by `fusion teacher fuse`), matched by stem, with
split files listing the names. IR may be 8- or 16-bit (16-bit goes through the shared AGC in runtime.imageio).

Augmentation (PairAugment), in three independent stages so each modality gets only what makes sense for it:
1. geometry, applied identically to IR, VIS and the target: random resized crop, horizontal flip;
2. VIS only: colour jitter (illumination and white balance change; the thermal camera does not see them);
3. IR only: a small random affine (shift, rotation, scale) with probability `misalign_prob`, which imitates an
   imperfect IR-to-VIS registration so the student learns to tolerate it, then Gaussian sensor noise.
Each stage has its own random stream, so turning one stage on or off never changes what the others draw.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from runtime.errors import FusionError, require


@dataclass
class AugmentConfig:
    crop: int = 192                 # side of the square training crops
    scale_min: float = 0.2          # random resized crop: area fraction range
    scale_max: float = 1.0
    hflip: float = 0.5              # probability
    color_jitter: float = 0.5       # probability (VIS only)
    brightness: float = 0.15
    contrast: float = 0.15
    saturation: float = 0.2
    hue: float = 0.02
    ir_noise: float = 0.3           # probability of Gaussian noise on IR
    ir_noise_std: float = 0.02      # its largest standard deviation (fraction of full scale)
    misalign_prob: float = 0.3      # probability of the IR-only affine
    misalign_shift: float = 0.015   # largest shift, fraction of the crop side
    misalign_rotate: float = 1.5    # largest rotation, degrees
    misalign_scale: float = 0.02    # largest relative scale change


class PairAugment:
    """Random augmentation of one (ir (H, W), vis (H, W, 3) or (H, W), target (H, W[, 3])) float32 triplet in [0, 1].

    Returns the same layout with H = W = `config.crop`.
    """

    def __init__(self, config: AugmentConfig, seed: int = 0):
        # albumentations otherwise asks PyPI for a newer version at import (a warning on every offline run)
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        A = require("albumentations", "training augmentation")
        import cv2
        self.config = config
        c = config
        self.geometry = A.Compose(
            [A.RandomResizedCrop(size=(c.crop, c.crop), scale=(c.scale_min, c.scale_max), ratio=(0.75, 1.333),
                                 interpolation=cv2.INTER_AREA, p=1.0),
             A.HorizontalFlip(p=c.hflip)],
            additional_targets={"ir": "image", "target": "image"}, seed=seed)
        self.vis_only = A.Compose(
            [A.ColorJitter(brightness=c.brightness, contrast=c.contrast, saturation=c.saturation, hue=c.hue,
                           p=c.color_jitter)], seed=seed + 1)
        self.ir_only = A.Compose(
            [A.Affine(translate_percent={"x": (-c.misalign_shift, c.misalign_shift),
                                         "y": (-c.misalign_shift, c.misalign_shift)},
                      rotate=(-c.misalign_rotate, c.misalign_rotate),
                      scale=(1 - c.misalign_scale, 1 + c.misalign_scale),
                      interpolation=cv2.INTER_LINEAR, border_mode=cv2.BORDER_REFLECT_101, p=c.misalign_prob),
             A.GaussNoise(std_range=(0.0, c.ir_noise_std), p=c.ir_noise)], seed=seed + 2)

    def reseed(self, seed: int) -> None:
        """Give this copy its own random streams (DataLoader workers and DDP ranks)."""
        for k, stage in enumerate((self.geometry, self.vis_only, self.ir_only)):
            stage.set_random_seed(seed + k)

    def __call__(self, ir: np.ndarray, vis: np.ndarray, target: np.ndarray):
        out = self.geometry(image=vis, ir=ir, target=target)
        vis, ir, target = out["image"], out["ir"], out["target"]
        if vis.ndim == 3 and vis.shape[2] == 3:
            vis = self.vis_only(image=vis)["image"]
        ir = self.ir_only(image=ir[..., None])["image"][..., 0]
        return (np.clip(ir, 0, 1).astype(np.float32), np.clip(vis, 0, 1).astype(np.float32),
                np.clip(target, 0, 1).astype(np.float32))


def read_target(path, vis: np.ndarray, vis_channels: int) -> np.ndarray:
    """The teacher's fused image as float32 in [0, 1]: (H, W) luminance, or (H, W, 3) RGB in 3-channel mode (a
    luminance target gets the visible chroma, as the runtime does)."""
    from runtime.color import luminance, merge_luminance, split_luminance
    from runtime.imageio import read_vis
    target = read_vis(path)
    if vis_channels == 1:
        return np.ascontiguousarray(luminance(target), dtype=np.float32)
    if target.ndim == 3:
        return target
    _, cbcr = split_luminance(vis if vis.ndim == 3 else np.repeat(vis[..., None], 3, axis=2))
    return np.ascontiguousarray(merge_luminance(target, cbcr), dtype=np.float32)


class FusionPairs:
    """A torch Dataset of IR / VIS / target triplets, decoded once and kept in memory (the sets are small).

    Items: {"ir": (1, H, W), "vis": (C, H, W), "target": (C, H, W)} float32 tensors in [0, 1] (C = vis_channels;
    VIS is reduced to luminance after the colour jitter when C = 1), and "name".
    """

    def __init__(self, pairs: Sequence, augment: Optional[PairAugment] = None, vis_channels: int = 1):
        from runtime.imageio import read_pair
        self.pairs = list(pairs)
        self.augment = augment
        self.vis_channels = vis_channels
        self.items = []
        for pair in self.pairs:
            if pair.target is None:
                raise FusionError(f"pair '{pair.name}' has no teacher target; build TEACHER_FUSED/ with "
                                  f"`fusion teacher fuse` (or `make targets`)")
            ir, vis = read_pair(pair)
            if vis.ndim == 2 and vis_channels == 3:
                vis = np.repeat(vis[..., None], 3, axis=2)
            target = read_target(pair.target, vis, vis_channels)
            if target.shape[:2] != ir.shape:
                raise FusionError(f"teacher target {pair.target} is {target.shape[1]}x{target.shape[0]} but its IR "
                                  f"image is {ir.shape[1]}x{ir.shape[0]}; rebuild the targets")
            self.items.append((ir, vis, target))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        import torch

        from runtime.color import split_luminance
        ir, vis, target = self.items[index]
        if self.augment is not None:
            ir, vis, target = self.augment(ir, vis, target)
        if self.vis_channels == 1 and vis.ndim == 3:
            vis, _ = split_luminance(vis)

        def chw(a: np.ndarray) -> "torch.Tensor":
            a = np.ascontiguousarray(a, dtype=np.float32)
            return torch.from_numpy(a[None] if a.ndim == 2 else a.transpose(2, 0, 1).copy())

        return {"ir": chw(ir), "vis": chw(vis), "target": chw(target), "name": self.pairs[index].name}


def split_train_val(names: List[str], val_fraction: float, seed: int) -> tuple[List[str], List[str]]:
    """A reproducible validation split carved out of the training names (never from the test list)."""
    if not 0.0 <= val_fraction < 1.0:
        raise FusionError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    shuffled = sorted(names)
    random.Random(seed).shuffle(shuffled)
    n_val = int(round(len(shuffled) * val_fraction))
    if val_fraction > 0 and n_val == 0 and len(shuffled) > 1:
        n_val = 1
    val = set(shuffled[:n_val])
    return [n for n in names if n not in val], [n for n in names if n in val]


def worker_init(worker_id: int) -> None:
    """DataLoader worker hook: each worker (and each epoch) gets its own augmentation streams."""
    import torch
    info = torch.utils.data.get_worker_info()
    if info is not None and getattr(info.dataset, "augment", None) is not None:
        info.dataset.augment.reseed(int(torch.initial_seed() % (2 ** 31)))
