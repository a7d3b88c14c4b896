"""IR-to-VIS registration: `fusion calibrate` from point files, ECC refinement on a real pair, warping and cropping."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from runtime.cli import main as fusion
from runtime.color import split_luminance
from runtime.errors import FusionError
from runtime.imageio import read_ir, read_raw, read_vis, write_image
from runtime.registration import (Registration, homography_from_points, load_homography, overlap_rect,
                                  read_point_pairs, refine_homography_ecc, save_homography, transfer_error)

# A plausible IR->VIS homography: a 320x256 thermal core beside a 640x480 colour camera (scale ~2, a small offset,
# a little rotation and perspective).
H_TRUE = np.array([[1.96, 0.03, 8.0], [-0.02, 1.93, 12.0], [2e-5, -1e-5, 1.0]])


def _corner_error(h_a: np.ndarray, h_b: np.ndarray, size=(320, 256)) -> float:
    w, hgt = size
    corners = np.array([[0, 0], [w, 0], [w, hgt], [0, hgt]], np.float64).reshape(-1, 1, 2)
    a = cv2.perspectiveTransform(corners, h_a).reshape(-1, 2)
    b = cv2.perspectiveTransform(corners, h_b).reshape(-1, 2)
    return float(np.linalg.norm(a - b, axis=1).max())


def _points(n: int, noise_px: float = 0.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    ir = rng.uniform([10, 10], [310, 246], size=(n, 2))
    vis = cv2.perspectiveTransform(ir.reshape(-1, 1, 2), H_TRUE).reshape(-1, 2)
    return ir, vis + rng.normal(0, noise_px, vis.shape) if noise_px else vis


def test_calibrate_from_point_file_recovers_known_homography(tmp_path):
    ir, vis = _points(12, noise_px=0.3)
    lines = ["# ir_x ir_y vis_x vis_y", "ir_x,ir_y,vis_x,vis_y"] + [
        f"{a:.3f}, {b:.3f}, {c:.3f}, {d:.3f}" for (a, b), (c, d) in zip(ir, vis)]
    (tmp_path / "pairs.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "h.json"
    code = fusion(["calibrate", "--points", str(tmp_path / "pairs.csv"), "--ir-size", "320x256",
                   "--vis-size", "640x480", "--out", str(out)])
    assert code == 0
    saved = load_homography(out)
    assert saved.ir_size == (320, 256) and saved.vis_size == (640, 480)
    assert _corner_error(saved.homography, H_TRUE) < 1.0           # sub-pixel at the frame corners
    record = json.loads(out.read_text())
    assert 0.1 < record["point_rmse_px"] < 0.6                       # the noise we added, not zero, not large


def test_four_exact_points_give_the_exact_homography():
    ir, vis = _points(4)
    assert _corner_error(homography_from_points(ir, vis), H_TRUE) < 0.01


def test_ransac_ignores_a_wrong_pair():
    ir, vis = _points(10, noise_px=0.2, seed=1)
    vis[3] += (40, -25)                                              # one mis-clicked pair
    assert _corner_error(homography_from_points(ir, vis), H_TRUE) > 2.0
    robust = homography_from_points(ir, vis, ransac_px=3.0)
    assert _corner_error(robust, H_TRUE) < 1.5
    assert transfer_error(robust, ir, vis)[3] > 30


def test_point_files_errors_and_json(tmp_path):
    (tmp_path / "three.txt").write_text("1 2 3 4\n5 6 7 8\n9 10 11 12\n")
    ir, vis = read_point_pairs(tmp_path / "three.txt")
    with pytest.raises(FusionError, match="at least 4"):
        homography_from_points(ir, vis)
    (tmp_path / "bad.txt").write_text("1 2 3 4\n1 2 x\n")
    with pytest.raises(FusionError, match="bad.txt:2"):
        read_point_pairs(tmp_path / "bad.txt")
    (tmp_path / "p.json").write_text(json.dumps({"ir": [[0, 0], [1, 0], [1, 1], [0, 1]],
                                                 "vis": [[0, 0], [2, 0], [2, 2], [0, 2]]}))
    ir, vis = read_point_pairs(tmp_path / "p.json")
    assert np.allclose(homography_from_points(ir, vis), np.diag([2.0, 2.0, 1.0]), atol=1e-9)
    (tmp_path / "line.txt").write_text("0 0 0 0\n1 1 1 1\n2 2 2 2\n3 3 3 3\n")
    with pytest.raises(FusionError):
        homography_from_points(*read_point_pairs(tmp_path / "line.txt"))


def test_ecc_refinement_on_a_real_pair(roadscene, train_names):
    """Make a 'thermal camera' view of a real RoadScene IR frame with a known homography, start from a point-based
    estimate that is ~11 px off, and let ECC on edges pull it back.

    Two references: against the IR frame itself (same modality) ECC must recover H_true to about a pixel, which
    checks the conventions and the coarse-to-fine scaling; against the VIS frame (the real use) it must get within
    2 px of where the VIS content actually is: H_true composed with the pair's own residual misalignment, which
    RoadScene pairs have (a few pixels, measured by ECC at full resolution from the identity)."""
    stem = "FLIR_04625"
    assert stem in train_names
    ir_full = read_ir(roadscene / "ir" / f"{stem}.jpg")
    vis = read_vis(roadscene / "vi" / f"{stem}.jpg")
    vis_gray = vis @ np.array([0.299, 0.587, 0.114], np.float32)
    height, width = vis_gray.shape
    # A low-resolution thermal camera (0.6x), slightly rotated and shifted, seeing 90% of the VIS view (so its frame
    # holds real pixels only): H_true maps its pixels onto the VIS frame.
    angle = np.deg2rad(1.5)
    h_true = np.array([[np.cos(angle), -np.sin(angle), 0.04 * width], [np.sin(angle), np.cos(angle),
                       0.03 * height], [0, 0, 1]]) @ np.diag([1.5, 1.5, 1.0])
    ir_size = (int(width * 0.6), int(height * 0.6))
    ir_cam = cv2.warpPerspective(ir_full, np.linalg.inv(h_true), ir_size, flags=cv2.INTER_LINEAR)
    start = h_true @ np.array([[1.0, 0.01, 3.0], [-0.008, 1.0, -3.5], [0, 0, 1]])   # a few pixels off
    before = _corner_error(start, h_true, ir_size)
    assert before > 10.0

    same_modality, _ = refine_homography_ecc(start, ir_cam, ir_full)
    assert _corner_error(same_modality, h_true, ir_size) < 1.5

    pair_residual, _ = refine_homography_ecc(np.eye(3), ir_full, vis_gray)
    assert _corner_error(pair_residual, np.eye(3), (width, height)) < 8.0     # the pair is nearly aligned
    refined, correlation = refine_homography_ecc(start, ir_cam, vis_gray)
    assert _corner_error(refined, pair_residual @ h_true, ir_size) < 2.0
    assert _corner_error(refined, h_true, ir_size) < before / 2
    assert correlation > 0.5


def test_registration_warps_ir_onto_vis_and_crops_to_the_overlap(tmp_path, roadscene):
    vis = read_raw(roadscene / "vi" / "FLIR_00060.jpg")
    ir = read_raw(roadscene / "ir" / "FLIR_00060.jpg")
    ir = ir if ir.ndim == 2 else ir[:, :, 0]
    h_shift = np.array([[1.0, 0, 20.0], [0, 1.0, -10.0], [0, 0, 1.0]])      # IR sees 20 px left, 10 px lower
    ir_cam = cv2.warpPerspective(ir, np.linalg.inv(h_shift), (ir.shape[1], ir.shape[0]))
    path = save_homography(tmp_path / "h.json", h_shift, (ir.shape[1], ir.shape[0]), (vis.shape[1], vis.shape[0]))
    registration = Registration.from_file(path)
    warped, cropped = registration.apply(ir_cam, vis)
    assert registration.rect == (20, 0, vis.shape[1], vis.shape[0] - 10)
    assert warped.shape == cropped.shape[:2] == (vis.shape[0] - 10, vis.shape[1] - 20)
    # Registered IR equals the original aligned IR over the overlap (up to interpolation).
    diff = np.abs(warped.astype(int) - ir[0:vis.shape[0] - 10, 20:].astype(int))
    assert np.median(diff) <= 1


def test_homography_is_rescaled_for_another_resolution(tmp_path):
    path = save_homography(tmp_path / "h.json", H_TRUE, (320, 256), (640, 480))
    registration = Registration.from_file(path)
    ir = np.zeros((128, 160), np.uint8)
    vis = np.zeros((240, 320, 3), np.uint8)
    registration.apply(ir, vis)
    point = np.array([[[100.0, 80.0]]])
    full = cv2.perspectiveTransform(point * 2, H_TRUE) / 2
    assert np.allclose(cv2.perspectiveTransform(point, registration.matrix), full, atol=1e-6)


def test_overlap_rect_refuses_disjoint_views():
    far = np.array([[1.0, 0, 5000.0], [0, 1.0, 0], [0, 0, 1.0]])
    with pytest.raises(FusionError, match="barely overlap"):
        overlap_rect(far, (320, 256), (640, 480))


def test_bad_homography_file_exits_2(tmp_path, capsys):
    (tmp_path / "h.json").write_text('{"homography": [[1, 0], [0, 1]]}')
    (tmp_path / "ir").mkdir()
    (tmp_path / "vi").mkdir()
    write_image(tmp_path / "ir" / "a.png", np.zeros((32, 32), np.uint8))
    write_image(tmp_path / "vi" / "a.png", np.zeros((32, 32, 3), np.uint8))
    code = fusion(["run", "--ir", str(tmp_path / "ir"), "--vis", str(tmp_path / "vi"), "--output",
                   str(tmp_path / "out"), "--homography", str(tmp_path / "h.json")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "homography" in err[0]


def test_calibrate_cli_refines_on_images_and_writes_a_preview(tmp_path, roadscene):
    """`fusion calibrate --refine` on a real pair: a thermal view made with a known homography, point pairs clicked
    ~2 px off; the saved homography is the ECC-refined one and the preview is the VIS frame with IR edges."""
    vis = read_raw(roadscene / "vi" / "FLIR_04625.jpg")
    ir = read_raw(roadscene / "ir" / "FLIR_04625.jpg")
    ir = ir if ir.ndim == 2 else ir[:, :, 0]
    height, width = vis.shape[:2]
    h_true = np.array([[1.5, 0.0, 0.05 * width], [0.0, 1.5, 0.04 * height], [0, 0, 1.0]])
    ir_size = (int(width * 0.6), int(height * 0.6))
    write_image(tmp_path / "ir.png", cv2.warpPerspective(ir, np.linalg.inv(h_true), ir_size))
    write_image(tmp_path / "vis.png", vis)
    rng = np.random.default_rng(3)
    ir_points = rng.uniform([10, 10], [ir_size[0] - 10, ir_size[1] - 10], size=(6, 2))
    vis_points = cv2.perspectiveTransform(ir_points.reshape(-1, 1, 2), h_true).reshape(-1, 2)
    vis_points += rng.normal(0, 2.0, vis_points.shape)
    np.savetxt(tmp_path / "points.txt", np.hstack([ir_points, vis_points]), fmt="%.2f")
    out = tmp_path / "h.json"
    assert fusion(["calibrate", "--points", str(tmp_path / "points.txt"), "--ir", str(tmp_path / "ir.png"),
                   "--vis", str(tmp_path / "vis.png"), "--refine", "--out", str(out),
                   "--preview", str(tmp_path / "preview.png")]) == 0
    record = json.loads(out.read_text())
    assert record["refined"] == "ecc-edges" and record["ir_size"] == list(ir_size)
    assert record["ecc_correlation"] > 0.5
    # Where the VIS content really is: H_true composed with the pair's own residual misalignment (see above).
    pair_residual, _ = refine_homography_ecc(np.eye(3), ir.astype(np.float32) / 255,
                                             split_luminance(vis.astype(np.float32) / 255)[0])
    truth = pair_residual @ h_true
    points_only = homography_from_points(ir_points, vis_points)
    refined = np.array(record["homography"])
    assert _corner_error(refined, truth, ir_size) < 2.0
    assert _corner_error(refined, truth, ir_size) < _corner_error(points_only, truth, ir_size)
    preview = read_raw(tmp_path / "preview.png")
    assert preview.shape == vis.shape and ((preview == (255, 0, 255)).all(axis=2)).mean() > 0.01
