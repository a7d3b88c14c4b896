import numpy as np
import pytest
import torch

from runtime.color import luminance, merge_luminance, rgb_to_ycbcr, split_luminance, ycbcr_to_rgb
from runtime.imageio import read_vis


def test_ycbcr_matches_opencv_and_round_trips(roadscene, test_names):
    import cv2
    rgb = read_vis(roadscene / "vi" / f"{test_names[0]}.jpg")
    ycbcr = rgb_to_ycbcr(rgb)
    ycrcb_cv = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)  # float input: Cr/Cb centred on 0.5
    assert np.allclose(ycbcr[..., 0], ycrcb_cv[..., 0], atol=1e-5)
    assert np.allclose(ycbcr[..., 1], ycrcb_cv[..., 2], atol=1e-4)
    assert np.allclose(ycbcr[..., 2], ycrcb_cv[..., 1], atol=1e-4)
    assert np.allclose(ycbcr_to_rgb(ycbcr), rgb, atol=1e-5)


def test_numpy_and_torch_agree(roadscene, test_names):
    rgb = read_vis(roadscene / "vi" / f"{test_names[1]}.jpg")
    y_np, cbcr_np = split_luminance(rgb)
    batch = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    y_t, cbcr_t = split_luminance(batch, channel_axis=1)
    assert y_t.shape == (1,) + rgb.shape[:2] and cbcr_t.shape == (1, 2) + rgb.shape[:2]
    assert np.allclose(y_t[0].numpy(), y_np, atol=1e-6)
    assert np.allclose(cbcr_t[0].permute(1, 2, 0).numpy(), cbcr_np, atol=1e-6)
    fused = np.clip(y_np * 0.5 + 0.25, 0, 1)
    rgb_np = merge_luminance(fused, cbcr_np)
    rgb_t = merge_luminance(torch.from_numpy(fused)[None], cbcr_t, channel_axis=1)
    assert np.allclose(rgb_t[0].permute(1, 2, 0).numpy(), rgb_np, atol=1e-5)
    assert np.allclose(luminance(rgb_np), fused, atol=2e-2)  # chroma restored, luminance kept (up to clipping)


def test_gray_inputs_pass_through():
    gray = np.random.default_rng(0).random((10, 12)).astype(np.float32)
    y, cbcr = split_luminance(gray)
    assert cbcr is None and y is gray
    assert merge_luminance(gray, None).shape == (10, 12)
    assert luminance(torch.ones(2, 1, 5, 5), channel_axis=1).shape == (2, 5, 5)


def test_runtime_colour_path_matches_the_shared_colour_code(roadscene):
    """The pipeline's per-frame colour conversions (OpenCV float32 YCrCb, for speed) are runtime.color's BT.601
    full-range maths: a real RoadScene frame and saturated random colours agree both ways to 5e-4 (an eighth of an
    8-bit level; OpenCV rounds the chroma scales to 3 digits), with a fused Y outside [0, 1] clipped the same."""
    from runtime.color import merge_ycrcb, split_ycrcb
    rng = np.random.default_rng(0)
    real = read_vis(roadscene / "vi" / "FLIR_00060.jpg")
    saturated = rng.choice([0.0, 0.2, 1.0], size=(48, 64, 3)).astype(np.float32)
    for vis in (real, saturated):
        ycrcb = split_ycrcb(vis)
        y, cbcr = split_luminance(vis)
        assert ycrcb.dtype == np.float32 and ycrcb.shape == vis.shape
        assert np.abs(ycrcb[..., 0] - y).max() < 1e-4
        assert np.abs(ycrcb[..., 2] - cbcr[..., 0]).max() < 5e-4      # Cb (OpenCV orders Y, Cr, Cb)
        assert np.abs(ycrcb[..., 1] - cbcr[..., 1]).max() < 5e-4      # Cr
        fused_y = (1.3 * rng.random(y.shape) - 0.15).astype(np.float32)
        expected = merge_luminance(fused_y, cbcr)
        rgb = merge_ycrcb(fused_y, ycrcb)
        assert rgb.dtype == np.float32 and rgb.min() >= 0.0 and rgb.max() <= 1.0
        assert np.abs(rgb - expected).max() < 5e-4
