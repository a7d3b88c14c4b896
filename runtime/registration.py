"""IR-to-VIS registration: a homography from point pairs, refined across the two bands, applied per frame.

A thermal camera beside a visible one sees the scene from another point and through another lens; for a scene far
away compared with the distance between the cameras, one homography H maps IR pixels onto VIS pixels:

    [x_vis, y_vis, 1]^T ~ H @ [x_ir, y_ir, 1]^T

`fusion calibrate` estimates H from four or more clicked/listed point pairs; `--refine` aligns the images on what the
two bands share coarse to fine and `--auto` aligns with no points (both in runtime/alignment.py). `fusion run --homography FILE` warps every IR frame onto the VIS frame
and crops both to the part of the view the two cameras share; without one, frames of different shapes get a warning.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from runtime.errors import FusionError
from runtime.imageio import write_json

HOMOGRAPHY_FORMAT = "irvis-homography"


def read_point_pairs(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(ir_points (N, 2), vis_points (N, 2)) float64 from a point file.

    Formats: text/CSV with one pair per line `ir_x ir_y vis_x vis_y` (commas or spaces; '#' comments and a header
    line are skipped), or JSON {"ir": [[x, y], ...], "vis": [[x, y], ...]} (as `fusion calibrate --pick` writes).
    """
    path = Path(path)
    if not path.is_file():
        raise FusionError(f"point file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
            ir, vis = np.asarray(data["ir"], dtype=np.float64), np.asarray(data["vis"], dtype=np.float64)
        except (ValueError, KeyError, TypeError) as exc:
            raise FusionError(f"{path} is not a point file ({exc}); JSON point files hold "
                              f'{{"ir": [[x, y], ...], "vis": [[x, y], ...]}}') from None
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = [p for p in line.replace(",", " ").replace(";", " ").split() if p]
            try:
                values = [float(p) for p in parts]
            except ValueError:
                if not rows:  # a header line
                    continue
                raise FusionError(f"{path}:{number}: '{line}' is not four numbers (ir_x ir_y vis_x vis_y)") from None
            if len(values) != 4:
                raise FusionError(f"{path}:{number}: expected four numbers (ir_x ir_y vis_x vis_y), got {len(values)}")
            rows.append(values)
        if not rows:
            raise FusionError(f"{path} holds no point pairs; write one 'ir_x ir_y vis_x vis_y' per line")
        table = np.asarray(rows, dtype=np.float64)
        ir, vis = table[:, :2], table[:, 2:]
    if ir.ndim != 2 or ir.shape[1] != 2 or ir.shape != vis.shape:
        raise FusionError(f"{path}: IR and VIS point lists must both be N x 2 and of one length "
                          f"(got {ir.shape} and {vis.shape})")
    return ir, vis


def homography_from_points(ir_points, vis_points, ransac_px: float = 0.0) -> np.ndarray:
    """The 3x3 homography mapping IR pixel coordinates to VIS ones, from >= 4 point pairs.

    With ransac_px > 0 and more than 4 pairs, pairs farther than that from the model are treated as mistakes.
    """
    ir = np.asarray(ir_points, dtype=np.float64).reshape(-1, 2)
    vis = np.asarray(vis_points, dtype=np.float64).reshape(-1, 2)
    if len(ir) < 4 or len(ir) != len(vis):
        raise FusionError(f"a homography needs at least 4 point pairs, got {min(len(ir), len(vis))}")
    method = cv2.RANSAC if ransac_px > 0 and len(ir) > 4 else 0
    matrix, _ = cv2.findHomography(ir, vis, method, ransac_px if method else 3.0)
    if matrix is None or not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) < 1e-12:
        raise FusionError("the point pairs do not define a homography (are three or more of them on one line, or "
                          "two the same?); pick points spread over the whole view")
    return matrix / matrix[2, 2]


