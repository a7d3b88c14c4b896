"""Colour handling shared by training, export checks and the runtime: fusion happens on luminance.

The visible frame goes to YCbCr (ITU-R BT.601, full range, the JPEG convention, values in [0, 1] with chroma
centred on 0.5); the model fuses IR with Y; colour comes back from the visible Cb/Cr.

Each function is written once and works on numpy arrays and torch tensors alike (only arithmetic, slicing and
`cat`), so the training code, the ONNX parity checks and the runtime cannot drift apart. `channel_axis` says where
the colour channels are: -1 for numpy images (H, W, 3), 1 for torch batches (N, 3, H, W).
"""
from __future__ import annotations

from typing import Any, Tuple

import cv2
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


# The per-frame colour conversions of the runtime: runtime.color's BT.601 full-range maths (split_luminance /
# merge_luminance) done by OpenCV's float32 YCrCb conversion, one C pass instead of numpy temporaries (0.1-0.3 ms
# instead of 1.5-6 ms per 640x480 frame here, which decided whether the pipeline met its 30% non-inference budget).
# Same coefficients (OpenCV rounds the chroma scales to 3 digits), float32 throughout:
# tests/test_color.py holds both to within 5e-4 (an eighth of an 8-bit level) of runtime.color.
def split_ycrcb(vis_rgb: np.ndarray) -> np.ndarray:
    """RGB float32 (H, W, 3) in [0, 1] -> YCrCb float32 (H, W, 3): Y, Cr, Cb with chroma centred on 0.5
    (= runtime.color.split_luminance, channels in OpenCV's order)."""
    return cv2.cvtColor(np.asarray(vis_rgb, dtype=np.float32), cv2.COLOR_RGB2YCrCb)


def merge_ycrcb(y: np.ndarray, ycrcb: np.ndarray) -> np.ndarray:
    """Fused Y (H, W) + the VIS YCrCb (H, W, 3) -> RGB float32 in [0, 1] (= runtime.color.merge_luminance).
    Overwrites the Y channel of `ycrcb` (each frame owns its own)."""
    ycrcb[..., 0] = y
    rgb = cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2RGB)
    return np.clip(rgb, 0.0, 1.0, out=rgb)
