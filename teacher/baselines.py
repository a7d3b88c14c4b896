"""Reference fusions for honest quality tables: mean, max, and Laplacian-pyramid fusion.

All three are pure torch on (N, 1, H, W) batches in [0, 1], CPU or GPU, any size (odd sizes included).
"""
from __future__ import annotations

from typing import Any

from teacher.base import FusionTeacher


class MeanFusion(FusionTeacher):
    """`mean`: (IR + VIS) / 2."""

    name = "mean"

    def fuse_batch(self, ir, vis_y):
        return 0.5 * (ir + vis_y)


class MaxFusion(FusionTeacher):
    """`max`: per-pixel maximum of IR and VIS luminance."""

    name = "max"

    def fuse_batch(self, ir, vis_y):
        import torch
        return torch.maximum(ir, vis_y)


# ------------------------------------------------------------------------------------------------ Laplacian pyramid
def binomial_kernel(device, dtype):
    import torch
    taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=device, dtype=dtype) / 16.0
    return (taps[:, None] * taps[None, :])[None, None]


def _blur(img, kernel):
    """5x5 binomial blur with reflect borders. img: (N, 1, H, W) -> same shape."""
    import torch.nn.functional as F
    mode = "reflect" if min(img.shape[-2:]) > 2 else "replicate"
    return F.conv2d(F.pad(img, (2, 2, 2, 2), mode=mode), kernel)


def pyramid_down(img, kernel):
    """Blur then keep every second pixel: (N, 1, H, W) -> (N, 1, ceil(H/2), ceil(W/2))."""
    return _blur(img, kernel)[..., ::2, ::2]


def pyramid_up(img, size, kernel):
    """Zero-insertion to `size` (H, W) then blur x4 (the inverse of `pyramid_down`'s sampling)."""
    import torch
    up = torch.zeros(img.shape[:2] + tuple(size), device=img.device, dtype=img.dtype)
    up[..., ::2, ::2] = img
    return 4.0 * _blur(up, kernel)


def laplacian_pyramid(img, levels: int, kernel) -> list:
    """Band-pass levels (finest first) and the low-pass residual last."""
    bands = []
    current = img
    for _ in range(levels):
        lower = pyramid_down(current, kernel)
        bands.append(current - pyramid_up(lower, current.shape[-2:], kernel))
        current = lower
    bands.append(current)
    return bands


def pyramid_depth(size, levels: int) -> int:
    """At most `levels` levels for an image of `size` (H, W), stopping while the coarsest level still has a few
    pixels, so tiny images work too."""
    depth, side = 0, min(size)
    while depth < levels and side >= 8:
        side = (side + 1) // 2
        depth += 1
    return depth


def collapse_pyramid(bands: list, kernel):
    current = bands[-1]
    for band in reversed(bands[:-1]):
        current = band + pyramid_up(current, band.shape[-2:], kernel)
    return current


class LaplacianPyramidFusion(FusionTeacher):
    """`laplacian`: Burt-Adelson Laplacian-pyramid fusion; per band, the coefficient of larger magnitude (the
    stronger edge) wins, the low-pass residual is averaged."""

    name = "laplacian"

    def __init__(self, device: str = "cpu", levels: int = 5):
        super().__init__(device)
        self.levels = levels

    def fuse_batch(self, ir, vis_y):
        import torch
        kernel = binomial_kernel(ir.device, ir.dtype)
        levels = pyramid_depth(ir.shape[-2:], self.levels)
        bands_ir = laplacian_pyramid(ir, levels, kernel)
        bands_vis = laplacian_pyramid(vis_y, levels, kernel)
        fused = [torch.where(a.abs() >= b.abs(), a, b) for a, b in zip(bands_ir[:-1], bands_vis[:-1])]
        fused.append(0.5 * (bands_ir[-1] + bands_vis[-1]))
        return collapse_pyramid(fused, kernel).clamp(0, 1)

    def settings(self) -> dict[str, Any]:
        return {"teacher": self.name, "levels": self.levels, "detail_rule": "max-abs", "base_rule": "mean"}
