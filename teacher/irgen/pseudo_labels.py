"""Pseudo-labels for the decomposition generator (`decomp`), computed from each aligned RGB/IR pair and cached.

- intensity (H,W) float32 [0,1]: the IR frame normalised per image (1st..99th percentile stretch), i.e. relative
  "warmth" within the scene, free of the camera's gain/offset.
- material (H,W) int64 in [0, classes): either
  * "kmeans": global k-means over pixels of all training images, on (CIELAB colour, local texture, normalised IR),
    so a class means the same thing in every image; or
  * "quantize": a fixed hue x saturation x value quantisation of the RGB (4 x 2 x 4 = 32 bins), no fitting.
- context (H,W,8) float32 [0,1] from the RGB: brightness, local contrast, colour (Cb, Cr), saturation, a shadow mask
  (darker than its surroundings), gradient magnitude, texture energy.

None of these is a physical quantity: they are cheap, reproducible targets that make the network's internal maps
resemble intensity, material and context (see docs/irgen.md). Labels are cached per image in compressed .npz files
(no pickles), keyed by the label settings, the image files and (for k-means) the fitted centroids.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from runtime.color import rgb_to_ycbcr
from runtime.errors import FusionError
from runtime.imageio import ImagePair, atomic_path

CONTEXT_NAMES = ("brightness", "contrast", "cb", "cr", "saturation", "shadow", "gradient", "texture")


@dataclass
class LabelConfig:
    material_method: str = "kmeans"  # "kmeans" (global clusters) or "quantize" (fixed HSV bins, no fitting)
    kmeans_samples_per_image: int = 2000
    kmeans_iterations: int = 30
    kmeans_ir_weight: float = 1.0  # weight of the normalised IR feature against colour and texture
    shadow_ratio: float = 0.6  # a pixel is in shadow when darker than this fraction of its 31x31 neighbourhood
    cache_dir: str | None = None  # default: <out>/pseudo_labels


def normalised_intensity(ir: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """IR (H,W) [0,1] -> (H,W) float32 [0,1], a per-image percentile stretch."""
    lo, hi = np.percentile(ir, [low, high])
    return np.clip((ir - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)


def _local_mean(image: np.ndarray, size: int) -> np.ndarray:
    return cv2.blur(image, (size, size), borderType=cv2.BORDER_REFLECT)


def _robust_unit(image: np.ndarray) -> np.ndarray:
    scale = float(np.percentile(image, 99)) or 1.0
    return np.clip(image / scale, 0.0, 1.0)


def context_maps(rgb: np.ndarray, shadow_ratio: float = 0.6) -> np.ndarray:
    """RGB (H,W,3) [0,1] -> (H,W,8) float32 [0,1] in the order of CONTEXT_NAMES."""
    rgb = np.asarray(rgb, dtype=np.float32)
    ycbcr = rgb_to_ycbcr(rgb)
    y = ycbcr[..., 0]
    mean = _local_mean(y, 7)
    contrast = np.sqrt(np.maximum(_local_mean(y * y, 7) - mean * mean, 0.0))
    high, low = rgb.max(axis=2), rgb.min(axis=2)
    saturation = (high - low) / np.maximum(high, 1e-6)
    surround = _local_mean(y, 31)
    # Smooth step around `shadow_ratio`: 1 well below it, 0 above.
    shadow = 1.0 / (1.0 + np.exp(-(shadow_ratio - y / np.maximum(surround, 1e-3)) * 20.0))
    gx = cv2.Sobel(y, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(y, cv2.CV_32F, 0, 1, ksize=3)
    gradient = _robust_unit(np.sqrt(gx * gx + gy * gy))
    texture = _robust_unit(_local_mean(np.abs(cv2.Laplacian(y, cv2.CV_32F, ksize=3)), 7))
    maps = [y, np.clip(contrast * 4.0, 0, 1), ycbcr[..., 1], ycbcr[..., 2], saturation, shadow, gradient, texture]
    return np.clip(np.stack(maps, axis=-1), 0.0, 1.0).astype(np.float32)


def material_features(rgb: np.ndarray, ir: np.ndarray, ir_weight: float) -> np.ndarray:
    """(H,W,5) features for k-means: CIELAB scaled to ~[0,1], texture energy, weighted normalised IR."""
    lab = cv2.cvtColor(np.asarray(rgb, dtype=np.float32), cv2.COLOR_RGB2Lab)
    lab = np.stack((lab[..., 0] / 100.0, (lab[..., 1] + 128) / 255.0, (lab[..., 2] + 128) / 255.0), axis=-1)
    texture = context_maps(rgb)[..., 7:8]
    return np.concatenate((lab, texture, ir_weight * normalised_intensity(ir)[..., None]), axis=-1)


def quantised_material(rgb: np.ndarray) -> np.ndarray:
    """RGB (H,W,3) -> (H,W) int64 in [0,32): 4 hue x 2 saturation x 4 value bins."""
    hsv = cv2.cvtColor(np.asarray(rgb, dtype=np.float32), cv2.COLOR_RGB2HSV)  # H in [0,360), S, V in [0,1]
    hue = np.minimum((hsv[..., 0] / 90.0).astype(np.int64), 3)
    sat = (hsv[..., 1] > 0.25).astype(np.int64)
    val = np.minimum((hsv[..., 2] * 4).astype(np.int64), 3)
    return (hue * 8 + sat * 4 + val).astype(np.int64)


def fit_material_centroids(samples: list[np.ndarray], classes: int, iterations: int, seed: int = 0) -> np.ndarray:
    """k-means (OpenCV, k-means++ init, 3 attempts) over stacked feature samples -> (classes, F) float32."""
    data = np.concatenate(samples, axis=0).astype(np.float32)
    if len(data) < classes:
        raise FusionError(f"k-means needs at least {classes} pixels, got {len(data)}; add training images")
    cv2.setRNGSeed(seed)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, iterations, 1e-4)
    _, _, centroids = cv2.kmeans(data, classes, None, criteria, 3, cv2.KMEANS_PP_CENTERS)
    # Sort clusters by their IR feature, then lightness, so class ids are stable and readable (0 = coldest).
    order = np.lexsort((centroids[:, 0], centroids[:, -1]))
    return centroids[order].astype(np.float32)


def assign_material(features: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(H,W,F) features -> (H,W) int64 nearest-centroid labels."""
    flat = features.reshape(-1, features.shape[-1]).astype(np.float32)
    # |x - c|^2 = |x|^2 - 2 x.c + |c|^2; |x|^2 is the same for every c.
    distances = -2.0 * flat @ centroids.T + (centroids ** 2).sum(1)[None]
    return distances.argmin(1).reshape(features.shape[:2]).astype(np.int64)