def transfer_error(homography: np.ndarray, ir_points, vis_points) -> np.ndarray:
    """Per pair, the distance in VIS pixels between the mapped IR point and its VIS partner."""
    ir = np.asarray(ir_points, dtype=np.float64).reshape(-1, 1, 2)
    mapped = cv2.perspectiveTransform(ir, homography).reshape(-1, 2)
    return np.linalg.norm(mapped - np.asarray(vis_points, dtype=np.float64).reshape(-1, 2), axis=1)


ASPECT_TOLERANCE = 0.02


def aspect_ratio_warning(ir_size: tuple[int, int], vis_size: tuple[int, int], ir_uri: str = "IR",
                         vis_uri: str = "VIS") -> Optional[str]:
    """The warning `fusion run` prints when it fuses frames of different shapes with no homography (the IR would be
    stretched onto the VIS frame), with the command that fixes it; None when the aspect ratios agree within 2%.
    Sizes are (width, height)."""
    ir_aspect, vis_aspect = ir_size[0] / ir_size[1], vis_size[0] / vis_size[1]
    if abs(ir_aspect / vis_aspect - 1.0) <= ASPECT_TOLERANCE:
        return None
    return (f"warning: the IR frames are {ir_size[0]}x{ir_size[1]} (aspect {ir_aspect:.3f}) and the VIS frames "
            f"{vis_size[0]}x{vis_size[1]} (aspect {vis_aspect:.3f}): without --homography the IR is stretched onto "
            f"the VIS frame and nothing lines up; calibrate the pair once with `fusion calibrate --pick --ir {ir_uri} "
            f"--vis {vis_uri} --out h.json` (or --auto instead of --pick) and run with --homography h.json")


