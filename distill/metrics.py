"""The field's image-fusion metrics, computed exactly as the published tables compute them.

Infrared-visible fusion papers (CDDFuse, CVPR 2023; DDFM, ICCV 2023; and most work since) report EN, SD, SF, MI,
SCD, VIF, Qabf and SSIM (often also AG, PSNR, CC, MSE) with one de-facto standard evaluation script (MMIF-CDDFuse's
`utils/Evaluator.py`). Its numbers depend on details that differ from textbook definitions, so this module
reproduces that script's conventions, quirks included, to 1e-4 relative (tests/test_metrics.py checks every value
of ../shared/data/metrics_reference/roadscene_first8.json):

- Images are gray float arrays in [0, 255] read as `round(cvtColor(imread(p).astype(float32), BGR2GRAY))`
  (`read_gray_for_metrics`); colour fused images are evaluated on that luminance.
- EN: Shannon entropy (log2) of the 256-bin histogram of round(F).
- SD: standard deviation of F. SF: sqrt(mean(dx^2) + mean(dy^2)) with forward differences.
  AG: mean of sqrt((gx^2 + gy^2) / 2) with central differences (one-sided at the border).
- MI: MI(F, IR) + MI(F, VIS), natural log, joint histogram over the exact pixel values.
- SCD: corr(VIS, F - IR) + corr(IR, F - VIS).
- VIF: multi-scale pixel-domain VIF (Sheikh & Bovik): 4 scales, Gaussian window N = 2^(5-s) + 1, sigma = N / 5,
  sigma_nsq = 2, 'valid' filtering, dyadic subsampling; VIF(IR, F) + VIF(VIS, F); a 0/0 scale sum counts as 1.
- Qabf: Xydeas-Petrovic with 3x3 Sobel ('same', zero border), L = 1, Tg 0.9994, kg -15, Dg 0.5, Ta 0.9879,
  ka -22, Da 0.8. Quirk kept: where the two gradient magnitudes are equal, the strength ratio is gF, not 1.
- SSIM: SSIM(F, IR) + SSIM(F, VIS), 7x7 uniform window, sample covariance, K1 0.01, K2 0.03, data_range = 2
  (older scikit-image took the float dtype range [-1, 1]), mean over the window-complete interior.
- PSNR: 10 log10(max(F)^2 / MSE). MSE: (MSE(F, IR) + MSE(F, VIS)) / 2. CC: (corr(IR, F) + corr(VIS, F)) / 2.

Precision follows the reference too: SD, SF, AG, SCD, Qabf, SSIM, PSNR, CC and MSE are float32 arithmetic (the
script works on float32 images with float32 kernels, and scikit-image keeps float32 images in float32); EN, MI and
VIF are float64 (float64 histograms and Gaussian windows). Undefined values (a correlation with a constant image,
PSNR of a perfect match) come out as nan or inf, without warnings.

Speed: the reference's scipy `convolve2d` formulation takes about a second per 500x330 pair; here every filter is an
OpenCV separable / box / 3x3 filter on the whole image, cropped to what 'valid' or 'same' convolution would return
(for symmetric kernels correlation and convolution coincide), histograms are integer `bincount`s, and work on the
fused image is shared between metrics. benchmarks/bench_metrics.py measures the ratio against the scipy version.

Only numpy and OpenCV are needed (LPIPS, optional, imports torch and lpips lazily).
"""
from __future__ import annotations

import math
import os
import sys
import warnings
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import cv2
import numpy as np

from runtime.errors import FusionError

METRIC_NAMES = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM", "PSNR", "CC", "MSE")
# Lower is better only for MSE (and LPIPS); every other metric rewards higher values.
LOWER_IS_BETTER = frozenset({"MSE", "LPIPS"})
LPIPS_ENV = "FUSION_LPIPS_BACKBONE"
# VIF's coarsest scale needs a non-empty 'valid' window after three 'valid' filter-and-subsample steps.
MIN_SIDE = 41

