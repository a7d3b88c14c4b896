"""IR motion compensation: a slow thermal camera's frame carried to the visible frame's time.

A 9 Hz thermal core beside a 30 fps RGB camera: each VIS frame is fused with the latest IR frame, up to one IR period
(111 ms) older. While the rig moves, the heat layer sits where the scene was. The VIS camera saw the scene at both
times, so the motion between them is measured on the VIS frames and applied to the IR frame:

    VIS(t_ref)  ~ the VIS frame captured nearest the IR frame's time t_ir (kept in a short history)
    VIS(t_now)  the frame being fused
    B = DIS optical flow VIS(t_now) -> VIS(t_ref), at a reduced resolution (FLOW_WIDTH px wide; ~1.8 ms a frame)
    IR_now(x) = IR(x + s * B(x)),  s = (t_now - t_ir) / (t_now - t_ref)   (backward warp with cv2.remap)

Where the motion cannot be trusted it falls back to the held frame: per pixel where the forward-backward check fails
(occlusions, pixels that left the view), per frame after a scene cut (most pixels fail the check), when the
reference frame is too far from the IR time, or when no VIS frame near the IR time is in the history (a VIS outage).

`--ir-motion {auto,flow,off}`: auto turns it on when the IR camera is slower than the driving VIS camera.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Deque, Optional

import cv2
import numpy as np

from runtime.errors import FusionError
from runtime.registration import warp_into_view
from runtime.sources import Frame

MODES = ("auto", "flow", "off")
FLOW_WIDTH = 160            # flow is estimated on VIS frames resized to this width (aspect kept)
# DIS's ultrafast preset stops at 1/4 of FLOW_WIDTH (a 40x30 flow field). One level finer, with half its gradient
# descent iterations, leaves 0.30 px of residual on the bundled clips instead of 0.48 and brings the fused video's
# judder within 1.3x of a true 30 fps IR camera (was 1.39x). The forward flow only checks the backward one: the
# preset's own depth does that at a quarter of the cost, with the tolerance widened from 1.0 to 1.5 flow px for its
# coarser field. With the small frames made by Gaussian halvings (pyrDown) and the warp done per channel: 0.28 px,
# judder 1.24x, at 0.58-0.85x the cost (1.84 against 2.49 ms a frame in one quiet run, one thread, 480p; the VM's
# speed moves by 40% from hour to hour): docs/runtime.md "IR motion compensation".
FLOW_FINEST_SCALE = 1
FLOW_DESCENT_ITERATIONS = 6
CHECK_FINEST_SCALE = 2
FB_TOLERANCE_PX = 1.5       # forward-backward disagreement (in flow pixels) beyond which a pixel keeps the held IR
MIN_RELIABLE = 0.5          # below this share of reliable pixels the whole frame keeps the held IR (a scene cut)
HISTORY_S = 0.5             # VIS frames kept to find the one taken nearest each IR frame
PEAK_RESPONSE = 0.05        # phase-correlation peak below which no dominant translation is assumed


def resolve_mode(mode: str, ir_fps: float, vis_fps: float, primary: str) -> bool:
    """Whether motion compensation runs: `flow` always (VIS driving), `off` never, `auto` when the IR camera is
    slower than the VIS camera that drives the output."""
    mode = str(mode).lower()
    if mode not in MODES:
        raise FusionError(f"--ir-motion must be one of {', '.join(MODES)}, got '{mode}'")
    if mode == "off" or primary != "vis":
        return False
    if mode == "flow":
        return True
    return bool(ir_fps and vis_fps and ir_fps < 0.95 * vis_fps)


def through_homography(matrix: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pixel maps (float32 (H, W) each) carried through the 3x3 `matrix`, as cv2.remap takes them. An affine
    matrix (no perspective row, the usual rig) costs two weighted sums; a perspective one adds a division (OpenCV's
    perspectiveTransform on the same points took 10x longer)."""
    matrix = matrix / matrix[2, 2]
    xs = cv2.addWeighted(map_x, matrix[0, 0], map_y, matrix[0, 1], matrix[0, 2])
    ys = cv2.addWeighted(map_x, matrix[1, 0], map_y, matrix[1, 1], matrix[1, 2])
    height, width = map_x.shape
    if abs(matrix[2, 0]) * width + abs(matrix[2, 1]) * height < 1e-7:
        return xs, ys
    scale = cv2.addWeighted(map_x, matrix[2, 0], map_y, matrix[2, 1], 1.0)
    return cv2.divide(xs, scale), cv2.divide(ys, scale)


