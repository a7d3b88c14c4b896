"""Training data: IR / VIS / teacher-target triplets with albumentations augmentation.

A dataset folder holds ir/, vi/ (or vis/) and TEACHER_FUSED/ (built by `fusion teacher fuse`), matched by stem, with
split files listing the names. IR may be 8- or 16-bit (16-bit goes through the shared AGC in runtime.imageio).

Augmentation (PairAugment), in three independent stages so each modality gets only what makes sense for it:
1. geometry, applied identically to IR, VIS and the target: random resized crop, horizontal flip;
2. VIS only: colour jitter (illumination and white balance change; the thermal camera does not see them);
3. IR only: a small random affine (shift, rotation, scale) with probability `misalign_prob`, which imitates an
   imperfect IR-to-VIS registration so the student learns to tolerate it, then Gaussian sensor noise;
4. conditions (ConditionAugment), what cameras in the field deliver and the training sets lack: thermal frames of
   low contrast, offset or bent tone curve (other AGC outcomes than the dataset's), dark and noisy visible frames
   (night), visible glare and saturated lights, over- and under-exposure.
Each stage has its own random stream, so turning one stage on or off never changes what the others draw.

The conditions change what the fusion should look like (a dark visible frame has less to give), so a run that uses
them computes its targets from the augmented crops with a fast teacher (`data.online_teacher`) instead of reading
fixed targets made from the clean images.
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
    # conditions (stage 4); every probability 0 turns the stage off
    ir_agc: float = 0.0             # probability of another thermal AGC outcome (contrast, offset, gamma)
    ir_contrast_min: float = 0.35   # contrast factor drawn from [ir_contrast_min, 1.15] around the frame mean
    ir_offset: float = 0.15         # offset drawn from [-ir_offset, ir_offset]
    vis_dark: float = 0.0           # probability of a night-dark visible frame (gain and gamma, then sensor noise)
    vis_dark_gain_min: float = 0.08  # the gain is drawn from [vis_dark_gain_min, 0.6]
    vis_noise_std: float = 0.03     # largest std of the visible sensor noise added to a dark frame
    vis_glare: float = 0.0          # probability of 1-3 saturated light sources / glare blobs in the visible frame
    vis_exposure: float = 0.0       # probability of an exposure change (x0.5 .. x2, clipped: blown highlights)


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
        self.conditions = ConditionAugment(c, seed=seed + 3)

    def reseed(self, seed: int) -> None:
        """Give this copy its own random streams (DataLoader workers and DDP ranks)."""
        for k, stage in enumerate((self.geometry, self.vis_only, self.ir_only)):
            stage.set_random_seed(seed + k)
        self.conditions.reseed(seed + 3)

    def __call__(self, ir: np.ndarray, vis: np.ndarray, target: Optional[np.ndarray] = None):
        """target None (online targets): returns (ir, vis, None)."""
        if target is None:
            out = self.geometry(image=vis, ir=ir)
            vis, ir = out["image"], out["ir"]
        else:
            out = self.geometry(image=vis, ir=ir, target=target)
            vis, ir, target = out["image"], out["ir"], out["target"]
        if vis.ndim == 3 and vis.shape[2] == 3:
            vis = self.vis_only(image=vis)["image"]
        ir = self.ir_only(image=ir[..., None])["image"][..., 0]
        if self.conditions.active:
            ir, vis = self.conditions(ir, vis)
        if target is None:
            return np.clip(ir, 0, 1).astype(np.float32), np.clip(vis, 0, 1).astype(np.float32), None
        return (np.clip(ir, 0, 1).astype(np.float32), np.clip(vis, 0, 1).astype(np.float32),
                np.clip(target, 0, 1).astype(np.float32))


class ConditionAugment:
    """Stage 4: capture conditions on float32 crops in [0, 1] (ir (H, W), vis (H, W, 3) or (H, W)), numpy only.

    Draws come from this object's own generator (`reseed` gives a copy its own stream)."""

    def __init__(self, config: AugmentConfig, seed: int = 0):
        self.config = config
        self.rng = np.random.default_rng(seed)

    @property
    def active(self) -> bool:
        c = self.config
        return max(c.ir_agc, c.vis_dark, c.vis_glare, c.vis_exposure) > 0

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def thermal_agc(self, ir: np.ndarray) -> np.ndarray:
        """Another automatic-gain outcome: contrast squeezed or stretched around the mean, an offset, a gamma."""
        c, rng = self.config, self.rng
        contrast = rng.uniform(c.ir_contrast_min, 1.15)
        offset = rng.uniform(-c.ir_offset, c.ir_offset)
        gamma = np.exp(rng.uniform(np.log(0.7), np.log(1.4)))
        mean = float(ir.mean())
        out = np.clip((ir - mean) * contrast + mean + offset, 0, 1)
        return out ** gamma

    def dark(self, vis: np.ndarray) -> np.ndarray:
        """Night: a low gain and a crushing gamma, then signal-dependent (shot) plus read noise, as a sensor at
        high ISO gives it."""
        c, rng = self.config, self.rng
        gain = rng.uniform(c.vis_dark_gain_min, 0.6)
        gamma = rng.uniform(1.0, 1.8)
        out = gain * vis ** gamma
        std = rng.uniform(0, c.vis_noise_std)
        noise = rng.standard_normal(out.shape[:2]).astype(np.float32)
        noise = noise[..., None] if out.ndim == 3 else noise
        return out + std * np.sqrt(out + 0.02) / np.sqrt(0.3) * noise

    def glare(self, vis: np.ndarray) -> np.ndarray:
        """1-3 light sources: Gaussian blobs that saturate at their core (headlights, street lights, sun glare)."""
        rng = self.rng
        h, w = vis.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        light = np.zeros((h, w), np.float32)
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            radius = rng.uniform(0.02, 0.15) * min(h, w)
            light += rng.uniform(0.6, 2.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius ** 2))
        if vis.ndim == 3:
            tint = rng.uniform(0.85, 1.0, size=3).astype(np.float32)   # warm or neutral lamps
            return vis + light[..., None] * tint
        return vis + light

    def __call__(self, ir: np.ndarray, vis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, rng = self.config, self.rng
        if rng.random() < c.ir_agc:
            ir = self.thermal_agc(ir)
        if rng.random() < c.vis_exposure:
            vis = vis * np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
        if rng.random() < c.vis_dark:
            vis = self.dark(np.clip(vis, 0, 1))
        if rng.random() < c.vis_glare:
            vis = self.glare(vis)
        return (np.clip(ir, 0, 1).astype(np.float32), np.clip(vis, 0, 1).astype(np.float32))


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
    VIS is reduced to luminance after the colour jitter when C = 1), and "name". With `targets=False` (targets made
    online by a teacher from the augmented crops) items have no "target".
    `max_side`: frames larger than this are downscaled once at load (INTER_AREA), which keeps memory and crop
    statistics of 1280x1024 sets close to the deployment resolution.
    """

    def __init__(self, pairs: Sequence, augment: Optional[PairAugment] = None, vis_channels: int = 1,
                 targets: bool = True, max_side: int = 0, repeats: Optional[Sequence[int]] = None):
        from runtime.imageio import read_pair
        self.pairs = list(pairs)
        self.augment = augment
        self.vis_channels = vis_channels
        self.targets = targets
        # index -> item: a pair listed with repeat r is drawn r times an epoch (balances a small set against a big one)
        self.index = [i for i, r in enumerate(repeats or [1] * len(self.pairs)) for _ in range(int(r))]
        self.items = []
        for pair in self.pairs:
            if targets and pair.target is None:
                raise FusionError(f"pair '{pair.name}' has no teacher target; build TEACHER_FUSED/ with "
                                  f"`fusion teacher fuse` (or `make targets`)")
            ir, vis = read_pair(pair)
            if vis.ndim == 2 and vis_channels == 3:
                vis = np.repeat(vis[..., None], 3, axis=2)
            if not targets:
                self.items.append((*_downscale(ir, vis, max_side=max_side), None))
                continue
            target = read_target(pair.target, vis, vis_channels)
            if target.shape[:2] != ir.shape:
                raise FusionError(f"teacher target {pair.target} is {target.shape[1]}x{target.shape[0]} but its IR "
                                  f"image is {ir.shape[1]}x{ir.shape[0]}; rebuild the targets")
            self.items.append(_downscale(ir, vis, target, max_side=max_side))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> dict:
        import torch

        from runtime.color import split_luminance
        index = self.index[index]
        ir, vis, target = self.items[index]
        if self.augment is not None:
            ir, vis, target = self.augment(ir, vis, target)
        if self.vis_channels == 1 and vis.ndim == 3:
            vis, _ = split_luminance(vis)

        def chw(a: np.ndarray) -> "torch.Tensor":
            a = np.ascontiguousarray(a, dtype=np.float32)
            return torch.from_numpy(a[None] if a.ndim == 2 else a.transpose(2, 0, 1).copy())

        item = {"ir": chw(ir), "vis": chw(vis), "name": self.pairs[index].name}
        if target is not None:
            item["target"] = chw(target)
        return item


def _downscale(*images: np.ndarray, max_side: int) -> tuple:
    """The same INTER_AREA downscaling of every image so the longer side is at most `max_side` (0: unchanged)."""
    side = max(images[0].shape[:2])
    if max_side <= 0 or side <= max_side:
        return images
    import cv2
    scale = max_side / side
    size = (int(round(images[0].shape[1] * scale)), int(round(images[0].shape[0] * scale)))
    return tuple(np.ascontiguousarray(cv2.resize(img, size, interpolation=cv2.INTER_AREA)) for img in images)


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
