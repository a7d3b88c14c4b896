"""Picture panels: labelled tiles in a grid, heat-map overlays, a categorical palette for material maps.

Everything returns RGB uint8 arrays, written with `runtime.imageio.write_image`.
"""
from __future__ import annotations

import cv2
import numpy as np


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """float [0,1] or uint8, (H,W) or (H,W,3) -> (H,W,3) uint8."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(np.round(image.astype(np.float32) * 255), 0, 255).astype(np.uint8)
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image


def heatmap_overlay(base: np.ndarray, heat: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """A [0,1] heat map (H,W) over a gray version of `base`, with the inferno colour map -> (H,W,3) uint8."""
    gray = to_rgb_uint8(base).mean(axis=2, keepdims=True).repeat(3, axis=2)
    colour = cv2.applyColorMap(to_rgb_uint8(heat)[..., 0], cv2.COLORMAP_INFERNO)[..., ::-1]
    return np.clip((1 - alpha) * gray + alpha * colour, 0, 255).astype(np.uint8)


def palette(count: int, seed: int = 7) -> np.ndarray:
    """`count` distinct RGB colours (uint8), stable for a seed."""
    hues = (np.arange(count) * 0.61803398875 % 1.0 * 179).astype(np.uint8)
    rng = np.random.default_rng(seed)
    hsv = np.stack([hues, rng.integers(140, 256, count).astype(np.uint8),
                    rng.integers(150, 256, count).astype(np.uint8)], axis=1)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]


def label_map_to_rgb(labels: np.ndarray, count: int) -> np.ndarray:
    return palette(count)[np.clip(labels, 0, count - 1)]


def tile(image: np.ndarray, label: str, width: int) -> np.ndarray:
    """Resize to `width` (keeping aspect) and write `label` in a bar above the image."""
    image = to_rgb_uint8(image)
    h, w = image.shape[:2]
    height = max(1, round(h * width / w))
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if w > width else cv2.INTER_LINEAR)
    bar = np.full((18, width, 3), 255, np.uint8)
    cv2.putText(bar, label[: max(1, width // 7)], (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate((bar, image), axis=0)


def grid(rows: list[list[tuple[str, np.ndarray]]], width: int = 192, gap: int = 2) -> np.ndarray:
    """Rows of (label, image) tiles -> one RGB uint8 picture (rows padded to the widest, tiles top-aligned)."""
    rendered = []
    for row in rows:
        tiles = [tile(image, label, width) for label, image in row]
        height = max(t.shape[0] for t in tiles)
        tiles = [np.pad(t, ((0, height - t.shape[0]), (0, 0), (0, 0)), constant_values=255) for t in tiles]
        spaced = []
        for t in tiles:
            spaced += [t, np.full((height, gap, 3), 255, np.uint8)]
        rendered.append(np.concatenate(spaced[:-1], axis=1))
    full_width = max(r.shape[1] for r in rendered)
    rendered = [np.pad(r, ((0, gap), (0, full_width - r.shape[1]), (0, 0)), constant_values=255) for r in rendered]
    return np.concatenate(rendered, axis=0)
