"""benchmarks.temporal (warped temporal difference) on real RoadScene images panned by a virtual camera: a layer that
follows the VIS motion is steady, one that jumps every third frame (a held 9 fps IR frame) is not, and a scene cut is
left out rather than counted."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from benchmarks.temporal import held_at, luma, vis_flows, warped_difference
from runtime.imageio import read_raw

STEMS = ("FLIR_00060", "FLIR_05095")     # training pairs (train.txt)
SIZE = (192, 144)                        # (W, H) of the virtual camera
FRAMES = 10
VELOCITY = (2.5, 1.0)                    # px per frame


@pytest.fixture(scope="module")
def pairs(roadscene):
    """(IR gray, VIS RGB) of each stem."""
    out = []
    for stem in STEMS:
        ir = read_raw(roadscene / "ir" / f"{stem}.jpg")
        out.append((cv2.cvtColor(ir, cv2.COLOR_RGB2GRAY) if ir.ndim == 3 else ir,
                    read_raw(roadscene / "vi" / f"{stem}.jpg")))
    return out


def view(image: np.ndarray, k: float, size=SIZE, origin=(40.0, 30.0)) -> np.ndarray:
    """Frame k of a steady pan over `image` (bilinear, sub-pixel)."""
    matrix = np.array([[1.0, 0.0, -(origin[0] + VELOCITY[0] * k)], [0.0, 1.0, -(origin[1] + VELOCITY[1] * k)]])
    return cv2.warpAffine(image, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


@pytest.fixture(scope="module")
def pan(pairs):
    ir, vis = pairs[0]
    vis_frames = [view(vis, k) for k in range(FRAMES)]
    return ir, vis_frames, vis_flows(vis_frames)


def test_steady_pan_is_far_steadier_than_content_that_jumps_every_third_frame(pan):
    ir, vis_frames, flows = pan
    steady = warped_difference([view(ir, k) for k in range(FRAMES)], flows)
    jumpy = warped_difference([view(ir, 3 * (k // 3)) for k in range(FRAMES)], flows)
    assert steady["pairs_used"] == jumpy["pairs_used"] == FRAMES - 1
    assert steady["pairs_skipped"] == 0 and len(steady["per_pair"]) == FRAMES - 1
    assert steady["mean"] < 0.25 * jumpy["mean"]
    # Every pair is off: a held frame stays while the view moves one step, a new one jumps three.
    assert steady["mean"] < 3.0
    assert all(d > 2 * steady["mean"] for d in jumpy["per_pair"])


def test_vis_itself_scores_low_and_flows_can_be_given_as_frames(pan):
    _, vis_frames, flows = pan
    own = warped_difference(vis_frames, flows)
    again = warped_difference(vis_frames, vis_frames)        # flow computed inside: the same figure
    assert own["mean"] < 2.0
    assert again["mean"] == pytest.approx(own["mean"], abs=1e-6)


def test_frames_of_another_size_are_brought_to_the_vis_size(pan):
    """A half-resolution camera of the same view (the 320x240 IR beside the 640x480 VIS) is resized first: still
    steady when it follows the motion."""
    ir, _, flows = pan
    full = warped_difference([view(ir, k) for k in range(FRAMES)], flows)
    half = [cv2.resize(view(ir, k), (SIZE[0] // 2, SIZE[1] // 2), interpolation=cv2.INTER_AREA)
            for k in range(FRAMES)]
    jumpy = warped_difference([view(ir, 3 * (k // 3)) for k in range(FRAMES)], flows)
    result = warped_difference(half, flows)
    assert result["pairs_used"] == FRAMES - 1
    assert result["mean"] < 0.5 * jumpy["mean"]
    assert result["mean"] < full["mean"] + 2.0


def test_scene_cut_is_skipped_not_counted(pairs):
    """Five frames of one scene, then five of another: the pair across the cut fails the forward-backward check
    for most pixels and is left out; the figure is that of the steady pans."""
    (ir_a, vis_a), (ir_b, vis_b) = pairs
    vis_frames = [view(vis_a, k) for k in range(5)] + [view(vis_b, k) for k in range(5, 10)]
    ir_frames = [view(ir_a, k) for k in range(5)] + [view(ir_b, k) for k in range(5, 10)]
    flows = vis_flows(vis_frames)
    assert flows.pairs[4].index == 5 and not flows.pairs[4].used and flows.pairs[4].valid_share < 0.5
    result = warped_difference(ir_frames, flows)
    assert result["pairs_skipped"] == 1 and result["pairs_used"] == 8
    assert result["per_pair"][4] is None
    assert result["mean"] < 3.0


def test_colour_order_and_length_are_checked(pan):
    _, vis_frames, flows = pan
    rgb = vis_frames[0]
    bgr = rgb[:, :, ::-1].copy()
    np.testing.assert_allclose(luma(bgr, bgr=True), luma(rgb), atol=1e-3)
    expected = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    np.testing.assert_allclose(luma(rgb), expected, atol=0.01)
    with pytest.raises(ValueError):
        warped_difference(vis_frames[:-1], flows)


def test_slower_camera_is_held_at_the_vis_times():
    """9 fps frames at 30 fps VIS times: each VIS frame shows the latest one taken at or before it."""
    frames = [np.full((2, 2), j, np.uint8) for j in range(4)]
    held = [int(f[0, 0]) for f in held_at(frames, 9.0, 30.0, 12)]
    assert held == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3]
