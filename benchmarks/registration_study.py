"""Does `fusion calibrate --refine` make a user's point calibration better, and never worse? Measured on real pairs.

    python -m benchmarks.registration_study                          # the 22 validation pairs, table on stdout
    python -m benchmarks.registration_study --json build/registration_study.json --preview docs/img/registration.png

The construction (issue 17): take a real, aligned IR/VIS pair, film it with a "thermal camera" that sees the scene
through a known homography H_true (a plausible rig: 4% smaller scale, 0.5 degrees of rotation, 1% shear, 14 px and
9 px of offset, slight perspective), and calibrate it the way a user would: four point pairs, one near each corner
of the view, each VIS click about 3 px off. Compare the mapping from the points alone with the `--refine` one
against H_true, over a 40 px grid of the IR frame (mean and max distance in VIS pixels). Every pair has its own
clicking error (seeded by its name) so the numbers are reproducible.

Pairs: the validation pairs the project holds out, never used to develop or tune the refinement -- all 14 of
msrs_mini (640x480, 5 day, 9 night) and the 8 of llvip_mini/val.txt (night, 1280x1024 shown at 640x512). The
refinement was developed on RoadScene and LLVIP *training* pairs (`--set dev`).

H_true is the truth only if the real pair was aligned to the pixel to begin with. Two measures say how far it was:
the `own offset` column (the image alignment run on the unwarped pair from the identity, affine, no points: what a
method that follows the content is charged with), and `--pairs pseudo`, the same construction with each IR frame
against a second modality made from itself (aligned by construction), where the method's own error shows alone.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FUSION_SHARED_DATA", REPO.parent / "shared" / "data"))

CLICK_ERROR_PX = 3.0
GRID_STEP_PX = 40


def rig_homography(width: int, height: int, tilt: float = 1.0) -> np.ndarray:
    """H_true: IR camera pixels -> VIS pixels for a thermal camera of the VIS camera's size that sees 4% more of the
    scene, rotated 0.5 degrees, sheared 1%, offset 14 px and 9 px, with slight perspective (about 2 px at the far
    corners; `tilt` scales it: 2 is a rig whose cameras are tilted twice as much, about a degree). Its whole frame lands
    inside the VIS frame, so the simulated IR view holds real pixels only."""
    angle = np.deg2rad(0.5)
    cx, cy = width / 2, height / 2
    centre = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1.0]])
    rotate = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1.0]])
    shear = np.array([[1, 0.01, 0], [0, 1, 0], [0, 0, 1.0]])
    scale = np.diag([0.96, 0.96, 1.0])
    perspective = np.array([[1, 0, 0], [0, 1, 0], [tilt * 1.2e-5 * 640 / width, -tilt * 0.8e-5 * 480 / height, 1.0]])
    back = np.array([[1, 0, cx + 14 - 0.5 * 0.04 * width + 7], [0, 1, cy + 9 - 0.5 * 0.04 * height + 2], [0, 0, 1.0]])
    h = back @ rotate @ shear @ scale @ perspective @ centre
    return h / h[2, 2]


def clicked_points(h_true: np.ndarray, width: int, height: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Four IR points, one near each corner (5-20% in from the edges), and their VIS partners clicked with about
    CLICK_ERROR_PX of error in a random direction."""
    rng = np.random.default_rng(seed)
    ir = []
    for fx, fy in ((0, 0), (1, 0), (1, 1), (0, 1)):
        u, v = rng.uniform(0.05, 0.2, size=2)
        ir.append([abs(fx - u) * width, abs(fy - v) * height])
    ir = np.asarray(ir, np.float64)
    vis = cv2.perspectiveTransform(ir.reshape(-1, 1, 2), h_true).reshape(-1, 2)
    angle = rng.uniform(0, 2 * np.pi, size=4)
    length = rng.normal(CLICK_ERROR_PX, 0.5, size=4)
    vis += np.stack([np.cos(angle), np.sin(angle)], axis=1) * length[:, None]
    return ir, vis


def mapping_error(h_est: np.ndarray, h_true: np.ndarray, width: int, height: int) -> tuple[float, float]:
    """(mean, max) distance in VIS pixels between where h_est and h_true send a 40 px grid of the IR frame."""
    xs, ys = np.meshgrid(np.arange(0, width + 1, GRID_STEP_PX), np.arange(0, height + 1, GRID_STEP_PX))
    grid = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64).reshape(-1, 1, 2)
    distance = np.linalg.norm(cv2.perspectiveTransform(grid, h_est) - cv2.perspectiveTransform(grid, h_true), axis=2)
    return float(distance.mean()), float(distance.max())


