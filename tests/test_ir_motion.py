"""IR motion compensation (runtime.motion and its pairing): a slow thermal camera's frame carried to the VIS frame's
time. Behaviour on real RoadScene images moved at known velocities, media timestamps only (no wall-clock rates)."""
from __future__ import annotations

import math
import threading
import time

import cv2
import numpy as np
import pytest

from runtime.capture import FrameBuffer
from runtime.errors import FusionError
from runtime.imageio import read_raw
from runtime.motion import IrMotionCompensator, VisHistory, resolve_mode
from runtime.pairing import match_latest
from runtime.pipeline import FusionPipeline
from runtime.sources import Frame
from helpers import FullFrameSink, NumpyBackend, PanningSource, RecordingSink, SyntheticSource

STEM = "FLIR_00060"          # a training pair (train.txt)


@pytest.fixture(scope="module")
def scene(roadscene):
    ir = read_raw(roadscene / "ir" / f"{STEM}.jpg")
    ir = cv2.cvtColor(ir, cv2.COLOR_RGB2GRAY) if ir.ndim == 3 else ir
    vis = read_raw(roadscene / "vi" / f"{STEM}.jpg")
    return ir, vis


def view(image: np.ndarray, x: float, y: float, size=(320, 240)) -> np.ndarray:
    """The `size` (W, H) window of `image` whose corner sits at (x, y) (sub-pixel: bilinear)."""
    matrix = np.array([[1.0, 0.0, -x], [0.0, 1.0, -y]])
    return cv2.warpAffine(image, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def residual_shift(a: np.ndarray, b: np.ndarray, margin: int = 24) -> float:
    """The translation between two images (phase correlation on their interior), in pixels."""
    crop = (slice(margin, -margin), slice(margin, -margin))
    window = cv2.createHanningWindow(a[crop].shape[::-1], cv2.CV_64F)
    (dx, dy), _ = cv2.phaseCorrelate(a[crop].astype(np.float64), b[crop].astype(np.float64), window)
    return math.hypot(dx, dy)


@pytest.mark.parametrize("velocity", [(2.75, 0.0), (4.0, -2.5), (-9.0, 3.0), (25.0, 0.0), (-30.0, 8.0)])
def test_pattern_moving_at_a_known_velocity_is_carried_to_the_vis_time(scene, velocity):
    """The rig pans at `velocity` px per VIS frame (30 fps); the IR frame was taken 3 VIS frames before the current
    one (IR at 9-10 fps). The compensated IR lands within 0.5 px of the IR rendered at the VIS time; held, it is off
    by the whole motion. The last two are a fast pan (75-93 px in 0.1 s at 320 px wide: a car at speed)."""
    ir, vis = scene
    vx, vy = velocity
    origin = (60.0, 40.0)
    t_now, t_ir = 0.1, 0.0
    frames_back = 3
    at = lambda k, image: view(image, origin[0] + vx * k, origin[1] + vy * k)   # noqa: E731 (frame k of a pan)
    vis_now, vis_ref = at(frames_back, vis), at(0, vis)
    held, truth = at(0, ir), at(frames_back, ir)
    compensator = IrMotionCompensator()
    moved, info = compensator.compensate(held, vis_now, vis_ref, t_now, t_ir, t_ir)
    assert info.applied, info.reason
    assert residual_shift(held, truth) > 0.9 * math.hypot(vx, vy) * frames_back
    assert residual_shift(moved, truth) < 0.5
    crop = (slice(24, -24), slice(24, -24))
    error_held = np.abs(held.astype(float) - truth)[crop].mean()
    error_moved = np.abs(moved.astype(float) - truth)[crop].mean()
    assert error_moved < 0.5 * error_held


def test_time_between_frames_scales_the_motion(scene):
    """The VIS reference was taken one VIS frame after the IR frame: only the part of the motion from the IR time
    to now is applied (IR at t=0, VIS reference at t=1/30, now at t=4/30 -> 4/3 of the measured flow)."""
    ir, vis = scene
    v = 3.0
    at = lambda k, image: view(image, 50.0 + v * k, 30.0)   # noqa: E731
    compensator = IrMotionCompensator()
    moved, info = compensator.compensate(at(0, ir), at(4, vis), at(1, vis), 4 / 30, 1 / 30, 0.0,
                                         max_ref_gap_s=0.04)
    assert info.applied
    assert residual_shift(moved, at(4, ir)) < 0.5


def test_scene_cut_keeps_the_held_frame(scene, roadscene):
    """The VIS reference is another scene (a cut between the IR frame and now): no warped artefact, the held frame
    is returned untouched."""
    ir, vis = scene
    other = read_raw(roadscene / "vi" / "FLIR_05095.jpg")
    held = view(ir, 40, 40)
    moved, info = IrMotionCompensator().compensate(held, view(vis, 40, 40), view(other, 40, 40), 0.1, 0.0, 0.0)
    assert not info.applied and "unreliable" in info.reason
    assert moved is held


def test_no_vis_frame_near_the_ir_time_keeps_the_held_frame(scene):
    """A VIS outage (or an IR frame older than the history): the nearest VIS frame is far from the IR time."""
    ir, vis = scene
    held = view(ir, 40, 40)
    moved, info = IrMotionCompensator().compensate(held, view(vis, 43, 40), view(vis, 40, 40), 0.5, 0.2, 0.0)
    assert not info.applied and moved is held
    moved, info = IrMotionCompensator().compensate(held, view(vis, 43, 40), None, 0.5, None, 0.0)
    assert not info.applied and moved is held


def test_vis_history_finds_the_nearest_frame_and_forgets_old_ones():
    history = VisHistory(seconds=0.2)
    frames = [Frame(np.zeros((2, 2), np.uint8), k / 30, 0.0, k) for k in range(20)]
    for frame in frames:
        history.add(frame)
    assert history.nearest(0.5).index == 15
    assert history.nearest(0.0).index == min(f.index for f in history.frames)   # older frames are gone
    assert frames[-1].t_media - history.frames[0].t_media <= 0.2 + 1 / 30
    history.add(Frame(np.zeros((2, 2), np.uint8), 0.0, 0.0, 99))                # the timeline restarted
    assert [f.index for f in history.frames] == [99]


def test_match_latest_never_takes_a_future_frame():
    stop = threading.Event()
    buffer = FrameBuffer(16, lossless=True)
    for j in range(4):
        buffer.put(Frame(np.zeros((2, 2), np.uint8), j / 9, 0.0, j), stop)
    buffer.end()
    assert match_latest(buffer, 0.10, True, stop, lambda: False).index == 0   # 0.111 is nearer, but in the future
    assert match_latest(buffer, 0.12, True, stop, lambda: False).index == 1
    assert match_latest(buffer, 0.30, True, stop, lambda: False).index == 2
    assert [f.index for f in buffer.frames] == [2, 3]


def test_resolve_mode():
    assert resolve_mode("auto", 9, 30, "vis") is True
    assert resolve_mode("auto", 30, 30, "vis") is False
    assert resolve_mode("flow", 30, 30, "vis") is True
    assert resolve_mode("flow", 60, 30, "ir") is False        # the IR camera drives: nothing to carry forward
    assert resolve_mode("off", 9, 30, "vis") is False
    with pytest.raises(FusionError, match="--ir-motion"):
        resolve_mode("warp", 9, 30, "vis")


def test_file_pairing_with_motion_takes_the_latest_ir_frame():
    """9 fps IR against 30 fps VIS, read as files, --ir-motion auto: each VIS frame gets the newest IR frame taken
    at or before it (never a future one), and every VIS frame is fused."""
    ir = SyntheticSource(fps=9, frames=27, live=False, role="ir")
    vis = SyntheticSource(fps=30, frames=90, live=False, role="vis")
    sink = RecordingSink()
    pipeline = FusionPipeline(ir_source=ir, vis_source=vis, backend=NumpyBackend(), sinks=[sink], imgsz="48x64",
                              verbose=False)
    report = pipeline.run()
    got = {int(info.name): int(pixel[0]) for pixel, info in sink.frames}
    assert got == {i: math.floor(i / 30 * 9 + 1e-9) for i in range(90)}
    assert report["counters"].get("unpaired", 0) == 0
    assert all(info.pair_error_ms <= 1e-6 for _, info in sink.frames)
    # flat synthetic frames carry no motion: either applied with zero flow or held, never anything else
    assert report["counters"]["ir_motion_applied"] + report["counters"]["ir_motion_held"] == 90
    # its CPU by piece, for runtime.measure's table: the small frame always, flow / fit / warp when applied
    assert pipeline.stats.total("motion small frame") > 0
    if report["counters"]["ir_motion_applied"]:
        assert all(pipeline.stats.total(f"motion {piece}") > 0 for piece in ("flow", "fit", "warp"))


def test_live_pairing_with_motion_never_waits_for_a_future_frame():
    """Live cameras (9 Hz IR, 30 Hz VIS): with motion compensation no VIS frame waits for the IR camera; every pair
    has its IR frame at or before the VIS frame, at most one IR period (plus --sync-ms) before it. The run lasts
    until 20 frames are fused (30 s at most)."""
    ir = SyntheticSource(fps=9, live=True, role="ir")
    vis = SyntheticSource(fps=30, live=True, role="vis")
    sink = RecordingSink()
    pipeline = FusionPipeline(ir_source=ir, vis_source=vis, backend=NumpyBackend(), sinks=[sink], imgsz="48x64",
                              duration_s=30, verbose=False)
    sink.stop_when(lambda frames: sum(info.mode == "fused" for _, info in frames) >= 20, pipeline.stop)
    pipeline.run()
    errors = [info.pair_error_ms for _, info in sink.frames if info.mode == "fused"]
    assert len(errors) >= 20, "fewer than 20 frames were fused in 30 s"
    assert max(errors) <= 1e-6                                   # the IR frame is never newer than the VIS frame
    assert min(errors) >= -(1000 / 9 + 60.0)


def test_off_is_nearest_time_pairing_without_any_warp(tmp_path, roadscene):
    """--ir-motion off: every streamed frame is exactly the synchronous fusion of the nearest-time pair (the code path
    of nearest pairing, no warp), here on clips cut from a real pair that pans."""
    ir, vis = read_raw(roadscene / "ir" / f"{STEM}.jpg"), read_raw(roadscene / "vi" / f"{STEM}.jpg")
    ir = cv2.cvtColor(ir, cv2.COLOR_RGB2GRAY) if ir.ndim == 3 else ir

    sink = FullFrameSink()
    pipeline = FusionPipeline(ir_source=PanningSource(ir, fps=9, frames=9, live=False, role="ir"),
                              vis_source=PanningSource(vis, fps=30, frames=30, live=False, role="vis"),
                              backend=NumpyBackend(),
                              sinks=[sink], imgsz="96x128", ir_motion="off", verbose=False)
    report = pipeline.run()
    assert "ir_motion_applied" not in report["counters"] and "motion" not in report["stages_ms"]
    for rgb, info in sink.frames:
        t = int(info.name) / 30
        j = min(range(9), key=lambda k: abs(k / 9 - t))
        expected = pipeline.fuse(view(ir, 40 + 90 * j / 9, 30, size=(128, 96)), view(vis, 40 + 90 * t, 30,
                                                                                     size=(128, 96)))
        assert np.array_equal(rgb, (expected * 255).round().astype(np.uint8)), info.name


def test_match_latest_makes_room_while_waiting():
    """A lossless buffer full of frames all before t: the superseded ones are dropped while waiting, so the reader can
    add the frame after t (no deadlock), and the latest one at or before t is chosen."""
    stop = threading.Event()
    buffer = FrameBuffer(4, lossless=True)
    for j in range(4):
        buffer.put(Frame(np.zeros((2, 2), np.uint8), j / 60, 0.0, j), stop)

    def reader():
        for j in range(4, 8):
            buffer.put(Frame(np.zeros((2, 2), np.uint8), j / 60, 0.0, j), stop)
        buffer.end()
    result = {}
    threads = [threading.Thread(target=reader, daemon=True), threading.Thread(
        target=lambda: result.update(chosen=match_latest(buffer, 5.5 / 60, True, stop, lambda: False)), daemon=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    stuck = [thread.is_alive() for thread in threads]
    stop.set()                       # frees a stuck waiter either way
    assert stuck == [False, False], "the reader and the pairing waited on each other"
    assert result["chosen"].index == 5


def test_time_against_loads_an_earlier_motion_module_and_times_both(roadscene):
    """`python -m benchmarks.ir_motion --time-against REV [--cold]`: runtime/motion.py read from git at REV, both
    versions called on the same frames (back to back, or each after a pause); a revision git does not know is a
    one-line exit."""
    import subprocess
    from pathlib import Path
    from benchmarks.ir_motion import Rig, motion_at, time_against
    from runtime.assets.make_samples import PRESETS, read_scene
    repo = Path(__file__).resolve().parents[1]
    if subprocess.run(["git", "-C", str(repo), "cat-file", "-e", "HEAD:runtime/motion.py"],
                      capture_output=True).returncode:
        pytest.skip("not a git checkout with runtime/motion.py committed (--time-against reads git)")
    earlier = motion_at("HEAD")
    assert earlier.IrMotionCompensator is not IrMotionCompensator and hasattr(earlier, "VisHistory")
    preset = PRESETS["480p"]
    rig = Rig(preset, [read_scene(roadscene, stem) for stem in preset.scenes])
    result = time_against(rig, "HEAD", frames=6, rounds=2)
    assert set(result["per_frame_ms"]) == {"here", "HEAD"} and all(v > 0 for v in result["per_frame_ms"].values())
    assert result["frames"] > 0 and result["calls"] == result["frames"] * 2
    # `--cold --raw-ir`: thread CPU after a pause, the raw IR frame registered in the warp
    cold = time_against(rig, "HEAD", frames=6, rounds=1, pause_ms=1.0, raw_ir=True)
    assert cold["pause_ms"] == 1.0 and cold["raw_ir"] and cold["calls"] == cold["frames"]
    assert min(cold["per_frame_ms"].values()) > 0
    with pytest.raises(SystemExit, match="cannot read runtime/motion.py at 'no-such-revision'"):
        motion_at("no-such-revision")


def test_targets_hold_each_fused_video_to_the_larger_of_its_sources(tmp_path):
    """Issue 25's steadiness bar as the benchmark states it: fused warped difference / max(VIS clip, truth IR clip)
    <= 1.05, for the unfiltered truth run and each `--temporal-filter` run; and the per-pair chart is drawn with the
    pairs skipped at scene cuts left as gaps."""
    from benchmarks.ir_motion import FILTERED_FLOW, FILTERED_TRUTH, targets, write_plot
    geo = {"compensated": {"mean_px": 0.3, "mae": 1.0}, "held": {"mae": 4.0}}
    rows = {"fused, IR 9 fps, --ir-motion flow": {"mean": 1.9}, "fused, IR truth 30 fps, --ir-motion off": {"mean": 1.5},
            f"{FILTERED_FLOW} 0.6": {"mean": 1.46}, f"{FILTERED_TRUTH} 0.6": {"mean": 1.0},
            "VIS clip": {"mean": 0.6}, "IR truth clip (30 fps)": {"mean": 1.4}}
    goals = targets(geo, {"rows": rows})
    assert goals["steady_truth"]["value"] == pytest.approx(1.5 / 1.4) and not goals["steady_truth"]["met"]
    assert goals["steady_flow_filtered"]["value"] == pytest.approx(1.46 / 1.4) and goals["steady_flow_filtered"]["met"]
    assert goals["steady_truth_filtered"]["met"] and goals["fused_flow_over_truth"]["met"]
    no_filter = targets(geo, {"rows": {k: v for k, v in rows.items() if "temporal" not in k}})
    assert "steady_truth_filtered" not in no_filter and "steady_truth" in no_filter
    path = write_plot(tmp_path / "plot.png", {"fused": [1.0, None, 1.2], "VIS clip": [0.5, None, 0.6]}, "480p")
    image = cv2.imread(str(path))
    assert image is not None and image.shape[0] > 200 and image.shape[1] > 400


@pytest.mark.parametrize("perspective", [False, True])
def test_raw_ir_is_registered_and_moved_in_one_resampling(scene, perspective):
    """With a homography the pipeline hands the raw IR frame and the view's matrix to the compensation, which
    registers and moves it in one pass: nearer the truth than registering first and moving after (two bilinear
    resamplings blur twice), within 0.5 px of it, and where the motion is not applied exactly the registration's
    own warp."""
    from runtime.motion import through_homography
    from runtime.registration import warp_into_view
    ir, vis = scene
    matrix = np.array([[0.8, 0.0, -6.0], [0.0, 0.8, -5.0], [0.0, 0.0, 1.0]])
    if perspective:
        matrix = np.array([[0.8, 0.01, -6.0], [0.004, 0.8, -5.0], [1.5e-4, 6e-5, 1.0]])
    size = (320, 240)
    shift = lambda k: np.array([[1.0, 0, -(40 + 4.0 * k)], [0, 1.0, -(30 + 1.0 * k)], [0, 0, 1.0]])  # noqa: E731
    raw = lambda k: cv2.warpPerspective(ir, shift(k), (400, 320), flags=cv2.INTER_LINEAR)          # noqa: E731
    vis_view = lambda k: cv2.warpPerspective(vis, matrix @ shift(k), size, flags=cv2.INTER_LINEAR)  # noqa: E731
    compensator = IrMotionCompensator()
    args = (vis_view(3), vis_view(0), 0.1, 0.0, 0.0)
    one_pass, info = compensator.compensate(raw(0), *args, view=(matrix, size))
    assert info.applied and one_pass.shape == (240, 320)
    two_pass, _ = IrMotionCompensator().compensate(warp_into_view(raw(0), (matrix, size)), *args)
    truth = warp_into_view(raw(3), (matrix, size))
    crop = (slice(24, -24), slice(24, -24))
    error_one = np.abs(one_pass.astype(float) - truth)[crop].mean()
    error_two = np.abs(two_pass.astype(float) - truth)[crop].mean()
    assert error_one < 0.6 * error_two         # one interpolation loses far less than two (0.49 against 2.62)
    assert residual_shift(one_pass, truth) < 0.5
    held, info = compensator.compensate(raw(0), vis_view(3), None, 0.1, None, 0.0, view=(matrix, size))
    assert not info.applied and np.array_equal(held, warp_into_view(raw(0), (matrix, size)))
    # The map arithmetic is the homography's, to a thousandth of a pixel.
    ys, xs = np.mgrid[0:240, 0:320].astype(np.float32)
    mx, my = through_homography(np.linalg.inv(matrix), xs, ys)
    expected = cv2.perspectiveTransform(np.dstack([xs, ys]).reshape(-1, 1, 2), np.linalg.inv(matrix)).reshape(240, 320, 2)
    assert np.abs(mx - expected[..., 0]).max() < 1e-3 and np.abs(my - expected[..., 1]).max() < 1e-3


@pytest.mark.parametrize("perspective", [False, True])
def test_maps_built_at_the_flow_resolution_match_the_full_resolution_ones(perspective):
    """The remap maps are built at the flow's resolution with a repeated border and resized (640x480 over a
    160x120 flow): the same as adding the resized displacement to the full-resolution grid and carrying it through
    the registration, edges included, to 1/1000 px for an affine view and 1/50 px for a perspective one; a frame that
    is not a whole multiple of the flow takes the full-resolution path."""
    from runtime.motion import through_homography
    gen = np.random.default_rng(5)
    flow = cv2.GaussianBlur(gen.normal(0, 3, (120, 160, 2)).astype(np.float32), (0, 0), 4)
    inverse = np.array([[1.02, 0.01, 3.0], [-0.01, 1.03, 12.0], [0.0, 0.0, 1.0]])
    if perspective:
        inverse[2] = [2e-5, -1e-5, 1.0]
    compensator = IrMotionCompensator()
    ys, xs = np.mgrid[0:480, 0:640].astype(np.float32)
    for matrix, tolerance in ((None, 1e-3), (inverse, 0.02 if perspective else 1e-3)):
        map_x, map_y = compensator.maps(flow, 0.7, (640, 480), matrix)
        dx, dy = compensator.displacement(flow, 0.7, (640, 480))
        want_x, want_y = xs + dx, ys + dy
        if matrix is not None:
            want_x, want_y = through_homography(matrix, want_x, want_y)
        assert map_x.shape == (480, 640)
        assert np.abs(map_x - want_x).max() < tolerance and np.abs(map_y - want_y).max() < tolerance
    odd_x, _ = compensator.maps(flow, 0.7, (650, 480))
    np.testing.assert_allclose(odd_x, np.mgrid[0:480, 0:650].astype(np.float32)[1]
                               + compensator.displacement(flow, 0.7, (650, 480))[0], atol=1e-4)


# --------------------------------------------------------------------------------- the global motion and its tiles
def affine_flow(shape=(120, 160), zoom=0.01, shift=(2.5, -1.25)) -> np.ndarray:
    """A flow field (flow pixels) of a zoom about the centre plus a translation: what a rig sees of a far scene."""
    h, w = shape
    vs, us = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.dstack([zoom * (us - w / 2) + shift[0], zoom * (vs - h / 2) + shift[1]]).astype(np.float32)


def smooth_image(seed: int = 3, size=(640, 480)) -> np.ndarray:
    gen = np.random.default_rng(seed)
    return cv2.GaussianBlur(gen.integers(0, 256, (size[1], size[0])).astype(np.uint8), (0, 0), 3)


def test_a_global_motion_takes_one_affine_warp_that_matches_the_dense_flow():
    """A flow that is one zoom and translation: every tile takes the fitted motion (no cross terms, so OpenCV's
    fast warpAffine path), the displacement it applies equals the dense flow's to 1/100 px, and the warped frame
    differs from the dense warp by at most one grey level (interpolation rounding)."""
    compensator = IrMotionCompensator()
    flow = affine_flow()
    plan = compensator.plan(flow, 1.2, (640, 480))
    assert plan.matrix is not None and plan.dense_share == 0.0
    assert plan.matrix[0, 1] == 0.0 and plan.matrix[1, 0] == 0.0
    applied = compensator.applied_displacement(flow, 1.2, (640, 480), plan)
    dense = np.dstack(compensator.displacement(flow, 1.2, (640, 480)))
    assert np.abs(applied - dense)[4:-4, 4:-4].max() < 0.01
    image = smooth_image()
    fast = compensator.warp(image, flow, 1.2, plan=plan)
    slow = compensator.warp(image, flow, 1.2)
    assert np.abs(fast.astype(int) - slow)[8:-8, 8:-8].max() <= 1


def test_where_the_flow_departs_from_the_global_motion_its_tiles_take_the_dense_flow():
    """A region that moves otherwise (a car, the near side of a parallax): its tiles take the dense flow (the same
    displacement, the same pixels to one grey level: the blocks' maps are resized two channels at a time);
    elsewhere the pixels are moved within the tolerance of where the dense flow would put them, except on the tiles
    next to the region, whose edge pixels the dense flow blends with the region's motion (bilinear upsampling)."""
    compensator = IrMotionCompensator()
    flow = affine_flow()
    flow[40:72, 64:104] += np.float32([3.0, -2.0])          # 32x40 flow pixels moving 3 px right, 2 up, more
    plan = compensator.plan(flow, 1.0, (640, 480))
    assert plan.matrix is not None and 0.0 < plan.dense_share < 0.3
    assert plan.dense[5:9, 8:13].all()                       # the region's tiles
    applied = compensator.applied_displacement(flow, 1.0, (640, 480), plan)
    dense = np.dstack(compensator.displacement(flow, 1.0, (640, 480)))
    assert np.array_equal(applied[160:288, 256:416], dense[160:288, 256:416])
    near = cv2.dilate(plan.dense.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    away = ~np.repeat(np.repeat(near, 32, axis=0), 32, axis=1)
    assert np.abs(applied - dense)[away].max() <= compensator.global_tolerance
    image = smooth_image(4)
    out = compensator.warp(image, flow, 1.0, plan=plan)
    differ = np.abs(out[160:288, 256:416].astype(int) - compensator.warp(image, flow, 1.0)[160:288, 256:416])
    assert differ.max() <= 1 and (differ > 0).mean() < 0.005


def test_the_tolerance_widens_to_the_flows_own_noise_and_a_mover_still_stands_out(monkeypatch):
    """A dark, noisy VIS frame makes DIS's tile means scatter by about half a frame pixel around the rig's motion: the
    tolerance widens to three times that spread (at most 2 px), so the noise does not send a tenth of the tiles
    through the dense maps, and a region moving otherwise (12 px) still does."""
    import runtime.motion as motion
    gen = np.random.default_rng(5)
    noise = cv2.resize(gen.normal(0, 0.13, (15, 20, 2)).astype(np.float32), (160, 120),
                       interpolation=cv2.INTER_NEAREST)                  # per tile, 0.52 frame px
    flow = affine_flow() + noise
    flow[40:72, 64:104] += np.float32([3.0, -2.0])
    mover = np.zeros((15, 20), dtype=bool)
    mover[5:9, 8:13] = True
    plan = IrMotionCompensator().plan(flow, 1.0, (640, 480))
    assert plan.matrix is not None and plan.dense[mover].all()
    assert plan.dense[~mover].mean() < 0.02
    monkeypatch.setattr(motion, "NOISE_SIGMAS", 0.0)                     # the fixed 1 px tolerance
    fixed = IrMotionCompensator().plan(flow, 1.0, (640, 480))
    assert fixed.dense[mover].all() and fixed.dense[~mover].mean() > 0.05


def test_tiles_remapped_one_by_one_equal_the_whole_frames_dense_warp():
    """Many tiles marked dense: the tiles' windows of the maps, remapped as one strip, give the whole frame's dense
    warp, for a raw IR frame registered through a view as well (to one grey level on a few pixels: OpenCV resizes a
    two-channel map with other rounding than two one-channel ones, 1e-4 px)."""
    from runtime.motion import WarpPlan
    compensator = IrMotionCompensator()
    gen = np.random.default_rng(7)
    flow = cv2.GaussianBlur(gen.normal(0, 3, (120, 160, 2)).astype(np.float32), (0, 0), 4)
    dense = np.zeros((15, 20), dtype=bool)
    dense[::2] = True
    dense[1::2, 3:17] = True
    plan = WarpPlan(np.eye(3), dense, (32, 32))
    raw = smooth_image(5, (640, 512))
    view = (np.array([[1.0, 0.0, 0.0], [0.0, 1.0, -16.0], [0.0, 0.0, 1.0]]), (640, 480))
    tiled = compensator.warp(raw, flow, 0.8, view=view, plan=plan)
    whole = compensator.warp(raw, flow, 0.8, view=view)
    mask = np.repeat(np.repeat(dense, 32, axis=0), 32, axis=1)
    differ = np.abs(tiled[mask].astype(int) - whole[mask])
    assert differ.max() <= 1 and (differ > 0).mean() < 0.005


def test_frames_that_are_not_a_multiple_of_the_flow_take_the_dense_flow():
    compensator = IrMotionCompensator()
    assert compensator.plan(affine_flow(), 1.0, (650, 480)).matrix is None
    assert IrMotionCompensator(global_tolerance=None).plan(affine_flow(), 1.0, (640, 480)).matrix is None


def test_dense_tiles_in_a_partial_last_row_and_in_colour():
    """A 720p frame over a 160x90 flow has a partial last row of tiles (16 of 64 px): dense tiles there, in the middle
    and in the corner take the whole frame's dense warp (to one grey level), a colour image as well, and every other
    tile keeps the global warp untouched."""
    from runtime.motion import WarpPlan
    compensator = IrMotionCompensator()
    gen = np.random.default_rng(11)
    flow = cv2.GaussianBlur(gen.normal(0, 2, (90, 160, 2)).astype(np.float32), (0, 0), 3)
    dense = np.zeros((12, 20), dtype=bool)
    dense[11, 3:6] = dense[4, 7] = dense[11, 19] = dense[0, 0] = True
    image = cv2.merge([smooth_image(seed, (1280, 720)) for seed in (1, 2, 3)])
    tiled = compensator.warp(image, flow, 0.7, plan=WarpPlan(np.eye(3), dense, (64, 64)))
    whole = compensator.warp(image, flow, 0.7)
    affine = compensator.warp(image, flow, 0.7, plan=WarpPlan(np.eye(3), np.zeros_like(dense), (64, 64)))
    mask = np.repeat(np.repeat(dense, 64, axis=0), 64, axis=1)[:720]
    differ = np.abs(tiled[mask].astype(int) - whole[mask])
    assert differ.max() <= 1 and (differ > 0).mean() < 0.005
    assert np.array_equal(tiled[~mask], affine[~mask])
    assert np.abs(whole[mask].astype(int) - affine[mask]).mean() > 1      # the dense tiles did change


def test_the_rigs_motion_is_tracked_and_a_jolt_never_warps_wrong(scene):
    """A steady pan: the first frame measures the dominant motion by phase correlation, the next ones start DIS from
    the motion predicted by the last frame (no phase correlation) and stay within 0.5 px of the truth. Then a jolt
    (75 px in one IR period, far from the prediction): that frame is either carried right or held, never warped
    wrong, and a held frame makes the next one measure again."""
    ir, vis = scene
    compensator = IrMotionCompensator()
    pan = lambda x, image: view(image, 40.0 + x, 30.0)   # noqa: E731
    t_ir = 0.0
    starts = []
    for k in range(1, 4):                                 # VIS frames 1..3 after the IR frame, 3 px a frame
        moved, info = compensator.compensate(pan(0, ir), pan(3 * k, vis), pan(0, vis), k / 30, 0.0, t_ir)
        assert info.applied and residual_shift(moved, pan(3 * k, ir)) < 0.5
        starts.append(info.start)
    assert starts[0] is None and all(start is not None for start in starts[1:])
    moved, info = compensator.compensate(pan(9, ir), pan(84, vis), pan(9, vis), 4 / 30, 3 / 30, 3 / 30)
    if info.applied:
        assert residual_shift(moved, pan(84, ir)) < 0.5
    else:
        assert np.array_equal(moved, pan(9, ir))
        _, again = compensator.compensate(pan(9, ir), pan(84, vis), pan(9, vis), 5 / 30, 3 / 30, 3 / 30)
        assert again.start is None
