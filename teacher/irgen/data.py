"""Aligned RGB/IR training pairs held in memory, sampled as random crops from a seeded generator.

Batches are drawn from `numpy.random.default_rng((seed, step))`, so a resumed run sees exactly the batches the
uninterrupted run would have seen.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from runtime.errors import FusionError
from runtime.imageio import ImagePair, discover_pairs, read_pair


@dataclass
class DataConfig:
    scale: float = 1.0  # resize every pair by this factor first (0.5 = quarter of the pixels; CPU training)
    crop: int = 256  # square training crops (smaller images are reflect-padded)
    batch_size: int = 8
    hflip: bool = True


def resize_by(image: np.ndarray, scale: float, interpolation=cv2.INTER_AREA) -> np.ndarray:
    if scale == 1.0:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=interpolation if scale < 1 else cv2.INTER_LINEAR)


def load_training_pairs(data: str | None, names: str | None) -> list[ImagePair]:
    if data is None:
        raise FusionError("pass --data DIR: a dataset folder with aligned ir/ and vi/ images")
    return discover_pairs(data=data, names=names)


class PairedCrops:
    """RGB (H,W,3) and IR (H,W) float32 images plus optional per-image extras (pseudo-labels, (H,W[,C]) arrays),
    all resized by `config.scale`, served as batches of aligned random crops.

    extras: name -> fn(pair, rgb, ir) -> {key: array of the image's size}, computed once per image.
    """

    def __init__(self, pairs: list[ImagePair], config: DataConfig,
                 extras: Callable[[ImagePair, np.ndarray, np.ndarray], dict[str, np.ndarray]] | None = None,
                 progress: bool = True):
        from tqdm import tqdm
        self.config = config
        self.items: list[dict[str, np.ndarray]] = []
        self.names = [p.name for p in pairs]
        for pair in tqdm(pairs, desc="loading pairs", unit="pair", disable=not progress, leave=False):
            ir, vis = read_pair(pair)
            rgb = np.repeat(vis[..., None], 3, axis=2) if vis.ndim == 2 else vis
            item = {"rgb": resize_by(rgb, config.scale), "ir": resize_by(ir, config.scale)}
            if extras is not None:
                for key, value in extras(pair, item["rgb"], item["ir"]).items():
                    if value.shape[:2] != item["ir"].shape[:2]:
                        raise ValueError(f"extra '{key}' of {pair.name} has shape {value.shape}, expected "
                                         f"{item['ir'].shape[:2]}")
                    item[key] = value
            self.items.append(item)

    def __len__(self) -> int:
        return len(self.items)

    @staticmethod
    def _pad(array: np.ndarray, crop: int) -> np.ndarray:
        h, w = array.shape[:2]
        if h >= crop and w >= crop:
            return array
        pad = [(0, max(0, crop - h)), (0, max(0, crop - w))] + [(0, 0)] * (array.ndim - 2)
        return np.pad(array, pad, mode="reflect" if min(h, w) > 1 else "edge")

    def batch(self, seed: int, step: int, batch_size: int | None = None) -> dict[str, np.ndarray]:
        """Arrays stacked over the batch: rgb (B,3,c,c), ir (B,1,c,c), extras (B,C,c,c) (ints keep their dtype)."""
        rng = np.random.default_rng((seed, step))
        crop = self.config.crop
        size = batch_size or self.config.batch_size
        out: dict[str, list[np.ndarray]] = {}
        for index in rng.integers(0, len(self.items), size=size):
            item = self.items[index]
            h, w = item["ir"].shape
            top = int(rng.integers(0, max(1, h - crop + 1)))
            left = int(rng.integers(0, max(1, w - crop + 1)))
            flip = self.config.hflip and rng.random() < 0.5
            for key, array in item.items():
                patch = self._pad(array[top:top + crop, left:left + crop], crop)
                if flip:
                    patch = patch[:, ::-1]
                patch = patch[None] if patch.ndim == 2 else np.moveaxis(patch, -1, 0)
                out.setdefault(key, []).append(np.ascontiguousarray(patch))
        return {key: np.stack(values) for key, values in out.items()}