@dataclass
class PairResult:
    pair: str
    light: str
    size: str
    points_mean_px: float
    points_max_px: float
    refined_mean_px: float
    refined_max_px: float
    kept: str
    score_points: float
    score_refined: float
    reason: str
    seconds: float
    own_mean_px: float = float("nan")     # the unwarped pair's own misregistration, as the image alignment sees it
    own_max_px: float = float("nan")
    fit: str = ""                         # "images" (the image-led mapping explained every click) or "images+points"
    own_affine: Optional[dict] = None     # affine_terms of the pair's own offset: a rig's error repeats across pairs
    image_led_shift_px: float = float("nan")   # how far the image-led mapping left the farthest click


def load_pair(dataset: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(IR gray, VIS luminance) float32 in [0, 1]; LLVIP's 1280x1024 frames halved to 640x512."""
    from runtime.calibrate_cli import gray_float
    from runtime.imageio import read_raw
    folder = SHARED / dataset
    ir_path = next((folder / "ir").glob(f"{name}.*"))
    vis_path = next((folder / "vi").glob(f"{name}.*"))
    ir, vis = gray_float(read_raw(ir_path), "ir"), gray_float(read_raw(vis_path), "vis")
    if dataset == "llvip_mini":
        ir = cv2.resize(ir, (640, 512), interpolation=cv2.INTER_AREA)
        vis = cv2.resize(vis, (640, 512), interpolation=cv2.INTER_AREA)
    return ir, vis


def pair_names(which: str) -> Iterator[tuple[str, str, str]]:
    """(dataset, name, day/night) of the pairs of a set: 'validation' (the numbers we report) or 'dev'."""
    def listed(dataset: str, listing: str) -> list[str]:
        return [Path(line).stem for line in (SHARED / dataset / listing).read_text().split()]
    if which == "validation":
        for name in listed("msrs_mini", "val.txt"):
            yield "msrs_mini", name, "night" if name.endswith("N") else "day"
        for name in listed("llvip_mini", "val.txt"):
            yield "llvip_mini", name, "night"
    elif which == "dev":
        for name in listed("llvip_mini", "train.txt")[::2]:
            yield "llvip_mini", name, "night"
        for name in listed("roadscene", "train.txt")[:6]:
            yield "roadscene", name, "day"
    else:
        raise ValueError(which)


def pseudo_visible(ir: np.ndarray, seed: int) -> np.ndarray:
    """A second modality made from the IR frame itself, so the pair is aligned to the pixel by construction: the
    contrast stretched, inverted over a random half of the frame in 32 px blocks (what a warm object against a cool
    background does between the bands; the block borders are edges only this side has), another tone curve, a
    little blur and sensor noise."""
    rng = np.random.default_rng(seed)
    height, width = ir.shape
    low, high = np.percentile(ir, [1, 99])
    stretched = np.clip((ir - low) / max(high - low, 1e-6), 0, 1)
    cells = rng.random((height // 32 + 1, width // 32 + 1)) > 0.5
    inverted = cv2.resize(cells.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
    pseudo = np.where(inverted, 1 - stretched, stretched) ** 0.8
    pseudo = cv2.GaussianBlur(pseudo.astype(np.float32), (0, 0), 0.8) + rng.normal(0, 0.005, pseudo.shape)
    return np.clip(pseudo, 0, 1).astype(np.float32)


def own_alignment(ir_aligned: np.ndarray, vis: np.ndarray) -> np.ndarray:
    """The affine IR->VIS mapping the image alignment finds on the unwarped pair, from the identity, with no points."""
    from runtime.alignment import align_coarse_to_fine
    return align_coarse_to_fine(np.eye(3), ir_aligned, vis, "affine")


def own_offset(ir_aligned: np.ndarray, vis: np.ndarray) -> tuple[float, float]:
    """(mean, max) px: how far the image alignment (affine, no points, from the identity) moves the unwarped pair.
    The construction charges every method that follows the content with this much: H_true is only the truth when
    the pair is aligned to the pixel."""
    height, width = vis.shape
    return mapping_error(own_alignment(ir_aligned, vis), np.eye(3), width, height)


def affine_terms(mapping: np.ndarray, width: int, height: int) -> dict:
    """What an affine IR->VIS mapping does, in words a rig's registration error is made of: the scales of x and y
    and the two shear terms (percent), and where it moves the frame's centre (px)."""
    centre = cv2.perspectiveTransform(np.array([[[width / 2, height / 2]]], np.float64), mapping)[0, 0]
    return {"x_scale_pct": round(float(100 * (mapping[0, 0] - 1)), 2),
            "y_scale_pct": round(float(100 * (mapping[1, 1] - 1)), 2),
            "shear_xy_pct": round(float(100 * mapping[0, 1]), 2), "shear_yx_pct": round(float(100 * mapping[1, 0]), 2),
            "centre_shift_px": [round(float(centre[0] - width / 2), 2), round(float(centre[1] - height / 2), 2)]}


def rig_error(dataset: str, exclude: set[str]) -> np.ndarray:
    """A dataset rig's own registration error, as the content sees it: the mean of the own-offset mappings
    (`own_alignment`) over the dataset's training pairs, leaving out `exclude` (the pairs being evaluated). Only for
    LLVIP, whose pairs come from one rig: the error repeats from pair to pair there (see docs/runtime.md)."""
    if dataset != "llvip_mini":
        raise ValueError(f"no rig error for {dataset}: only llvip_mini's pairs share one rig")
    names = [Path(line).stem for line in (SHARED / dataset / "train.txt").read_text().split()]
    mappings = [own_alignment(*load_pair(dataset, name)) for name in names if name not in exclude]
    mean = np.mean(mappings, axis=0)
    return mean / mean[2, 2]


def study_pair(dataset: str, name: str, light: str, max_shift: float, pairs: str = "real",
               own: bool = True, content: Optional[np.ndarray] = None, tilt: float = 1.0) -> tuple[PairResult, dict]:
    """One pair through the construction. content: where the pair's VIS content truly sits relative to its IR
    content (an IR->VIS mapping of the unwarped pair; None: the identity, the pair as registered). The truth the
    clicks are made from and the errors are measured against is then content @ H_true."""
    from runtime.alignment import refine_homography
    from runtime.registration import homography_from_points
    ir_aligned, vis = load_pair(dataset, name)
    if pairs == "pseudo":
        vis = pseudo_visible(ir_aligned, zlib.crc32(f"pseudo/{dataset}/{name}".encode()))
    height, width = vis.shape
    h_camera = rig_homography(width, height, tilt)
    ir_camera = cv2.warpPerspective(ir_aligned, np.linalg.inv(h_camera), (width, height), flags=cv2.INTER_LINEAR)
    h_true = h_camera if content is None else content @ h_camera
    h_true = h_true / h_true[2, 2]
    seed = zlib.crc32(f"{dataset}/{name}".encode())
    ir_points, vis_points = clicked_points(h_true, width, height, seed)
    h_points = homography_from_points(ir_points, vis_points)
    start = time.perf_counter()
    result = refine_homography(h_points, ir_camera, vis, ir_points, vis_points, max_shift_px=max_shift)
    seconds = time.perf_counter() - start
    points_mean, points_max = mapping_error(h_points, h_true, width, height)
    refined_mean, refined_max = mapping_error(result.homography, h_true, width, height)
    own_mean = own_max = float("nan")
    own_terms = None
    if own:
        own_mapping = own_alignment(ir_aligned, vis)
        own_mean, own_max = mapping_error(own_mapping, np.eye(3) if content is None else content, width, height)
        own_terms = affine_terms(own_mapping, width, height)
    row = PairResult(f"{dataset}/{name}", light, f"{width}x{height}", points_mean, points_max, refined_mean,
                     refined_max, result.kept, result.score_points, result.score_refined, result.reason, seconds,
                     own_mean, own_max, result.fit, own_terms, result.image_led_shift_px)
    return row, {"ir": ir_camera, "vis": vis, "h_points": h_points, "h_refined": result.homography, "h_true": h_true}


def study_auto(name: str, data: dict) -> dict:
    """--auto on the same simulated view: no points, from the frames' centres."""
    from runtime.errors import FusionError
    from runtime.alignment import auto_homography
    height, width = data["vis"].shape
    try:
        found = auto_homography(data["ir"], data["vis"])
    except FusionError as exc:
        print(f"  {exc}")
        return {"pair": name, "mean_px": None, "max_px": None, "refused": str(exc)}
    mean, top = mapping_error(found.homography, data["h_true"], width, height)
    print(f"  --auto: {mean:.2f} / {top:.2f} px ({found.reason})")
    return {"pair": name, "mean_px": mean, "max_px": top, "refused": None}


def preview(examples: list[tuple[str, dict]], path: Path) -> None:
    """For each example pair, VIS with warped-IR edges: points only (left) and refined (right); green = on VIS edges."""
    from runtime.imageio import write_image
    from runtime.alignment import edge_map
    rows = []
    for label, data in examples:
        vis = data["vis"]
        vis_edges = edge_map(vis, 1.0) > 0.15
        tiles = []
        for key, title in (("h_points", "4 clicked points"), ("h_refined", "--refine")):
            warped = cv2.warpPerspective(data["ir"], data[key], (vis.shape[1], vis.shape[0]))
            ir_edges = edge_map(warped, 1.0) > 0.2
            base = np.clip(vis * 255 * 0.8, 0, 255).astype(np.uint8)
            tile = np.repeat(base[:, :, None], 3, axis=2)
            tile[ir_edges] = (255, 0, 255)
            tile[ir_edges & cv2.dilate(vis_edges.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)] = (0, 255, 0)
            mean, top = mapping_error(data[key], data["h_true"], vis.shape[1], vis.shape[0])
            cv2.putText(tile, f"{label}  {title}: error {mean:.2f} / {top:.2f} px", (8, 26),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.75, (255, 255, 0), 2)
            tiles.append(cv2.resize(tile, (480, int(round(480 * vis.shape[0] / vis.shape[1]))),
                                    interpolation=cv2.INTER_AREA))
        rows.append(np.hstack(tiles))
    width = max(r.shape[1] for r in rows)
    canvas = np.vstack([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows])
    write_image(path, canvas)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.registration_study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", default="validation", choices=["validation", "dev"])
    parser.add_argument("--max-shift", type=float, default=5.0)
    parser.add_argument("--limit", type=int, default=0, help="only the first N pairs")
    parser.add_argument("--pairs", default="real", choices=["real", "pseudo"],
                        help="real: the dataset's IR/VIS pairs; pseudo: each IR frame against a second modality made "
                             "from it (aligned to the pixel by construction), to tell the method's error from the "
                             "pairs' own misregistration")
    parser.add_argument("--truth", default="registered", choices=["registered", "rig"],
                        help="registered: the pair as its dataset registered it (issue 17's construction); rig: the "
                             "LLVIP pairs only, with the truth corrected by the rig's own registration error, "
                             "estimated on the training pairs not being evaluated")
    parser.add_argument("--tilt", type=float, default=1.0,
                        help="scale the simulated rig's perspective terms (2: cameras tilted about a degree)")
    parser.add_argument("--no-own-offset", action="store_true",
                        help="skip measuring each unwarped pair's own misregistration (saves a few s a pair)")
    parser.add_argument("--auto", action="store_true", help="also run --auto (no points) on each pair")
    parser.add_argument("--json", metavar="FILE", help="write every number as JSON")
    parser.add_argument("--preview", metavar="PNG", help="write a points-vs-refined picture of two pairs")
    args = parser.parse_args(argv)
    rows, examples, auto_rows = [], [], []
    names = list(pair_names(args.set))
    if args.limit:
        names = names[:args.limit]
    print(f"{'pair':<24} {'light':<6} {'size':<8} {'points mean/max':>16} {'refine mean/max':>16} {'kept':<8} "
          f"{'score pts->ref':>15} {'own offset':>12}  s   {'led by (click px)':<18}", flush=True)
    contents = {}
    if args.truth == "rig":
        names = [entry for entry in names if entry[0] == "llvip_mini"]
        contents["llvip_mini"] = rig_error("llvip_mini", {name for _, name, _ in names})
        print(f"rig error of llvip_mini (training pairs not evaluated): "
              f"{affine_terms(contents['llvip_mini'], 640, 512)}", flush=True)
    for dataset, name, light in names:
        row, data = study_pair(dataset, name, light, args.max_shift, args.pairs, not args.no_own_offset,
                               contents.get(dataset), args.tilt)
        rows.append(row)
        if args.auto:
            auto_rows.append(study_auto(name, data))
        shown = ("010101", "010025") if args.truth == "rig" else ("00003N", "00537D", "010101")
        if args.preview and name in shown:
            examples.append((f"{dataset}/{name}", data))
        print(f"{row.pair:<24} {row.light:<6} {row.size:<8} {row.points_mean_px:7.2f} / {row.points_max_px:5.2f}  "
              f"{row.refined_mean_px:7.2f} / {row.refined_max_px:5.2f}  {row.kept:<8} "
              f"{row.score_points:6.3f}->{row.score_refined:6.3f} {row.own_mean_px:5.2f}/{row.own_max_px:5.2f}  "
              f"{row.seconds:4.1f}  {row.fit:<13} ({row.image_led_shift_px:4.1f})"
              + (f"  own: x {row.own_affine['x_scale_pct']:+.2f}% y {row.own_affine['y_scale_pct']:+.2f}% shear "
                 f"{row.own_affine['shear_xy_pct']:+.2f}/{row.own_affine['shear_yx_pct']:+.2f}% centre "
                 f"{row.own_affine['centre_shift_px'][0]:+.2f},{row.own_affine['centre_shift_px'][1]:+.2f}"
                 if row.own_affine else "")
              + (f"  ({row.reason})" if row.kept != "refined" else ""), flush=True)
    points_mean = np.mean([r.points_mean_px for r in rows])
    refined_mean = np.mean([r.refined_mean_px for r in rows])
    worst_gain = max(r.refined_mean_px - r.points_mean_px for r in rows)
    worst_max = max(r.refined_max_px for r in rows)
    night = [r for r in rows if r.light == "night"]
    summary = {"pairs": len(rows), "night_pairs": len(night), "points_mean_px": points_mean,
               "refined_mean_px": refined_mean, "refined_worse_by_at_most_px": worst_gain,
               "refined_max_px": worst_max, "kept_refined": sum(r.kept == "refined" for r in rows),
               "led_by_images": sum(r.fit == "images" for r in rows),
               "own_offset_max_px": [round(r.own_max_px, 2) for r in rows], "pairs_kind": args.pairs,
               "truth": args.truth, "tilt": args.tilt,
               "done": bool(refined_mean < points_mean and worst_gain <= 0.2 and worst_max <= 3.0)}
    print(f"\n{len(rows)} pairs ({len(night)} night): mean error points only {points_mean:.2f} px, --refine "
          f"{refined_mean:.2f} px; --refine worse than points on a pair by at most {worst_gain:+.2f} px; largest "
          f"--refine error anywhere {worst_max:.2f} px; refined mapping kept on {summary['kept_refined']} pairs "
          f"(led by the images on {summary['led_by_images']}); "
          f"bar met: {summary['done']}")
    if not args.no_own_offset:
        print(f"the unwarped pairs' own misregistration (image alignment from the identity, affine): mean "
              f"{np.mean([r.own_mean_px for r in rows]):.2f} px, largest per pair "
              f"{min(r.own_max_px for r in rows):.2f}-{max(r.own_max_px for r in rows):.2f} px")
    if auto_rows:
        found = [r for r in auto_rows if r["mean_px"] is not None]
        if found:
            summary["auto"] = {"aligned": len(found), "refused": len(auto_rows) - len(found),
                               "mean_px": float(np.mean([r["mean_px"] for r in found])),
                               "max_px": float(max(r["max_px"] for r in found))}
        print(f"--auto (no points, from the frame centres {mapping_error(np.eye(3), rig_homography(640, 480), 640, 480)[0]:.1f} px "
              f"off on average): aligned {len(found)} of {len(auto_rows)} pairs"
              + (f", mean error {summary['auto']['mean_px']:.2f} px, largest {summary['auto']['max_px']:.2f} px"
                 if found else ""))
    if args.json:
        from runtime.imageio import write_json
        write_json(args.json, {"summary": summary, "pairs": [asdict(r) for r in rows], "auto": auto_rows})
    if args.preview and examples:
        preview(examples, Path(args.preview))
        print(f"preview: {args.preview}")
    return 0 if summary["done"] else 1


if __name__ == "__main__":
    sys.exit(main())
