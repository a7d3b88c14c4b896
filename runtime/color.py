"""Colour handling shared by training, export checks and the runtime: fusion happens on luminance.

The visible frame goes to YCbCr (ITU-R BT.601, full range, the JPEG convention, values in [0, 1] with chroma
centred on 0.5); the model fuses IR with Y; colour comes back from the visible Cb/Cr.

Each function is written once and works on numpy arrays and torch tensors alike (only arithmetic, slicing and
`cat`), so the training code, the ONNX parity checks and the runtime cannot drift apart. `channel_axis` says where
the colour channels are: -1 for numpy images (H, W, 3), 1 for torch batches (N, 3, H, W).
"""
from __future__ import annotations

from typing import Any, Tuple

import numpy as np

# BT.601 full-range (JFIF) coefficients.
KR, KG, KB = 0.299, 0.587, 0.114
CB_SCALE = 0.5 / (1.0 - KB)  # 0.5643
CR_SCALE = 0.5 / (1.0 - KR)  # 0.7133

Array = Any  # np.ndarray or torch.Tensor


def _is_torch(x: Array) -> bool:
    return type(x).__module__.startswith("torch")


def _channel(x: Array, index: int, axis: int) -> Array:
    """Channel `index` of `x` along `axis`, keeping that axis (size 1)."""
    axis = axis % x.ndim
    sl = [slice(None)] * x.ndim
    sl[axis] = slice(index, index + 1)
    return x[tuple(sl)]


def _cat(parts, axis: int) -> Array:
    if _is_torch(parts[0]):
        import torch
        return torch.cat(parts, dim=axis)
    return np.concatenate(parts, axis=axis)


def _squeeze(x: Array, axis: int) -> Array:
    return x.squeeze(axis % x.ndim)


def rgb_to_ycbcr(rgb: Array, channel_axis: int = -1) -> Array:
    """RGB in [0, 1] -> YCbCr in [0, 1] (same layout)."""
    r, g, b = (_channel(rgb, i, channel_axis) for i in range(3))
    y = KR * r + KG * g + KB * b
    cb = (b - y) * CB_SCALE + 0.5
    cr = (r - y) * CR_SCALE + 0.5
    return _cat([y, cb, cr], channel_axis)


def ycbcr_to_rgb(ycbcr: Array, channel_axis: int = -1) -> Array:
    """YCbCr in [0, 1] -> RGB clipped to [0, 1] (same layout)."""
    y, cb, cr = (_channel(ycbcr, i, channel_axis) for i in range(3))
    r = y + (cr - 0.5) / CR_SCALE
    b = y + (cb - 0.5) / CB_SCALE
    g = (y - KR * r - KB * b) / KG
    return _cat([r, g, b], channel_axis).clip(0.0, 1.0)


def luminance(img: Array, channel_axis: int = -1) -> Array:
    """Y of an RGB image with the channel axis dropped; a gray image (no channel axis) is returned as it is.

    numpy: (H, W, 3) -> (H, W); (H, W) -> (H, W). torch: (N, 3, H, W) -> (N, H, W); use `channel_axis=1`.
    """
    expected_ndim = 3 if not _is_torch(img) else 4
    if img.ndim < expected_ndim or img.shape[channel_axis] == 1:
        return img if img.ndim < expected_ndim else _squeeze(img, channel_axis)
    r, g, b = (_squeeze(_channel(img, i, channel_axis), channel_axis) for i in range(3))
    return KR * r + KG * g + KB * b


def split_luminance(vis: Array, channel_axis: int = -1) -> Tuple[Array, Array | None]:
    """(Y, CbCr) of a visible image: CbCr keeps the channel axis with 2 channels; None for a gray image."""
    is_color = vis.ndim == (4 if _is_torch(vis) else 3) and vis.shape[channel_axis] == 3
    if not is_color:
        return luminance(vis, channel_axis), None
    ycbcr = rgb_to_ycbcr(vis, channel_axis)
    y = _squeeze(_channel(ycbcr, 0, channel_axis), channel_axis)
    cbcr = _cat([_channel(ycbcr, 1, channel_axis), _channel(ycbcr, 2, channel_axis)], channel_axis)
    return y, cbcr


def merge_luminance(y: Array, cbcr: Array | None, channel_axis: int = -1) -> Array:
    """Fused luminance Y (channel axis dropped) + visible CbCr -> RGB in [0, 1]; gray when `cbcr` is None."""
    if cbcr is None:
        return y.clip(0.0, 1.0)
    axis = channel_axis % cbcr.ndim
    y = y.unsqueeze(axis) if _is_torch(y) else np.expand_dims(y, axis)
    return ycbcr_to_rgb(_cat([y, cbcr], axis), axis)