class PseudoLabeler:
    """Computes and caches the pseudo-labels of each training pair (at the training scale)."""

    def __init__(self, config: LabelConfig, classes: int, cache_dir: Path, scale: float, seed: int = 0):
        if config.material_method not in ("kmeans", "quantize"):
            raise FusionError(f"labels.material_method must be 'kmeans' or 'quantize', got "
                              f"'{config.material_method}'")
        if config.material_method == "quantize" and classes != 32:
            raise FusionError("labels.material_method 'quantize' makes 32 classes; set model.num_materials: 32")
        self.config, self.classes, self.scale, self.seed = config, classes, scale, seed
        self.cache_dir = Path(cache_dir)
        self.centroids: np.ndarray | None = None

    def settings_key(self) -> str:
        record = {"config": {k: v for k, v in vars(self.config).items() if k != "cache_dir"},
                  "classes": self.classes, "scale": self.scale, "seed": self.seed, "version": 1}
        if self.centroids is not None:
            record["centroids"] = hashlib.sha256(self.centroids.tobytes()).hexdigest()[:16]
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:12]

    def prepare(self, images: list[tuple[ImagePair, np.ndarray, np.ndarray]]) -> None:
        """Fit (or load cached) k-means centroids over all training images; nothing to do for 'quantize'."""
        if self.config.material_method != "kmeans":
            return
        key = self.settings_key() + "-" + hashlib.sha256("|".join(p.name for p, _, _ in images).encode()
                                                         ).hexdigest()[:8]
        path = self.cache_dir / f"centroids-{key}.npy"
        if path.is_file():
            self.centroids = np.load(path, allow_pickle=False)
            return
        rng = np.random.default_rng(self.seed)
        samples = []
        for _, rgb, ir in images:
            features = material_features(rgb, ir, self.config.kmeans_ir_weight).reshape(-1, 5)
            count = min(self.config.kmeans_samples_per_image, len(features))
            samples.append(features[rng.choice(len(features), size=count, replace=False)])
        self.centroids = fit_material_centroids(samples, self.classes, self.config.kmeans_iterations, self.seed)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, self.centroids, allow_pickle=False)

    def compute(self, rgb: np.ndarray, ir: np.ndarray) -> dict[str, np.ndarray]:
        if self.config.material_method == "kmeans":
            if self.centroids is None:
                raise RuntimeError("PseudoLabeler.prepare() must run before compute() with k-means")
            material = assign_material(material_features(rgb, ir, self.config.kmeans_ir_weight), self.centroids)
        else:
            material = quantised_material(rgb)
        return {"intensity": normalised_intensity(ir), "material": material,
                "context": context_maps(rgb, self.config.shadow_ratio)}

    def __call__(self, pair: ImagePair, rgb: np.ndarray, ir: np.ndarray) -> dict[str, np.ndarray]:
        """Cached labels of one pair (computed on the arrays given, i.e. at the training scale)."""
        from teacher.batch import file_hash
        digest = hashlib.sha256((file_hash(pair.vis) + file_hash(pair.ir)).encode()).hexdigest()[:10]
        path = self.cache_dir / self.settings_key() / f"{pair.name}-{digest}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as cached:
                return {key: cached[key] for key in cached.files}
        labels = self.compute(rgb, ir)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **labels)
        return labels