class VisHistory:
    """The recent VIS frames (the pairing thread appends each one it sees), to find the frame nearest a time."""

    def __init__(self, seconds: float = HISTORY_S):
        self.seconds = seconds
        self.frames: Deque[Frame] = deque()
        self.lock = threading.Lock()

    def add(self, frame: Frame) -> None:
        with self.lock:
            if self.frames and frame.t_media < self.frames[-1].t_media:
                self.frames.clear()        # the timeline went back (a new source): old frames say nothing
            self.frames.append(frame)
            while len(self.frames) > 2 and frame.t_media - self.frames[0].t_media > self.seconds:
                self.frames.popleft()

    def nearest(self, t: float) -> Optional[Frame]:
        with self.lock:
            if not self.frames:
                return None
            return min(self.frames, key=lambda f: abs(f.t_media - t))


@dataclass
class Compensation:
    """What happened to one frame (for statistics and tests)."""

    applied: bool
    reason: str = ""                # why not (or "" when applied)
    reliable: float = 0.0           # share of pixels that passed the forward-backward check


class IrMotionCompensator:
    """Moves a held IR frame to the current VIS frame's time (see the module docstring). Not thread-safe: one per
    preprocessing thread (DIS objects keep state)."""

    def __init__(self, flow_width: int = FLOW_WIDTH, fb_tolerance: float = FB_TOLERANCE_PX,
                 min_reliable: float = MIN_RELIABLE, preset: int = cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST):
        self.flow_width = int(flow_width)
        self.fb_tolerance = float(fb_tolerance)
        self.min_reliable = float(min_reliable)
        self.dis = cv2.DISOpticalFlow_create(preset)
        self.dis.setFinestScale(FLOW_FINEST_SCALE)
        self.dis.setGradientDescentIterations(FLOW_DESCENT_ITERATIONS)
        self.check_dis = cv2.DISOpticalFlow_create(preset)
        self.check_dis.setFinestScale(CHECK_FINEST_SCALE)
        self._grids: dict = {}
        self._windows: dict = {}

    # ------------------------------------------------------------------------------------------------- the pieces
    def small_gray(self, image: np.ndarray) -> np.ndarray:
        """The image as 8-bit gray at the flow resolution."""
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        if image.dtype != np.uint8:
            image = cv2.convertScaleAbs(image, alpha=255.0 / max(float(image.max()), 1.0))
        height, width = image.shape[:2]
        size = (self.flow_width, max(8, int(round(height * self.flow_width / width))))
        while width % (2 * size[0]) == 0 and height % (2 * size[1]) == 0:
            image = cv2.pyrDown(image)           # exact Gaussian halvings: at 4x, half of INTER_AREA's cost
            height, width = image.shape[:2]
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA) if (width, height) != size else image

    def flow(self, now_small: np.ndarray, ref_small: np.ndarray) -> tuple[np.ndarray, float]:
        """(backward flow now -> ref with unreliable pixels zeroed, share of reliable pixels)."""
        backward, reliable, share = self.flow_and_mask(now_small, ref_small)
        return cv2.bitwise_and(backward, backward, mask=reliable) if share < 1.0 else backward, share

    def flow_and_mask(self, now_small: np.ndarray, ref_small: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """(backward flow now -> ref, uint8 mask 255 where the forward-backward check passed, share of those).

        DIS alone at this resolution loses a fast pan (beyond ~10% of the width between the two frames: a car at
        speed, a quick turn): its pyramid is only a few levels deep. The dominant translation is found first by phase
        correlation and DIS measures what is left around it (measured: 75 px of pan at 320 wide to 0.5 px)."""
        shift = self._global_shift(now_small, ref_small)
        backward = self._dis_around(self.dis, now_small, ref_small, shift)
        forward = self._dis_around(self.check_dis, ref_small, now_small, (-shift[0], -shift[1]))
        # The forward flow, sampled where each pixel lands in the reference, must bring the pixel back.
        landed = cv2.add(self._grid(now_small.shape[:2]), backward)
        round_trip = cv2.add(backward, cv2.remap(forward, landed, None, cv2.INTER_LINEAR,
                                                 borderMode=cv2.BORDER_REPLICATE))
        dx, dy = cv2.split(round_trip)
        reliable = cv2.compare(cv2.magnitude(dx, dy), self.fb_tolerance, cv2.CMP_LE)      # 255 where reliable
        return backward, reliable, cv2.countNonZero(reliable) / reliable.size

    def _global_shift(self, now_small: np.ndarray, ref_small: np.ndarray) -> tuple[float, float]:
        """The dominant translation now -> ref (phase correlation), or (0, 0) when it is not clear-cut."""
        # (At half this size it costs half as much, and leaves 0.49 -> 0.66 px at 720p: DIS starts further off.)
        window = self._windows.get(now_small.shape)
        if window is None:
            window = self._windows[now_small.shape] = cv2.createHanningWindow(now_small.shape[::-1], cv2.CV_32F)
        (sx, sy), response = cv2.phaseCorrelate(np.float32(now_small), np.float32(ref_small), window)
        return (sx, sy) if response >= PEAK_RESPONSE else (0.0, 0.0)

    @staticmethod
    def _dis_around(dis, a: np.ndarray, b: np.ndarray, shift: tuple[float, float]) -> np.ndarray:
        """DIS flow a -> b, with b first moved by `shift` (so DIS measures only the rest), the shift added back."""
        if shift == (0.0, 0.0):
            return dis.calc(a, b, None)
        matrix = np.array([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]]], dtype=np.float32)
        moved = cv2.warpAffine(b, matrix, (b.shape[1], b.shape[0]), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REPLICATE)
        flow = dis.calc(a, moved, None)
        return cv2.add(flow, np.array([shift[0], shift[1], 0.0, 0.0]))

    @staticmethod
    def displacement(flow_small: np.ndarray, scale: float, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(dx, dy), each (H, W): the backward displacement in pixels of a frame of `size` (W, H), `scale` x the
        flow, resized. Per channel: OpenCV resizes two single-channel floats faster than one two-channel one."""
        small_h, small_w = flow_small.shape[:2]
        dx, dy = cv2.split(flow_small)
        return (cv2.resize(dx, size, interpolation=cv2.INTER_LINEAR) * np.float32(scale * size[0] / small_w),
                cv2.resize(dy, size, interpolation=cv2.INTER_LINEAR) * np.float32(scale * size[1] / small_h))

    def warp(self, image: np.ndarray, flow_small: np.ndarray, scale: float, outside: Optional[float] = None,
             interpolation: int = cv2.INTER_LINEAR, view: Optional[tuple] = None) -> np.ndarray:
        """`image` (any size, uint8/uint16/float) backward-warped by `scale` x the flow, resized to its size. Pixels
        brought from outside the frame repeat its edge, or take the value `outside` when given.

        `view` (matrix, (W, H)) from `Registration.view_matrix`: `image` is the raw IR frame, registered into the view
        in the same resampling (one interpolation instead of two; measured 1.43 -> 0.97 ms at 640x480)."""
        height, width = image.shape[:2] if view is None else view[1][::-1]
        map_x, map_y = self.maps(flow_small, scale, (width, height), None if view is None else np.linalg.inv(view[0]))
        border = cv2.BORDER_REPLICATE if outside is None else cv2.BORDER_CONSTANT
        return cv2.remap(image, map_x, map_y, interpolation, borderMode=border,
                         borderValue=0.0 if outside is None else float(outside))

    def maps(self, flow_small: np.ndarray, scale: float, size: tuple[int, int],
             inverse: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
        """cv2.remap's (map_x, map_y), (H, W) each for `size` (W, H): each pixel's source under `scale` x the flow,
        then through the 3x3 `inverse` (view -> raw IR) when given.

        When the frame is a whole multiple of the flow field (the usual case: 640x480 over 160x120), the maps are
        built at the flow's resolution, one pixel of border repeated around them, and resized: the grid and an affine
        registration are linear in the pixel coordinates, so bilinear resizing reproduces them exactly (a perspective
        one to a hundredth of a pixel), and the flow is resized as before. Two full-resolution resizes instead of
        two resizes, two additions and two to three weighted sums at full resolution."""
        small_h, small_w = flow_small.shape[:2]
        width, height = size
        fx, fy = width // small_w, height // small_h
        if fx * small_w != width or fy * small_h != height or fx < 1 or fy < 1:
            grid_x, grid_y = self._grid_xy((height, width))
            dx, dy = self.displacement(flow_small, scale, (width, height))
            map_x, map_y = cv2.add(grid_x, dx), cv2.add(grid_y, dy)
            return (map_x, map_y) if inverse is None else through_homography(inverse, map_x, map_y)
        key = ("ring", small_h, small_w, fx, fy)
        grid = self._grids.get(key)
        if grid is None:    # full-resolution coordinates of the padded small pixels' centres
            xs = (np.arange(-1, small_w + 1, dtype=np.float32) + 0.5) * fx - 0.5
            ys = (np.arange(-1, small_h + 1, dtype=np.float32) + 0.5) * fy - 0.5
            grid = self._grids[key] = tuple(np.ascontiguousarray(g) for g in np.meshgrid(xs, ys))
        padded = cv2.copyMakeBorder(flow_small, 1, 1, 1, 1, cv2.BORDER_REPLICATE)
        dx, dy = cv2.split(padded)
        map_x = cv2.scaleAdd(dx, float(scale * fx), grid[0])
        map_y = cv2.scaleAdd(dy, float(scale * fy), grid[1])
        if inverse is not None:
            map_x, map_y = through_homography(inverse, map_x, map_y)
        # resized with the border ring, then cropped: output pixel i samples small pixel (i + 0.5) / f - 0.5, never
        # clamped at the frame's edge
        big = (fx * (small_w + 2), fy * (small_h + 2))
        rows, cols = slice(fy, fy + height), slice(fx, fx + width)
        return (cv2.resize(map_x, big, interpolation=cv2.INTER_LINEAR)[rows, cols],
                cv2.resize(map_y, big, interpolation=cv2.INTER_LINEAR)[rows, cols])

    def _grid_xy(self, shape: tuple) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) pixel coordinates of a frame of `shape` (H, W), float32, cached."""
        grids = self._grids.get(tuple(shape))
        if grids is None:
            ys, xs = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
            grids = self._grids[tuple(shape)] = (xs, ys)
        return grids

    def _grid(self, shape: tuple) -> np.ndarray:
        """The same as one two-channel array (for adding a flow field), cached."""
        key = ("xy2",) + tuple(shape)
        grid = self._grids.get(key)
        if grid is None:
            grid = self._grids[key] = np.dstack(self._grid_xy(shape))
        return grid

    # ----------------------------------------------------------------------------------------------------- a frame
    def compensate(self, ir: np.ndarray, vis_now: np.ndarray, vis_ref: Optional[np.ndarray], t_now: float,
                   t_ref: Optional[float], t_ir: float, max_ref_gap_s: float = 0.025,
                   now_small: Optional[np.ndarray] = None, ref_small: Optional[np.ndarray] = None,
                   view: Optional[tuple] = None) -> tuple[np.ndarray, Compensation]:
        """The IR frame (in the VIS view, any resolution) moved from t_ir to t_now. `vis_ref` is the VIS frame taken
        at t_ref, nearest t_ir; `max_ref_gap_s` is the largest |t_ref - t_ir| trusted (about half a VIS period).
        With `view` (`Registration.view_matrix`'s (matrix, (W, H))), `ir` is the raw IR frame: it is registered into
        the view and moved in one resampling, or only registered where the motion is not applied."""
        if vis_ref is None or t_ref is None:
            return self._held(ir, view), Compensation(False, "no VIS frame near the IR frame's time")
        if abs(t_ref - t_ir) > max_ref_gap_s:
            return self._held(ir, view), Compensation(False, "no VIS frame near the IR frame's time")
        span = t_now - t_ref
        if abs(span) < 1e-4:
            return self._held(ir, view), Compensation(False, "IR frame is current")
        scale = (t_now - t_ir) / span
        now_small = self.small_gray(vis_now) if now_small is None else now_small
        ref_small = self.small_gray(vis_ref) if ref_small is None else ref_small
        if now_small.shape != ref_small.shape:
            return self._held(ir, view), Compensation(False, "VIS frame size changed")
        flow, reliable = self.flow(now_small, ref_small)
        if reliable < self.min_reliable:
            return self._held(ir, view), Compensation(False, "motion unreliable (scene cut?)", reliable)
        return self.warp(ir, flow, scale, view=view), Compensation(True, "", reliable)

    @staticmethod
    def _held(ir: np.ndarray, view: Optional[tuple]) -> np.ndarray:
        """The IR frame as held: itself, or registered into the view when it came raw."""
        return ir if view is None else warp_into_view(ir, view)


__all__ = ["MODES", "FLOW_WIDTH", "VisHistory", "IrMotionCompensator", "Compensation", "resolve_mode"]