# Qabf constants (Xydeas & Petrovic, 2000, as in the standard script).
_QABF_TG, _QABF_KG, _QABF_DG = 0.9994, -15.0, 0.5
_QABF_TA, _QABF_KA, _QABF_DA = 0.9879, -22.0, 0.8
# 3x3 Sobel kernels as the script convolves with them; cv2.filter2D correlates, hence the flips.
_SOBEL_Y = np.flip(np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], np.float32)).copy()
_SOBEL_X = np.flip(np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)).copy()
# SSIM constants (scikit-image defaults with data_range 2, sample covariance over a 7x7 window).
_SSIM_WIN = 7
_SSIM_C1 = (0.01 * 2.0) ** 2
_SSIM_C2 = (0.03 * 2.0) ** 2
_SSIM_COV_NORM = _SSIM_WIN ** 2 / (_SSIM_WIN ** 2 - 1.0)
_VIF_SIGMA_NSQ = 2.0
_VIF_EPS = 1e-10


# ---------------------------------------------------------------------------------------------------------- reading
def read_gray_for_metrics(path: str | os.PathLike) -> np.ndarray:
    """Read an image the way the standard evaluation does: float32 (H, W), integer values in [0, 255].

    `round(cv2.cvtColor(cv2.imread(path).astype(float32), COLOR_BGR2GRAY))`: gray files come back unchanged,
    colour files as their BT.601 luminance, 16-bit files as OpenCV's 8-bit reduction (like `cv2.imread`).
    """
    from runtime.imageio import decode_file  # the shared checks, so a cut-off JPEG is not scored

    bgr = decode_file(path, cv2.IMREAD_COLOR)
    # cv2's own conversion, not runtime.color: the rounding must match the reference to the last bit.
    return np.round(cv2.cvtColor(bgr.astype(np.float32), cv2.COLOR_BGR2GRAY))


# ----------------------------------------------------------------------------------------------------------- helpers
_allocator_warmed = False


def _warm_allocator() -> None:
    """Stop glibc from handing one call's temporaries back to the OS, to page-fault them in again on the next call.

    glibc trims the heap whenever more than twice its mmap threshold lies free at the top; that threshold starts at
    128 KiB and only rises when a larger mmapped block is freed. One metrics call allocates and frees ~30 MB of
    image-sized temporaries, so with the start values every call re-faults them: about 40% of the run time. Freeing
    one untouched 30 MiB block once raises the threshold (glibc's own adaptive rule, no setting is changed); after
    that, temporaries are reused. Elsewhere it is a harmless allocation.
    """
    global _allocator_warmed
    if not _allocator_warmed:
        np.empty(30 << 20, np.uint8)  # allocated (mmapped, never touched) and freed at once
        _allocator_warmed = True


