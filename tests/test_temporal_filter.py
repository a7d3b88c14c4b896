"""The motion-compensated temporal filter (`--temporal-filter`): what it removes, what it must never touch."""
from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from runtime.errors import FusionError
from runtime.imageio import read_raw
from runtime.pipeline import FusionPipeline
from runtime.temporal_filter import DEFAULT_STRENGTH, THRESHOLD, TemporalFilter, parse_strength
from helpers import FullFrameSink, NumpyBackend, PanningSource

STEM = "FLIR_00060"          # a training pair (train.txt)
SIZE = (320, 240)            # (W, H) of the frames filtered here


@pytest.fixture(scope="module")
def scene(roadscene):
    vis = read_raw(roadscene / "vi" / f"{STEM}.jpg")
    gray = cv2.cvtColor(vis, cv2.COLOR_RGB2GRAY) if vis.ndim == 3 else vis
    return vis, gray.astype(np.float32) / 255.0


def view(image: np.ndarray, x: float, y: float = 30.0) -> np.ndarray:
    """The SIZE window of `image` whose corner sits at (x, y), sub-pixel (bilinear)."""
    matrix = np.array([[1.0, 0.0, -x], [0.0, 1.0, -y]])
    return cv2.warpAffine(image, matrix, SIZE, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


INTERIOR = (slice(16, -16), slice(24, -24))     # away from the edges that new content enters through


def test_flicker_on_a_pan_is_reduced_and_the_output_follows_the_motion(scene):
    """A pan at 2.5 px a frame; each fused frame is the clean frame plus independent flicker (noise of 1% of the
    range: a fused video's warped difference is about 0.6% on the bundled clips). Filtered, the frames are nearer the
    clean ones (the flicker falls by a quarter or more); had the filter lagged the motion by even half a frame, they
    would be further from them instead."""
    vis, gray = scene
    rng = np.random.default_rng(1)
    temporal = TemporalFilter(0.5)
    before, after = [], []
    for k in range(12):
        clean = view(gray, 40 + 2.5 * k)
        noisy = clean + rng.normal(0.0, 0.01, clean.shape).astype(np.float32)
        out, what = temporal.apply(noisy, temporal.small_gray(view(vis, 40 + 2.5 * k)), k / 30)
        assert what == ("first frame" if k == 0 else "filtered")
        if k >= 3:
            before.append(np.abs(noisy - clean)[INTERIOR].mean())
            after.append(np.abs(out - clean)[INTERIOR].mean())
            lagged = view(gray, 40 + 2.5 * k - 1.25)
            assert np.abs(out - clean)[INTERIOR].mean() < np.abs(lagged - clean)[INTERIOR].mean()
    assert np.mean(after) < 0.75 * np.mean(before)


def test_a_warm_body_moving_where_the_vis_camera_sees_nothing_leaves_no_trail(scene):
    """At night a person may be visible only in the IR: the VIS frames (and so the flow) are still, the fused frames
    show a warm blob walking 6 px a frame. The filter must not leave a ghost where the blob was: its change is far
    above the threshold, so those pixels pass as they are."""
    vis, gray = scene
    still = view(vis, 40)
    background = view(gray, 40) * 0.5
    temporal = TemporalFilter(0.9)
    for k in range(8):
        frame = background.copy()
        cv2.circle(frame, (60 + 6 * k, 120), 14, 0.95, -1)
        out, _ = temporal.apply(frame, temporal.small_gray(still), k / 30)
    trail = (slice(110, 131), slice(60 + 6 * 5 - 14, 60 + 6 * 7 - 14 - 1))      # where the blob was, not is
    assert np.abs(out - frame)[trail].max() < 1e-6
    assert np.abs(out - frame).max() < THRESHOLD * 0.9


def test_scene_cut_time_gap_and_first_frame_pass_untouched(scene, roadscene):
    vis, gray = scene
    other = read_raw(roadscene / "vi" / "FLIR_05095.jpg")
    temporal = TemporalFilter()
    first = view(gray, 40)
    out, what = temporal.apply(first, temporal.small_gray(view(vis, 40)), 0.0)
    assert what == "first frame" and np.array_equal(out, first)
    cut = view(gray, 42) * 0.9
    out, what = temporal.apply(cut, temporal.small_gray(view(other, 40)), 1 / 30)
    assert what == "scene cut" and np.array_equal(out, cut)
    later = view(gray, 45)
    out, what = temporal.apply(later, temporal.small_gray(view(vis, 45)), 1.0)      # 0.97 s later: frames dropped
    assert what == "time gap" and np.array_equal(out, later)
    temporal.reset()
    out, what = temporal.apply(later, temporal.small_gray(view(vis, 45)), 1.0 + 1 / 30)
    assert what == "first frame"


def test_parse_strength():
    assert parse_strength("off") == 0.0 and parse_strength(False) == 0.0 and parse_strength("0") == 0.0
    assert parse_strength("on") == DEFAULT_STRENGTH and parse_strength(True) == DEFAULT_STRENGTH
    assert parse_strength("0.3") == pytest.approx(0.3) and parse_strength(0.7) == pytest.approx(0.7)
    for bad in ("1", "1.5", "-0.1", "strong"):
        with pytest.raises(FusionError, match="temporal-filter"):
            parse_strength(bad)


def run_pan(roadscene, backend=None, **options):
    ir, vis = read_raw(roadscene / "ir" / f"{STEM}.jpg"), read_raw(roadscene / "vi" / f"{STEM}.jpg")
    ir = cv2.cvtColor(ir, cv2.COLOR_RGB2GRAY) if ir.ndim == 3 else ir
    sink = FullFrameSink()
    report = FusionPipeline(ir_source=PanningSource(ir, fps=30, frames=20, live=False, role="ir"),
                            vis_source=PanningSource(vis, fps=30, frames=20, live=False, role="vis"),
                            backend=backend or NumpyBackend(), sinks=[sink], imgsz="96x128", verbose=False,
                            **options).run()
    return report, [rgb for rgb, _ in sink.frames]


def test_pipeline_filters_in_order_and_off_leaves_frames_as_they_were(roadscene):
    """On: every frame after the first is filtered (counted, its CPU time reported) and differs from the unfiltered
    frame only slightly (what changes is below the threshold). Off (the default): no filter ran at all."""
    report_off, plain = run_pan(roadscene)
    assert "temporal_filtered" not in report_off["counters"] and "temporal" not in report_off["stages_ms"]
    report_on, filtered = run_pan(roadscene, temporal_filter="on")
    assert report_on["counters"]["temporal_filtered"] == len(filtered) - 1
    assert report_on["counters"]["temporal_restarted"] == 1 and "temporal" in report_on["stages_ms"]
    assert len(plain) == len(filtered) == 20
    assert np.array_equal(plain[0], filtered[0])
    change = [np.abs(a.astype(int) - b.astype(int)) for a, b in zip(plain[1:], filtered[1:])]
    assert max(c.max() for c in change) <= THRESHOLD * 255 * DEFAULT_STRENGTH + 1
    assert any(c.max() > 0 for c in change)


def test_an_rgb_model_is_refused_not_silently_unfiltered(roadscene):
    class RgbBackend(NumpyBackend):
        vis_channels = 3

    with pytest.raises(FusionError, match="luminance"):
        run_pan(roadscene, temporal_filter="on", backend=RgbBackend())


def test_folder_mode_and_bad_strength_are_refused(tmp_path, roadscene):
    with pytest.raises(FusionError, match="image folders"):
        FusionPipeline(ir=str(roadscene / "ir"), vis=str(roadscene / "vi"), temporal_filter="on", verbose=False)
    done = subprocess.run([sys.executable, "-m", "runtime.cli", "run", "--ir", "a.mp4", "--vis", "b.mp4",
                           "--temporal-filter", "2"], capture_output=True, text=True)
    assert done.returncode != 0
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "temporal-filter" in lines[0], done.stderr


def test_measure_table_shows_the_filter_only_when_it_ran():
    from runtime.measure import STAGES, format_table
    row = {"preset": "vga", "cpu_ms_per_frame": {stage: 1.0 for stage in STAGES}, "motion_ms_per_frame": 2.0,
           "cpu_ms_total": 8.0, "cores_busy": 0.3, "fps": 30.0, "latency_ms": {"p50": 20.0, "p99": 30.0},
           "stale_share": 0.0, "temporal_ms_per_frame": 0.0}
    assert "temporal filter" not in format_table([row])
    table = format_table([row | {"temporal_ms_per_frame": 4.5}])
    line = next(line for line in table.splitlines() if "temporal filter" in line)
    assert line.split()[-1] == "4.50"
    assert table.splitlines().index(line) == next(i for i, text in enumerate(table.splitlines())
                                                  if text.startswith("output")) + 1


def test_measure_table_breaks_ir_motion_down_only_when_it_ran():
    from runtime.measure import MOTION_PIECES, STAGES, format_table
    row = {"preset": "vga", "cpu_ms_per_frame": {stage: 1.0 for stage in STAGES}, "motion_ms_per_frame": 0.0,
           "cpu_ms_total": 8.0, "cores_busy": 0.3, "fps": 30.0, "latency_ms": {"p50": 20.0, "p99": 30.0},
           "stale_share": 0.0, "temporal_ms_per_frame": 0.0}
    assert "flow" not in format_table([row])
    pieces = dict(zip(MOTION_PIECES, (0.25, 0.75, 0.125, 0.5)))
    lines = format_table([row | {"motion_ms_per_frame": 1.7, "motion_pieces_ms_per_frame": pieces}]).splitlines()
    first = next(i for i, text in enumerate(lines) if "of which IR motion" in text) + 1
    assert [line.split()[-1] for line in lines[first:first + 4]] == ["0.25", "0.75", "0.12", "0.50"]
    assert lines[first + 1].strip().startswith("flow")


def test_measure_compare_reports_what_ir_motion_adds():
    """`runtime.measure --ir-motion compare`: the added cost is the preprocessing difference between the runs with
    and without compensation (the motion row alone also counts the registration it replaces)."""
    from runtime.measure import STAGES, motion_added
    def row(preset, preprocess, total, motion):
        cpu = {stage: 1.0 for stage in STAGES} | {"preprocess": preprocess}
        return {"preset": preset, "cpu_ms_per_frame": cpu, "cpu_ms_total": total, "motion_ms_per_frame": motion}
    text = motion_added([row("vga", 4.0, 22.0, 2.5), row("vga off", 2.25, 20.5, 0.0), row("720p", 5.0, 25.0, 2.0)])
    lines = text.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vga: IR motion compensation adds 1.75 ms"), text
    assert "2.25 -> 4.00" in lines[0] and "20.50 -> 22.00" in lines[0]