def overlap_rect(homography: np.ndarray, ir_size: tuple[int, int], vis_size: tuple[int, int]
                 ) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the largest axis-aligned rectangle of the VIS frame that the warped IR frame covers.

    Sizes are (width, height). Starts from the rectangle inside the four warped corners and shrinks it until the
    warped IR mask covers it completely (exact for any homography that keeps the frame convex).
    """
    ir_w, ir_h = ir_size
    vis_w, vis_h = vis_size
    corners = np.array([[0, 0], [ir_w, 0], [ir_w, ir_h], [0, ir_h]], dtype=np.float64).reshape(-1, 1, 2)
    warped = cv2.perspectiveTransform(corners, homography).reshape(-1, 2)
    tl, tr, br, bl = warped
    x0 = max(tl[0], bl[0], 0.0)
    x1 = min(tr[0], br[0], float(vis_w))
    y0 = max(tl[1], tr[1], 0.0)
    y1 = min(bl[1], br[1], float(vis_h))
    x0, y0, x1, y1 = int(np.ceil(x0)), int(np.ceil(y0)), int(np.floor(x1)), int(np.floor(y1))
    mask = cv2.warpPerspective(np.full((ir_h, ir_w), 255, np.uint8), homography, (vis_w, vis_h),
                               flags=cv2.INTER_NEAREST, borderValue=0)
    for _ in range(200):
        if x1 - x0 < 16 or y1 - y0 < 16:
            break
        if mask[y0:y1, x0:x1].min() == 255:
            return x0, y0, x1, y1
        step_x, step_y = max(1, (x1 - x0) // 100), max(1, (y1 - y0) // 100)
        x0, x1, y0, y1 = x0 + step_x, x1 - step_x, y0 + step_y, y1 - step_y
    raise FusionError("the IR and VIS views barely overlap under this homography; recalibrate with "
                      "`fusion calibrate` (are the IR and VIS points swapped?)")


# --------------------------------------------------------------------------------------------------------- file I/O
def save_homography(path: str | os.PathLike, homography: np.ndarray, ir_size: tuple[int, int],
                    vis_size: tuple[int, int], **extra) -> Path:
    """Write the homography as JSON (atomically): matrix, the frame sizes it was computed for, and `extra`."""
    record = {"format": HOMOGRAPHY_FORMAT, "homography": np.asarray(homography, dtype=float).tolist(),
              "ir_size": [int(ir_size[0]), int(ir_size[1])], "vis_size": [int(vis_size[0]), int(vis_size[1])]}
    record.update(extra)
    return write_json(path, record)


@dataclass
class HomographyFile:
    homography: np.ndarray
    ir_size: Optional[tuple[int, int]]    # (width, height) the matrix was computed for, when known
    vis_size: Optional[tuple[int, int]]


def load_homography(path: str | os.PathLike) -> HomographyFile:
    """Read a homography JSON (from `fusion calibrate`) or a plain 3x3 text/.npy matrix."""
    path = Path(path)
    if not path.is_file():
        raise FusionError(f"homography file not found: {path} (make one with `fusion calibrate`)")
    try:
        if path.suffix.lower() == ".npy":
            matrix, ir_size, vis_size = np.load(path, allow_pickle=False), None, None
        elif path.read_text(encoding="utf-8").lstrip().startswith("{"):
            data = json.loads(path.read_text(encoding="utf-8"))
            matrix = np.asarray(data["homography"], dtype=np.float64)
            ir_size = tuple(data["ir_size"]) if data.get("ir_size") else None
            vis_size = tuple(data["vis_size"]) if data.get("vis_size") else None
        else:
            matrix, ir_size, vis_size = np.loadtxt(path, dtype=np.float64), None, None
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise FusionError(f"{path} is not a homography file ({exc}); make one with `fusion calibrate`") from None
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (3, 3) or not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) < 1e-12:
        raise FusionError(f"{path} does not hold an invertible 3x3 homography")
    return HomographyFile(matrix / matrix[2, 2], ir_size, vis_size)


def rescale_homography(homography: np.ndarray, from_ir: tuple[int, int], from_vis: tuple[int, int],
                       to_ir: tuple[int, int], to_vis: tuple[int, int]) -> np.ndarray:
    """The same registration for frames of other sizes (same cameras, another resolution): S_vis H S_ir^-1."""
    s_ir = np.diag([to_ir[0] / from_ir[0], to_ir[1] / from_ir[1], 1.0])
    s_vis = np.diag([to_vis[0] / from_vis[0], to_vis[1] / from_vis[1], 1.0])
    matrix = s_vis @ homography @ np.linalg.inv(s_ir)
    return matrix / matrix[2, 2]


def warp_into_view(ir: np.ndarray, view: tuple[np.ndarray, tuple[int, int]]) -> np.ndarray:
    """The raw IR frame resampled into the view (`Registration.view_matrix`'s (matrix, (W, H))). A scale and a shift
    alone (cameras side by side, the sample rigs) go through cv2.warpAffine, which OpenCV runs 8-40x faster than
    warpPerspective there (640x512 -> 640x480, one thread: 0.009 against 0.35 ms for a whole-pixel shift, 0.09 against
    0.68 for a scale; the same pixels to one grey level). With rotation or shear the two cost the same."""
    matrix, size = view
    if not (matrix[2, 0] or matrix[2, 1] or matrix[0, 1] or matrix[1, 0]) and matrix[2, 2] != 0:
        return cv2.warpAffine(ir, (matrix[:2] / matrix[2, 2]).astype(np.float64), size, flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
    return cv2.warpPerspective(ir, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class Registration:
    """Warps IR frames onto the VIS frame and crops both to the shared view (set up on the first pair's sizes)."""

    def __init__(self, homography_file: HomographyFile | None = None, crop: bool = True):
        self.file = homography_file
        self.crop = crop
        self._key: Optional[tuple] = None
        self.matrix: Optional[np.ndarray] = None
        self.rect: Optional[tuple[int, int, int, int]] = None
        self._aspect_checked = False

    @classmethod
    def from_file(cls, path: str | os.PathLike | None, crop: bool = True) -> "Registration":
        return cls(load_homography(path) if path else None, crop)

    @property
    def enabled(self) -> bool:
        return self.file is not None

    def warn_if_stretched(self, ir: np.ndarray, vis: np.ndarray, ir_uri: Optional[str] = None,
                          vis_uri: Optional[str] = None) -> None:
        """Once per run, on stderr: frames of different aspect ratios are about to be fused with no homography."""
        if self.file is not None or self._aspect_checked:
            return
        self._aspect_checked = True
        message = aspect_ratio_warning((ir.shape[1], ir.shape[0]), (vis.shape[1], vis.shape[0]), ir_uri or "IR",
                                       vis_uri or "VIS")
        if message:
            print(message, file=sys.stderr, flush=True)

    def _setup(self, ir_size: tuple[int, int], vis_size: tuple[int, int]) -> None:
        matrix = self.file.homography
        if self.file.ir_size and self.file.vis_size and (tuple(self.file.ir_size) != ir_size or
                                                         tuple(self.file.vis_size) != vis_size):
            matrix = rescale_homography(matrix, self.file.ir_size, self.file.vis_size, ir_size, vis_size)
        self.matrix = matrix
        self.rect = overlap_rect(matrix, ir_size, vis_size) if self.crop else (0, 0, vis_size[0], vis_size[1])
        self._key = (ir_size, vis_size)

    def view_size(self, ir: np.ndarray, vis: np.ndarray) -> tuple[int, int]:
        """(H, W) of the VIS view `apply` returns for frames of these shapes."""
        if self.file is None:
            return tuple(vis.shape[:2])
        self._ensure_setup(ir, vis)
        x0, y0, x1, y1 = self.rect
        return y1 - y0, x1 - x0

    def _ensure_setup(self, ir: np.ndarray, vis: np.ndarray) -> None:
        ir_size, vis_size = (ir.shape[1], ir.shape[0]), (vis.shape[1], vis.shape[0])
        if self._key != (ir_size, vis_size):
            self._setup(ir_size, vis_size)

    def apply(self, ir: np.ndarray, vis: np.ndarray, ir_hw: Optional[tuple[int, int]] = None
              ) -> tuple[np.ndarray, np.ndarray]:
        """(IR warped into the VIS view, VIS), both cropped to the overlap. Any dtype OpenCV warps (uint8/16).

        `ir_hw` (H, W): warp the IR frame straight to that size of the view (the model input) instead of the VIS
        frame's own: one resampling instead of two, and a fraction of the pixels at 720p/1080p."""
        if self.file is None:
            return ir, vis
        matrix, size = self.view_matrix(ir, vis, ir_hw)
        x0, y0, x1, y1 = self.rect
        return warp_into_view(ir, (matrix, size)), vis[y0:y1, x0:x1]

    def view_matrix(self, ir: np.ndarray, vis: np.ndarray, ir_hw: Optional[tuple[int, int]] = None
                    ) -> tuple[np.ndarray, tuple[int, int]]:
        """(3x3 taking a pixel of the raw IR frame to its place in the cropped view, the view's (W, H)): what `apply`
        warps with, for a caller that resamples the IR frame itself (IR motion compensation moves and registers it in
        one pass). Needs a homography."""
        self._ensure_setup(ir, vis)
        x0, y0, x1, y1 = self.rect
        # Warp straight into the crop: translate so the crop's corner is the origin, and skip the rest.
        matrix = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], dtype=np.float64) @ self.matrix
        size = (x1 - x0, y1 - y0)
        if ir_hw is not None and tuple(ir_hw) != (size[1], size[0]):
            sx, sy = ir_hw[1] / size[0], ir_hw[0] / size[1]
            # pixel centres map onto pixel centres, as cv2.resize does
            matrix = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]]) @ matrix
            size = (ir_hw[1], ir_hw[0])
        return matrix, size

    def crop_vis(self, vis: np.ndarray) -> np.ndarray:
        """A VIS frame cropped as `apply` crops it (after `apply` has seen a pair of these sizes)."""
        if self.file is None or self.rect is None:
            return vis
        x0, y0, x1, y1 = self.rect
        return vis[y0:y1, x0:x1]