def _as_gray(img: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim != 2:
        raise FusionError(f"{what} must be a gray image (H, W) in [0, 255], got shape {arr.shape}; "
                          f"read files with read_gray_for_metrics")
    return arr.astype(np.float32, copy=False)


def _check_triplet(ir: np.ndarray, vis: np.ndarray, fused: np.ndarray):
    ir, vis, fused = _as_gray(ir, "ir"), _as_gray(vis, "vis"), _as_gray(fused, "fused")
    if not (ir.shape == vis.shape == fused.shape):
        raise FusionError(f"image sizes differ: IR {ir.shape}, VIS {vis.shape}, fused {fused.shape} (H, W); "
                          f"fused images must have the size of their sources")
    for label, img in (("IR", ir), ("VIS", vis), ("fused", fused)):
        if not np.isfinite(img).all():
            raise FusionError(f"the {label} image holds NaN or infinite values; metrics need finite pixels")
    if min(fused.shape) < MIN_SIDE:
        raise FusionError(f"images of {fused.shape[1]}x{fused.shape[0]} are too small for the fusion metrics "
                          f"(VIF needs at least {MIN_SIDE}x{MIN_SIDE} pixels)")
    return ir, vis, fused


def _byte_codes(img: np.ndarray) -> np.ndarray | None:
    """uint8 view of an integer-valued image in [0, 255] (the usual case: images read from files), else None."""
    if img.min() < 0 or img.max() > 255:
        return None
    codes = img.astype(np.uint8)
    return codes if np.array_equal(codes, img) else None


def _entropy_bits(counts: np.ndarray) -> float:
    p = counts[counts > 0].astype(np.float64) / counts.sum()
    return float(-np.sum(p * np.log2(p)))


def _mutual_information(a: np.ndarray, b: np.ndarray, a_codes=None, b_codes=None) -> float:
    """MI in nats between the exact pixel values of `a` and `b` (what sklearn's mutual_info_score computes)."""
    if a_codes is not None and b_codes is not None:
        joint = np.bincount(a_codes.ravel().astype(np.int64) * 256 + b_codes.ravel(), minlength=65536)
        joint = joint.reshape(256, 256)
    else:  # non-integer images: every distinct value is its own label, as in the reference
        _, ia = np.unique(a.ravel(), return_inverse=True)
        _, ib = np.unique(b.ravel(), return_inverse=True)
        nb = int(ib.max()) + 1
        pairs, joint_counts = np.unique(ia.ravel().astype(np.int64) * nb + ib.ravel(), return_counts=True)
        joint = np.zeros((int(ia.max()) + 1, nb), np.int64)
        joint[pairs // nb, pairs % nb] = joint_counts
    total = float(joint.sum())
    pa = joint.sum(axis=1).astype(np.float64)
    pb = joint.sum(axis=0).astype(np.float64)
    if np.count_nonzero(pa) == 1 or np.count_nonzero(pb) == 1:
        return 0.0  # a constant image shares no information (exactly 0, as sklearn returns, not rounding noise)
    rows, cols = np.nonzero(joint)
    pab = joint[rows, cols].astype(np.float64)
    mi = np.sum(pab / total * (np.log(pab) + math.log(total) - np.log(pa[rows]) - np.log(pb[cols])))
    return float(max(mi, 0.0))


def _correlation(a: np.ndarray, b: np.ndarray) -> np.float32:
    """Pearson correlation in float32, the reference's arithmetic; nan when either image is constant."""
    da = a - np.mean(a)
    db = b - np.mean(b)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sum(da * db) / np.sqrt(np.sum(da ** 2) * np.sum(db ** 2))


# -------------------------------------------------------------------------------------------- single-image metrics
def entropy(fused: np.ndarray) -> float:
    """EN: entropy in bits of the 256-bin histogram of round(F)."""
    img = _as_gray(fused, "fused")
    codes = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return _entropy_bits(np.bincount(codes.ravel(), minlength=256))


def standard_deviation(fused: np.ndarray) -> float:
    """SD: population standard deviation of F (float32)."""
    return float(np.std(_as_gray(fused, "fused")))


def spatial_frequency(fused: np.ndarray) -> float:
    """SF: sqrt(mean of squared horizontal differences + mean of squared vertical differences)."""
    img = _as_gray(fused, "fused")
    return float(np.sqrt(np.mean((img[:, 1:] - img[:, :-1]) ** 2) + np.mean((img[1:, :] - img[:-1, :]) ** 2)))


def average_gradient(fused: np.ndarray) -> float:
    """AG: mean of sqrt((gx^2 + gy^2) / 2), central differences inside, one-sided at the border."""
    img = _as_gray(fused, "fused")
    gy, gx = np.gradient(img)
    return float(np.mean(np.sqrt((gx * gx + gy * gy) / np.float32(2))))


# ------------------------------------------------------------------------------------------------------------- VIF
def _gaussian_1d(size: int) -> np.ndarray:
    """1-D factor of MATLAB's fspecial('gaussian', size, size / 5); the 2-D window is its outer product."""
    half = (size - 1) / 2.0
    x = np.arange(-half, half + 1)
    g = np.exp(-(x * x) / (2.0 * (size / 5.0) ** 2))
    return g / g.sum()


_VIF_KERNELS = {scale: _gaussian_1d(2 ** (5 - scale) + 1) for scale in range(1, 5)}


def _filter_valid(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """convolve2d(img, outer(kernel, kernel), 'valid') for a symmetric kernel, in float64."""
    half = len(kernel) // 2
    out = cv2.sepFilter2D(img, cv2.CV_64F, kernel, kernel, borderType=cv2.BORDER_REFLECT)
    return out[half:img.shape[0] - half, half:img.shape[1] - half]


def _vif_scale_terms(var1: np.ndarray, var2: np.ndarray, sigma12: np.ndarray) -> tuple[float, float]:
    """(numerator, denominator) of one VIF scale for one reference.

    The reference applies its rules in sequence (clamp negative variances; gain 0 where either variance is below
    eps or the gain is negative; noise variance floored at eps). Where the gain ends up 0 the numerator term is
    log(1) = 0 whatever the noise variance, so only pixels with a positive gain and both variances >= eps count.
    log10(1 + t) is computed as log1p(t) / ln 10: the same value to the last bits, ten times faster.
    """
    eps = _VIF_EPS
    var1 = np.maximum(var1, 0.0)
    gain = sigma12 / (var1 + eps)
    noise = var2 - gain * sigma12
    np.maximum(noise, eps, out=noise)
    noise += _VIF_SIGMA_NSQ
    drop = gain <= 0
    drop |= var1 < eps
    drop |= var2 < eps
    gain[drop] = 0.0
    var1[var1 < eps] = 0.0
    gain *= gain
    gain *= var1
    gain /= noise
    num = np.sum(np.log1p(gain))
    var1 *= 1.0 / _VIF_SIGMA_NSQ
    den = np.sum(np.log1p(var1))
    return num / math.log(10.0), den / math.log(10.0)


def _vif_sources(sources: Sequence[np.ndarray], dist: np.ndarray) -> list[float]:
    """Multi-scale pixel VIF of `dist` against each reference in `sources`, sharing the work on `dist`."""
    # Scale 1 works on the float32 images, products included, exactly as the reference (float32 arrays times float32
    # arrays, filtered with a float64 window); from scale 2 on everything is float64.
    refs = [np.asarray(s, np.float32) for s in sources]
    dist = np.asarray(dist, np.float32)
    nums = [0.0] * len(refs)
    dens = [0.0] * len(refs)
    for scale in range(1, 5):
        kernel = _VIF_KERNELS[scale]
        if scale > 1:
            refs = [_filter_valid(r, kernel)[::2, ::2] for r in refs]
            dist = _filter_valid(dist, kernel)[::2, ::2]
        mu2 = _filter_valid(dist, kernel)
        var2 = np.maximum(_filter_valid(dist * dist, kernel) - mu2 * mu2, 0.0)
        for i, ref in enumerate(refs):
            mu1 = _filter_valid(ref, kernel)
            var1 = _filter_valid(ref * ref, kernel) - mu1 * mu1
            sigma12 = _filter_valid(ref * dist, kernel) - mu1 * mu2
            num, den = _vif_scale_terms(var1, var2, sigma12)
            nums[i] += num
            dens[i] += den
    out = []
    for num, den in zip(nums, dens):
        with np.errstate(divide="ignore", invalid="ignore"):
            value = np.float64(num) / np.float64(den)
        out.append(1.0 if np.isnan(value) else float(value))
    return out


def visual_information_fidelity(ir: np.ndarray, vis: np.ndarray, fused: np.ndarray) -> float:
    """VIF: VIF(IR, F) + VIF(VIS, F), multi-scale pixel domain (float64)."""
    ir, vis, fused = _check_triplet(ir, vis, fused)
    return float(sum(_vif_sources([ir, vis], fused)))


# ------------------------------------------------------------------------------------------------------------ Qabf
def _sobel_strength_orientation(img: np.ndarray):
    """(gradient magnitude, atan(gy / gx) with pi/2 where gx == 0), float32, zero-padded 'same' Sobel."""
    sx = cv2.filter2D(img, cv2.CV_32F, _SOBEL_X, borderType=cv2.BORDER_CONSTANT)
    sy = cv2.filter2D(img, cv2.CV_32F, _SOBEL_Y, borderType=cv2.BORDER_CONSTANT)
    strength = np.sqrt(sx * sx + sy * sy)
    nonzero = sx != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        orientation = np.where(nonzero, np.arctan(sy / np.where(nonzero, sx, np.float32(1))),
                               np.float32(math.pi / 2)).astype(np.float32)
    return strength, orientation


def _edge_preservation(g_src, a_src, g_fused, a_fused) -> np.ndarray:
    """Q^{AF}: how well F keeps the source's edge strength and orientation, per pixel (float32)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(g_src > g_fused, g_fused / g_src, g_src / g_fused)
    ratio = np.where(g_src == g_fused, g_fused, ratio).astype(np.float32)  # the reference's equal-case quirk
    f32 = np.float32
    alignment = f32(1) - np.abs(a_src - a_fused) / f32(math.pi / 2)
    with np.errstate(over="ignore"):
        q_strength = f32(_QABF_TG) / (f32(1) + np.exp(f32(_QABF_KG) * (ratio - f32(_QABF_DG))))
        q_orient = f32(_QABF_TA) / (f32(1) + np.exp(f32(_QABF_KA) * (alignment - f32(_QABF_DA))))
    return q_strength * q_orient


def _qabf_from_gradients(grad_ir, grad_vis, grad_fused) -> float:
    g_a, a_a = grad_ir
    g_b, a_b = grad_vis
    g_f, a_f = grad_fused
    q_af = _edge_preservation(g_a, a_a, g_f, a_f)
    q_bf = _edge_preservation(g_b, a_b, g_f, a_f)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.sum(q_af * g_a + q_bf * g_b) / np.sum(g_a + g_b))


def qabf(ir: np.ndarray, vis: np.ndarray, fused: np.ndarray) -> float:
    """Qabf (Q^{AB/F}): gradient-based edge information transferred from the sources into F (float32)."""
    ir, vis, fused = _check_triplet(ir, vis, fused)
    return _qabf_from_gradients(*(_sobel_strength_orientation(x) for x in (ir, vis, fused)))


# ------------------------------------------------------------------------------------------------------------ SSIM
_F32 = np.float32
_SSIM_C1_32, _SSIM_C2_32, _SSIM_COV_NORM_32 = _F32(_SSIM_C1), _F32(_SSIM_C2), _F32(_SSIM_COV_NORM)


def _box(img: np.ndarray) -> np.ndarray:
    """scipy.ndimage.uniform_filter(img, 7) bit for bit: a float32 vertical pass, then a horizontal one (OpenCV
    sums each window in float64 and rounds once, as scipy's line filter does)."""
    vertical = cv2.boxFilter(img, cv2.CV_32F, (1, _SSIM_WIN), normalize=True, borderType=cv2.BORDER_REFLECT)
    return cv2.boxFilter(vertical, cv2.CV_32F, (_SSIM_WIN, 1), normalize=True, borderType=cv2.BORDER_REFLECT)


def _ssim_moments(img: np.ndarray):
    x = np.asarray(img, np.float32)
    return x, _box(x), _box(x * x)


def _ssim_from_moments(a, b) -> float:
    """Mean SSIM over the window-complete interior, in float32 with scikit-image's order of operations (the
    published numbers come from scikit-image on float32 images), averaged in float64."""
    x, ux, uxx = a
    y, uy, uyy = b
    uxy = _box(x * y)
    vx = _SSIM_COV_NORM_32 * (uxx - ux * ux)
    vy = _SSIM_COV_NORM_32 * (uyy - uy * uy)
    vxy = _SSIM_COV_NORM_32 * (uxy - ux * uy)
    a1 = _F32(2) * ux * uy + _SSIM_C1_32
    a2 = _F32(2) * vxy + _SSIM_C2_32
    b1 = ux * ux + uy * uy + _SSIM_C1_32
    b2 = vx + vy + _SSIM_C2_32
    s = (a1 * a2) / (b1 * b2)
    pad = (_SSIM_WIN - 1) // 2
    return float(s[pad:-pad, pad:-pad].mean(dtype=np.float64))


def ssim(ir: np.ndarray, vis: np.ndarray, fused: np.ndarray) -> float:
    """SSIM(F, IR) + SSIM(F, VIS) with the field's settings (7x7 uniform window, data_range 2, float32)."""
    ir, vis, fused = _check_triplet(ir, vis, fused)
    mf = _ssim_moments(fused)
    return _ssim_from_moments(mf, _ssim_moments(ir)) + _ssim_from_moments(mf, _ssim_moments(vis))


# ---------------------------------------------------------------------------------------------- reference metrics
def mutual_information(ir: np.ndarray, vis: np.ndarray, fused: np.ndarray) -> float:
    """MI: MI(F, IR) + MI(F, VIS) in nats over the exact pixel values."""
    ir, vis, fused = _check_triplet(ir, vis, fused)
    cf, ca, cb = _byte_codes(fused), _byte_codes(ir), _byte_codes(vis)
    return _mutual_information(fused, ir, cf, ca) + _mutual_information(fused, vis, cf, cb)


def correlation_of_differences(ir: np.ndarray, vis: np.ndarray, fused: np.ndarray) -> float:
    """SCD: corr(VIS, F - IR) + corr(IR, F - VIS) (float32)."""
    ir, vis, fused = _check_triplet(ir, vis, fused)
    return float(_correlation(ir, fused - vis) + _correlation(vis, fused - ir))


def correlation_coefficient(ir: np.ndarray, vis: np.ndarray, fused: np.ndarray) -> float:
    """CC: (corr(IR, F) + corr(VIS, F)) / 2 (float32)."""
    ir, vis, fused = _check_triplet(ir, vis, fused)
    return float((_correlation(ir, fused) + _correlation(vis, fused)) / np.float32(2))


def mean_squared_error(ir: np.ndarray, vis: np.ndarray, fused: np.ndarray) -> float:
    """MSE: (MSE(F, IR) + MSE(F, VIS)) / 2 (float32)."""
    ir, vis, fused = _check_triplet(ir, vis, fused)
    return float(_mse32(ir, vis, fused))


def _mse32(ir, vis, fused) -> np.float32:
    return (np.mean((ir - fused) ** 2) + np.mean((vis - fused) ** 2)) / np.float32(2)


def peak_signal_to_noise_ratio(ir: np.ndarray, vis: np.ndarray, fused: np.ndarray) -> float:
    """PSNR: 10 log10(max(F)^2 / MSE), MSE as above (float32); inf for a perfect match."""
    ir, vis, fused = _check_triplet(ir, vis, fused)
    return float(_psnr32(np.max(fused), _mse32(ir, vis, fused)))


def _psnr32(peak, mse) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float32(10) * np.log10(peak ** 2 / mse))


# ------------------------------------------------------------------------------------------------------ everything
def fusion_metrics(ir: np.ndarray, vis: np.ndarray, fused: np.ndarray) -> dict[str, float]:
    """All of METRIC_NAMES for one fused image, as {name: float}.

    ir, vis, fused: gray (H, W) arrays in [0, 255] of one size (floats or integers; read files with
    `read_gray_for_metrics` to get the values the published tables were computed on). Work on F (its gradients,
    local moments and histogram) is done once and shared between metrics.
    """
    _warm_allocator()
    ir, vis, fused = _check_triplet(ir, vis, fused)
    codes_f = _byte_codes(fused)
    codes_a, codes_b = _byte_codes(ir), _byte_codes(vis)
    if codes_f is not None:
        en = _entropy_bits(np.bincount(codes_f.ravel(), minlength=256))
    else:
        en = entropy(fused)
    mse = _mse32(ir, vis, fused)
    grads = [_sobel_strength_orientation(x) for x in (ir, vis, fused)]
    moments_f = _ssim_moments(fused)
    vif_a, vif_b = _vif_sources([ir, vis], fused)
    values = {
        "EN": en,
        "SD": float(np.std(fused)),
        "SF": spatial_frequency(fused),
        "AG": average_gradient(fused),
        "MI": _mutual_information(fused, ir, codes_f, codes_a) + _mutual_information(fused, vis, codes_f, codes_b),
        "SCD": float(_correlation(ir, fused - vis) + _correlation(vis, fused - ir)),
        "VIF": vif_a + vif_b,
        "Qabf": _qabf_from_gradients(*grads),
        "SSIM": _ssim_from_moments(moments_f, _ssim_moments(ir)) + _ssim_from_moments(moments_f, _ssim_moments(vis)),
        "PSNR": _psnr32(np.max(fused), mse),
        "CC": float((_correlation(ir, fused) + _correlation(vis, fused)) / np.float32(2)),
        "MSE": float(mse),
    }
    return {name: float(values[name]) for name in METRIC_NAMES}


# ----------------------------------------------------------------------------------------------------------- LPIPS
_BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}


def resolve_lpips_backbone(path: str | os.PathLike | None = None, net: str = "alex") -> Path:
    """The local backbone weights file for LPIPS: `path`, else $FUSION_LPIPS_BACKBONE; FusionError when absent."""
    if net not in _BACKBONE_FILES:
        raise FusionError(f"unknown LPIPS backbone '{net}'; choose one of: {', '.join(_BACKBONE_FILES)}")
    given = path if path is not None else os.environ.get(LPIPS_ENV) or None
    hint = (f"LPIPS needs the ImageNet {net} backbone weights, which are not downloaded automatically: get "
            f"torchvision's {_BACKBONE_FILES[net]} (or a .safetensors of the same state dict), then pass "
            f"--lpips-backbone PATH or set {LPIPS_ENV}=PATH")
    if given is None:
        raise FusionError(hint)
    given = Path(given).expanduser()
    if not given.is_file():
        raise FusionError(f"LPIPS backbone weights not found at {given}; {hint}")
    return given


class LPIPSMetric:
    """LPIPS (Zhang et al., 2018) of a fused image: (LPIPS(F, IR) + LPIPS(F, VIS)) / 2, lower is better.

    The `lpips` package ships its small linear heads; the AlexNet/VGG trunk is built untrained (no download) and
    loaded from `backbone` (torchvision's state dict as .pth or .safetensors, or an lpips `net.` state dict).
    Gray inputs in [0, 255] are replicated to 3 channels and scaled to [-1, 1], as LPIPS expects.
    """

    def __init__(self, backbone: str | os.PathLike | None = None, net: str = "alex", device: str = "cpu"):
        from runtime.errors import require

        path = resolve_lpips_backbone(backbone, net)
        self.torch = require("torch", "LPIPS")
        lpips = require("lpips", "LPIPS")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's deprecation notice for lpips' `pretrained=` argument
            model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
        _load_backbone(model.net, path, self.torch)
        self.model = model.eval().to(device)
        self.device = device
        self.path = path

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        torch = self.torch
        t = [torch.from_numpy(np.ascontiguousarray(x, np.float32) / 127.5 - 1.0)[None, None].expand(1, 3, -1, -1)
             for x in (_as_gray(a, "image"), _as_gray(b, "image"))]
        with torch.no_grad():
            return float(self.model(t[0].to(self.device), t[1].to(self.device)).item())

    def __call__(self, ir: np.ndarray, vis: np.ndarray, fused: np.ndarray) -> float:
        ir, vis, fused = _check_triplet(ir, vis, fused)
        return (self.distance(fused, ir) + self.distance(fused, vis)) / 2.0


def _load_backbone(trunk, path: Path, torch) -> None:
    """Copy a torchvision `features.N.*` (or lpips `net.sliceK.N.*`) state dict into lpips' sliced trunk."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FusionError(f"cannot read LPIPS backbone weights {path} ({type(exc).__name__}: {exc}); "
                          f"give torchvision's state dict as .pth or .safetensors") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    slice_of = {}  # torchvision feature index -> lpips slice holding it
    for slice_name, block in trunk.named_children():
        for index, _ in block.named_children():
            slice_of[index] = slice_name
    wanted = trunk.state_dict()
    mapped = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "net":
            parts = parts[1:]
        if parts and parts[0] == "features" and len(parts) == 3 and parts[1] in slice_of:
            parts = [slice_of[parts[1]], parts[1], parts[2]]
        name = ".".join(parts)
        if name in wanted:
            mapped[name] = value
    missing = sorted(set(wanted) - set(mapped))
    bad_shapes = [k for k, v in mapped.items() if tuple(v.shape) != tuple(wanted[k].shape)]
    if missing or bad_shapes:
        raise FusionError(f"{path} does not hold the expected LPIPS backbone (missing {len(missing)} tensors"
                          f"{', e.g. ' + missing[0] if missing else ''}; {len(bad_shapes)} of the wrong shape); "
                          f"give torchvision's {type(trunk).__name__} ImageNet weights")
    trunk.load_state_dict(mapped, strict=True)


# ---------------------------------------------------------------------------------------------------------- folders
def _fused_files(fused_dir: Path) -> dict[str, Path]:
    from runtime.imageio import list_images

    if not fused_dir.is_dir():
        raise FusionError(f"fused image folder not found: {fused_dir}")
    return list_images(fused_dir)


def evaluate_folder(ir_dir: str | os.PathLike, vis_dir: str | os.PathLike, fused_dir: str | os.PathLike,
                    names: str | os.PathLike | Iterable[str] | None = None, *, progress: bool = False,
                    skip_bad: bool = False, lpips_backbone: str | os.PathLike | None = None,
                    lpips_net: str | None = None) -> dict:
    """Metrics of every fused image in `fused_dir` against its IR/VIS sources (matched by file stem).

    names: a split file or an iterable of stems (default: every IR/VIS pair); skip_bad: drop source pairs with a
    missing partner (with a warning) instead of failing. Fused files may have another
    extension than the sources and may be colour (scored on luminance) or gray. A missing fused image or a size
    mismatch raises one FusionError listing every offender. With `lpips_backbone` (or `lpips_net`, using
    $FUSION_LPIPS_BACKBONE), an "LPIPS" entry is added to each row.
    Returns {"mean": {metric: float}, "per_image": {stem: {metric: float}}, "count": N}.
    """
    from runtime.imageio import discover_pairs

    fused_dir = Path(fused_dir)
    pairs = discover_pairs(ir_dir=ir_dir, vis_dir=vis_dir, names=names, skip_bad=skip_bad)
    fused_files = _fused_files(fused_dir)
    missing = [p.name for p in pairs if p.name not in fused_files]
    if missing:
        listing = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise FusionError(f"{len(missing)} of {len(pairs)} fused image(s) missing from {fused_dir}: {listing} "
                          f"(fuse them first, or restrict the evaluation with --names)")
    lpips_metric = None
    if lpips_backbone is not None or lpips_net is not None:
        lpips_metric = LPIPSMetric(lpips_backbone, net=lpips_net or "alex")

    per_image: dict[str, dict[str, float]] = {}
    mismatched: list[str] = []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(pairs), desc="fusion eval", unit="image", file=sys.stderr, dynamic_ncols=True)
    try:
        for pair in pairs:
            ir = read_gray_for_metrics(pair.ir)
            vis = read_gray_for_metrics(pair.vis)
            fused = read_gray_for_metrics(fused_files[pair.name])
            if not (ir.shape == vis.shape == fused.shape):
                mismatched.append(f"{pair.name} (IR {ir.shape[1]}x{ir.shape[0]}, VIS {vis.shape[1]}x{vis.shape[0]}, "
                                  f"fused {fused.shape[1]}x{fused.shape[0]})")
            elif not mismatched:  # once something is wrong, only keep checking sizes
                row = fusion_metrics(ir, vis, fused)
                if lpips_metric is not None:
                    row["LPIPS"] = lpips_metric(ir, vis, fused)
                per_image[pair.name] = row
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if mismatched:
        listing = "; ".join(mismatched[:10]) + (f"; and {len(mismatched) - 10} more" if len(mismatched) > 10 else "")
        raise FusionError(f"{len(mismatched)} fused image(s) do not have the size of their sources: {listing} "
                          f"(fused images must be written at the source resolution)")
    keys = list(next(iter(per_image.values())).keys())
    mean = {k: float(np.mean([row[k] for row in per_image.values()])) for k in keys}
    return {"mean": mean, "per_image": per_image, "count": len(per_image)}


# ----------------------------------------------------------------------------------------------------------- tables
_DECIMALS = {"MSE": 2}


def format_value(metric: str, value: float) -> str:
    if value is None or not np.isfinite(value):
        return str(value)
    return f"{value:.{_DECIMALS.get(metric, 4)}f}"


def markdown_table(rows: Mapping[str, Mapping[str, float]], label: str = "") -> str:
    """A Markdown table with one row per entry of `rows` ({row name: {metric: value}}).

    Columns follow METRIC_NAMES order (then any other metric, e.g. LPIPS, in first-seen order); a metric a row
    lacks is left blank.
    """
    seen: list[str] = []
    for row in rows.values():
        for key in row:
            if key not in seen:
                seen.append(key)
    columns = [m for m in METRIC_NAMES if m in seen] + [m for m in seen if m not in METRIC_NAMES]
    lines = ["| " + " | ".join([label] + columns) + " |",
             "|" + "|".join(["---"] + ["---:"] * len(columns)) + "|"]
    for name, row in rows.items():
        cells = [format_value(m, row[m]) if m in row else "" for m in columns]
        lines.append("| " + " | ".join([str(name)] + cells) + " |")
    return "\n".join(lines) + "\n"
