"""Differentiable image losses for the generators (shapes documented kornia-style)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(coords ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).to(dtype)[None, None]  # (1,1,size,size)


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5, data_range: float = 1.0
         ) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004, Gaussian window) of x, y (N,C,H,W) -> (N,). Images smaller than the window use
    a window of their size."""
    window = min(window, x.shape[-1], x.shape[-2])
    if window % 2 == 0:
        window -= 1
    channels = x.shape[1]
    kernel = _gaussian_window(window, sigma, x.device, x.dtype).expand(channels, 1, window, window)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(t):
        return F.conv2d(t, kernel, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(1)


def pearson_correlation(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-image Pearson correlation of x, y (N,C,H,W) -> (N,) in [-1, 1]."""
    x = x.flatten(1) - x.flatten(1).mean(1, keepdim=True)
    y = y.flatten(1) - y.flatten(1).mean(1, keepdim=True)
    return (x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1) + eps)
