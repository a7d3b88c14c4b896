"""IR motion compensation: a slow thermal camera's frame carried to the visible frame's time.

A 9 Hz thermal core beside a 30 fps RGB camera: each VIS frame is fused with the latest IR frame, up to one IR period
(111 ms) older. While the rig moves, the heat layer sits where the scene was. The VIS camera saw the scene at both
times, so the motion between them is measured on the VIS frames and applied to the IR frame:

    VIS(t_ref)  ~ the VIS frame captured nearest the IR frame's time t_ir (kept in a short history)
    VIS(t_now)  the frame being fused
    B = DIS optical flow VIS(t_now) -> VIS(t_ref), at a reduced resolution (FLOW_WIDTH px wide), started from the
        rig's motion: predicted from the last frame, or measured by phase correlation when there is no prediction
    IR_now(x) = IR(x + s * B(x)),  s = (t_now - t_ir) / (t_now - t_ref)   (backward warp)

The warp takes one affine motion fitted to B (with the registration, one cv2.warpAffine) on every tile of the frame
where B agrees with it, and cv2.remap with B's per-pixel maps on the others (things that move on their own, the near
side of a parallax, pixels that failed the check below).

Where the motion cannot be trusted it falls back to the held frame: per pixel where the forward-backward check fails
(occlusions, pixels that left the view), per frame after a scene cut (most pixels fail the check), when the
reference frame is too far from the IR time, or when no VIS frame near the IR time is in the history (a VIS outage).

`--ir-motion {auto,flow,off}`: auto turns it on when the IR camera is slower than the driving VIS camera.
"""
from __future__ import annotations

import threading
import time
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
# speed moves by 40% from hour to hour): docs/runtime.md "IR motion compensation". Since the warp takes a global
# motion fitted to the flow wherever the flow agrees with it (its noise averaged out), patches every 6 px instead of
# the preset's 4 save 0.2 ms a frame and still leave less residual than the dense warp with 4 did (0.26 against 0.28
# px, judder 1.23x against 1.24x; 720p 0.41 against 0.46 px, judder 1.49x against 1.47x; with 4: 0.23 and 0.36 px).
FLOW_FINEST_SCALE = 1
FLOW_DESCENT_ITERATIONS = 6
FLOW_PATCH_STRIDE = 6
CHECK_FINEST_SCALE = 2      # of the small frame: its DIS is given both frames halved (pyrDown) and stops at 1
FB_TOLERANCE_PX = 1.5       # forward-backward disagreement (flow px, per axis) beyond which a pixel keeps the held IR
MIN_RELIABLE = 0.5          # below this share of reliable pixels the whole frame keeps the held IR (a scene cut)
HISTORY_S = 0.5             # VIS frames kept to find the one taken nearest each IR frame
PEAK_RESPONSE = 0.05        # phase-correlation peak below which no dominant translation is assumed
# The warp: one global affine motion (fitted to the flow) wherever the flow agrees with it, the dense flow elsewhere.
# cv2.remap with per-pixel maps costs 0.68 ms at 640x480 (IPP's warpAffine of the same frame 0.11): most of a rig's
# motion over one IR period is the rig's own (a pan, a turn, a planar scene), so most tiles take the affine warp.
GLOBAL_TOLERANCE_PX = 1.0   # a tile takes the global motion where the dense flow is within this of it (frame pixels)
TILE = 8                    # tile side in flow pixels (32 px of a 640x480 frame)
TRACK_MAX_PX = 8.0          # a predicted dominant motion up to this (flow px) skips phase correlation (DIS follows)
TRACK_MAX_AGE_S = 0.25      # the last frame's motion predicts the next one's for this long
DENSE_SHARE = 0.6           # beyond this share of tiles off the global motion, the whole frame takes the dense warp
NOISE_SIGMAS = 3.0          # the tolerance widens to this many times the tile means' noise (robust spread) ...
MAX_WIDEN = 2.0             # ... up to this many times GLOBAL_TOLERANCE_PX


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


def is_affine(matrix, size: tuple[int, int]) -> bool:
    """Whether the 3x3 `matrix` (an array or nested lists, last entry 1) has no perspective worth a 1e-7 scale change
    over a frame of `size`."""
    return abs(matrix[2][0]) * size[0] + abs(matrix[2][1]) * size[1] < 1e-7


def through_homography(matrix: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pixel maps (float32 (H, W) each) carried through the 3x3 `matrix`, as cv2.remap takes them. An affine
    matrix (no perspective row, the usual rig) costs two weighted sums; a perspective one adds a division (OpenCV's
    perspectiveTransform on the same points took 10x longer)."""
    matrix = matrix / matrix[2, 2]
    xs = cv2.addWeighted(map_x, matrix[0, 0], map_y, matrix[0, 1], matrix[0, 2])
    ys = cv2.addWeighted(map_x, matrix[1, 0], map_y, matrix[1, 1], matrix[1, 2])
    if is_affine(matrix, map_x.shape[::-1]):
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
class WarpPlan:
    """How one frame is warped: `matrix` (3x3, frame pixel -> its source under the global motion, before the view)
    wherever `dense` (tiles x tiles, bool) is False; the dense flow's per-pixel maps on the tiles where it is True.
    `matrix` is None when the whole frame takes the dense maps."""

    matrix: Optional[np.ndarray]
    dense: np.ndarray
    tile_px: tuple[int, int]        # a tile's (width, height) in frame pixels
    centre: Optional[tuple[float, float]] = None    # the global motion's flow at the field's centre (flow px)
    dense_count: Optional[int] = None               # tiles True in `dense`, when counted already

    @property
    def dense_share(self) -> float:
        if self.matrix is None or not self.dense.size:
            return 1.0 if self.matrix is None else 0.0
        count = np.count_nonzero(self.dense) if self.dense_count is None else self.dense_count
        return count / self.dense.size


@dataclass
class Compensation:
    """What happened to one frame (for statistics and tests)."""

    applied: bool
    reason: str = ""                # why not (or "" when applied)
    reliable: float = 0.0           # share of pixels that passed the forward-backward check
    dense_share: float = 0.0        # share of the frame warped by the dense flow (the rest: the global motion)
    start: Optional[tuple] = None   # the predicted motion DIS started from, or None (measured by phase correlation)
    cpu: Optional[dict] = None      # this thread's CPU seconds by piece: flow (DIS, check), fit (tiles), warp


class IrMotionCompensator:
    """Moves a held IR frame to the current VIS frame's time (see the module docstring). Not thread-safe: one per
    preprocessing thread (DIS objects keep state)."""

    def __init__(self, flow_width: int = FLOW_WIDTH, fb_tolerance: float = FB_TOLERANCE_PX,
                 min_reliable: float = MIN_RELIABLE, preset: int = cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
                 global_tolerance: Optional[float] = GLOBAL_TOLERANCE_PX):
        self.flow_width = int(flow_width)
        self.global_tolerance = global_tolerance       # None: the dense flow everywhere
        self.fb_tolerance = float(fb_tolerance)
        self.min_reliable = float(min_reliable)
        self.dis = cv2.DISOpticalFlow_create(preset)
        self.dis.setFinestScale(FLOW_FINEST_SCALE)
        self.dis.setGradientDescentIterations(FLOW_DESCENT_ITERATIONS)
        self.dis.setPatchStride(FLOW_PATCH_STRIDE)
        self.check_dis = cv2.DISOpticalFlow_create(preset)
        self.check_dis.setFinestScale(CHECK_FINEST_SCALE - 1)     # it is given the small frames halved
        self._grids: dict = {}
        self._windows: dict = {}
        self._inverses: dict = {}
        self._velocity: Optional[tuple[float, float, float]] = None     # (flow px per second of span, its time)

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

    @staticmethod
    def held_where_unreliable(backward: np.ndarray, reliable: np.ndarray, share: float) -> np.ndarray:
        """`flow_and_mask`'s flow with the pixels that failed the check zeroed (they keep the held IR)."""
        return cv2.bitwise_and(backward, backward, mask=reliable) if share < 1.0 else backward

    def flow_and_mask(self, now_small: np.ndarray, ref_small: np.ndarray,
                      start: Optional[tuple[float, float]] = None) -> tuple[np.ndarray, np.ndarray, float]:
        """(backward flow now -> ref, uint8 mask 255 where the forward-backward check passed, share of those).

        DIS alone at this resolution loses a fast pan (beyond ~10% of the width between the two frames: a car at
        speed, a quick turn): its pyramid is only a few levels deep. The dominant translation is found first by phase
        correlation and DIS measures what is left around it (measured: 75 px of pan at 320 wide to 0.5 px). `start`:
        that translation predicted instead (`compensate` tracks the rig's motion from frame to frame)."""
        shift = self._global_shift(now_small, ref_small) if start is None else start
        # DIS measures what is left after the reference is moved back by the shift, in whole pixels (a crop with its
        # edge repeated: DIS finds the fraction itself; moved by the exact fraction, the bilinear blur left 0.257
        # instead of 0.237 px at 480p). (DIS also takes a starting field; tried, it follows a large start less well:
        # 1.65 against 0.78 grey levels from the truth after a 12 px pan at 320 px wide, tests/test_ir_motion.py.)
        sx, sy = int(round(shift[0])), int(round(shift[1]))
        height, width = ref_small.shape[:2]
        if (sx, sy) != (0, 0):
            if max(abs(sx), abs(sy)) >= min(width, height):
                sx, sy = 0, 0                     # a shift beyond the frame: nothing left to compare
            else:
                ref_small = cv2.copyMakeBorder(ref_small[max(sy, 0):height + min(sy, 0), max(sx, 0):width + min(sx, 0)],
                                               max(-sy, 0), max(sy, 0), max(-sx, 0), max(sx, 0), cv2.BORDER_REPLICATE)
        rest = self.dis.calc(now_small, ref_small, None)
        # The forward flow (from the moved reference), sampled where each pixel lands there, must bring it back; the
        # shift cancels out of the round trip.
        forward = self.check_dis.calc(cv2.pyrDown(ref_small), cv2.pyrDown(now_small), None)    # half-frame px
        landed = cv2.scaleAdd(rest, 0.5, self._half_grid(now_small.shape[:2]))     # in the halved frame's pixels
        round_trip = cv2.scaleAdd(cv2.remap(forward, landed, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE),
                                  2.0, rest)
        backward = rest if (sx, sy) == (0, 0) else cv2.add(rest, (float(sx), float(sy), 0.0, 0.0))
        # 255 where the round trip misses by at most the tolerance on each axis (one call; the disk of that radius,
        # split + magnitude + compare, marks the same pixels to 0.001 px of the benchmark's residual)
        reliable = cv2.inRange(round_trip, (-self.fb_tolerance,) * 2, (self.fb_tolerance,) * 2)
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
    def displacement(flow_small: np.ndarray, scale: float, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(dx, dy), each (H, W): the backward displacement in pixels of a frame of `size` (W, H), `scale` x the
        flow, resized. Per channel: OpenCV resizes two single-channel floats faster than one two-channel one."""
        small_h, small_w = flow_small.shape[:2]
        dx, dy = cv2.split(flow_small)
        return (cv2.resize(dx, size, interpolation=cv2.INTER_LINEAR) * np.float32(scale * size[0] / small_w),
                cv2.resize(dy, size, interpolation=cv2.INTER_LINEAR) * np.float32(scale * size[1] / small_h))

    def warp(self, image: np.ndarray, flow_small: np.ndarray, scale: float, outside: Optional[float] = None,
             interpolation: int = cv2.INTER_LINEAR, view: Optional[tuple] = None,
             plan: Optional[WarpPlan] = None) -> np.ndarray:
        """`image` (any size, uint8/uint16/float) backward-warped by `scale` x the flow, resized to its size. Pixels
        brought from outside the frame repeat its edge, or take the value `outside` when given.

        `view` (matrix, (W, H)) from `Registration.view_matrix`: `image` is the raw IR frame, registered into the view
        in the same resampling (one interpolation instead of two; measured 1.43 -> 0.97 ms at 640x480).

        `plan` (from `plan`): the global motion (with the view, one cv2.warpAffine) wherever it agrees with the flow,
        and cv2.remap with the dense flow's maps only on the tiles where it does not; without it, the dense flow
        everywhere."""
        height, width = image.shape[:2] if view is None else view[1][::-1]
        inverse = None if view is None else self._inverse(view[0])
        border = cv2.BORDER_REPLICATE if outside is None else cv2.BORDER_CONSTANT
        border_value = 0.0 if outside is None else float(outside)
        if plan is None or plan.matrix is None:
            map_x, map_y = self.maps(flow_small, scale, (width, height), inverse)
            return cv2.remap(image, map_x, map_y, interpolation, borderMode=border, borderValue=border_value)
        # the global motion composed with the registration, in Python floats (a 3x3 product in numpy costs more,
        # cold, than OpenCV's whole warp of a tile)
        m = plan.matrix.tolist()
        if inverse is not None:
            inv = inverse.tolist()
            m = [[inv[i][0] * m[0][j] + inv[i][1] * m[1][j] + inv[i][2] * m[2][j] for j in range(3)] for i in range(3)]
        last = m[2][2]
        m = [[value / last for value in row] for row in m]
        flags = interpolation | cv2.WARP_INVERSE_MAP
        if is_affine(m, (width, height)):
            out = cv2.warpAffine(image, np.array(m[:2]), (width, height), flags=flags, borderMode=border,
                                 borderValue=border_value)
        else:
            out = cv2.warpPerspective(image, np.array(m), (width, height), flags=flags, borderMode=border,
                                      borderValue=border_value)
        if plan.dense_count if plan.dense_count is not None else plan.dense.any():
            self._warp_tiles(image, flow_small, scale, plan, out, inverse, interpolation, border, border_value)
        return out

    def _warp_tiles(self, image: np.ndarray, flow_small: np.ndarray, scale: float, plan: WarpPlan, out: np.ndarray,
                    inverse: Optional[np.ndarray], interpolation: int, border: int, border_value: float) -> None:
        """The dense flow's warp on `plan`'s dense tiles of `out`, in place, in one cv2.remap.

        The tiles are remapped as one strip: each tile's window of the ring maps (its flow pixels and one around
        them), the windows stacked and resized in one call (the stacking is aligned with the resize's factors, so
        every map value is what `maps` computes for that pixel of the whole frame, to the bit), the strip remapped
        and its tiles copied to their places. The cost follows the dense tiles' area and not their layout."""
        height, width = out.shape[:2]
        small_h, small_w = flow_small.shape[:2]
        fx, fy = width // small_w, height // small_h
        tile, (tile_w, tile_h) = TILE, plan.tile_px
        ring = self._ring_maps(flow_small, scale, (width, height), inverse)
        tiles_y, tiles_x = plan.dense.shape
        ids = np.flatnonzero(plan.dense)
        # each tile's window of the ring (its flow pixels and one around them), by flat index into the ring (a
        # cached table); rows past the ring's end (a partial last row of tiles) clip to its last value, and reach
        # only pixels outside the frame
        key = ("windows", tiles_y, tiles_x, ring.shape[1])
        table = self._grids.get(key)
        if table is None:
            span = np.arange(tile + 2)
            origins = (np.arange(tiles_y)[:, None] * ring.shape[1] + np.arange(tiles_x)) * tile
            table = self._grids[key] = (origins.reshape(-1, 1, 1) + span[:, None] * ring.shape[1] + span)
        windows = np.take(ring.reshape(-1, 2), table[ids], axis=0, mode="clip")
        count = len(ids)
        big = cv2.resize(windows.reshape(count * (tile + 2), tile + 2, 2), ((tile + 2) * fx, count * (tile + 2) * fy),
                         interpolation=cv2.INTER_LINEAR)
        strip_maps = np.ascontiguousarray(
            big.reshape(count, (tile + 2) * fy, (tile + 2) * fx, 2)[:, fy:fy + tile_h, fx:fx + tile_w]
        ).reshape(count * tile_h, tile_w, 2)
        strip = cv2.remap(image, strip_maps, None, interpolation, borderMode=border, borderValue=border_value)
        tiles = strip.reshape((count, tile_h, tile_w) + strip.shape[2:])
        rows, cols = np.divmod(ids, tiles_x)
        if tiles_y * tile_h == height and tiles_x * tile_w == width and out.flags.c_contiguous:
            # one assignment, through a (tile row, y, tile column, x) view of `out`
            out.reshape((tiles_y, tile_h, tiles_x, tile_w) + out.shape[2:])[rows, :, cols] = tiles
            return
        for k, (row, col) in enumerate(zip(rows.tolist(), cols.tolist())):    # a partial last row of tiles
            r0, x0 = row * tile_h, col * tile_w
            out[r0:r0 + tile_h, x0:x0 + tile_w] = tiles[k, :height - r0, :width - x0]

    def plan(self, flow_small: np.ndarray, scale: float, size: tuple[int, int],
             reliable: Optional[np.ndarray] = None, tolerance: Optional[float] = None) -> WarpPlan:
        """Where a frame of `size` (W, H) can take one global motion instead of the dense flow (`warp`'s plan).

        The flow is averaged over tiles of TILE x TILE flow pixels (DIS's own patches, 8 px at half the flow's
        resolution, make it no finer), and an affine motion is fitted to the tile means by least squares, twice: the
        second time without the tiles more than twice `tolerance` off the first fit (a moving object, the near side of
        a parallax). A tile takes the global motion when its mean flow, scaled by `scale`, is within `tolerance`
        pixels of the frame (default GLOBAL_TOLERANCE_PX) of it and all its pixels passed the forward-backward check
        (`reliable`, uint8 255 where they did; the others keep the held frame). (The tile's mean, not each pixel: the
        flow is smooth at that scale, except where a tile borders one that moves otherwise, whose motion the dense
        maps would blend into its edge pixels.) Terms of the fit that move no pixel by
        a quarter of `tolerance` at the field's corners are dropped (OpenCV warps a pure zoom and translation 3x
        faster). Frames that are not a whole multiple of the flow, and frames with more than DENSE_SHARE of their
        tiles off, take the dense flow everywhere."""
        tolerance = self.global_tolerance if tolerance is None else tolerance
        small_h, small_w = flow_small.shape[:2]
        width, height = size
        fx, fy = width // max(small_w, 1), height // max(small_h, 1)
        centres, counts, starts = self._tile_grid(small_h, small_w)
        tile_px = (TILE * fx, TILE * fy)
        if tolerance is None or fx < 1 or fy < 1 or fx * small_w != width or fy * small_h != height or scale == 0:
            return WarpPlan(None, np.ones(counts.shape, dtype=bool), tile_px)
        # (Few array operations, each on the whole tile grid: in the pipeline this runs once a frame with the caches
        # cold, where every operation costs tens of microseconds whatever its size.)
        if starts is None:       # whole tiles: an exact box average (in C, 10x numpy's reduceat)
            tiles = counts.shape[::-1]
            means = cv2.resize(flow_small, tiles, interpolation=cv2.INTER_AREA)
            # 255 where all of a tile's pixels passed the forward-backward check (one failed pixel in 64: 251)
            usable = None if reliable is None else cv2.threshold(
                cv2.resize(reliable, tiles, interpolation=cv2.INTER_AREA), 254, 255, cv2.THRESH_BINARY)[1]
        else:
            means = (np.add.reduceat(np.add.reduceat(flow_small, starts[0], axis=0), starts[1], axis=1) /
                     counts[..., None]).astype(np.float32)
            usable = None if reliable is None else 255 * (np.add.reduceat(np.add.reduceat(
                (reliable == 0).view(np.uint8), starts[0], axis=0), starts[1], axis=1) == 0).astype(np.uint8)
        flat = means.reshape(-1, 2)
        usable_count = flat.shape[0] if usable is None else cv2.countNonZero(usable)
        if usable_count == flat.shape[0]:
            usable, coef = None, self._tile_fit(small_h, small_w) @ flat
        else:
            coef = self._solve(small_h, small_w, flat, counts.reshape(-1) * usable.reshape(-1), usable_count)
        # the tolerance in flow pixels, per axis (a tile's deviation x scale x frame pixels per flow pixel)
        bound_x, bound_y = tolerance / (abs(scale) * fx), tolerance / (abs(scale) * fy)
        widened = False
        for refitted in (False, True):
            if coef is None:
                return WarpPlan(None, np.ones(counts.shape, dtype=bool), tile_px)
            # drop the cross terms (rotation, shear) when they move no pixel by a quarter of the tolerance
            (_, shear_y), (shear_x, _), _ = coef.tolist()
            if abs(shear_x) * small_h < 0.5 * bound_x and abs(shear_y) * small_w < 0.5 * bound_y:
                coef[1, 0] = coef[0, 1] = 0.0
            off = (flat - centres @ coef).reshape(means.shape)
            # the (usable) tiles within twice the tolerance; the others are fitted out once (moving things, parallax)
            near, near_count = self._within(off, 2.0 * bound_x, 2.0 * bound_y, usable)
            if not widened and near_count:
                # The tolerance is no finer than the flow's own noise on the tile means (a dark, noisy VIS frame):
                # NOISE_SIGMAS x their spread over those tiles (1.2533 x the mean absolute deviation: the standard
                # deviation of a normal noise; both axes pooled), at most MAX_WIDEN x the tolerance.
                spread = 1.2533 * cv2.norm(off, cv2.NORM_L1, mask=near) / (near_count * (bound_x + bound_y))
                widen = min(max(1.0, NOISE_SIGMAS * spread), MAX_WIDEN)
                if widen > 1.0:
                    bound_x, bound_y = bound_x * widen, bound_y * widen
                    near, near_count = self._within(off, 2.0 * bound_x, 2.0 * bound_y, usable)
            widened = True
            if refitted or near_count == usable_count:
                break
            coef = self._solve(small_h, small_w, flat, counts.reshape(-1) * near.reshape(-1), near_count)
        # where a tile takes the global motion: within the tolerance, and every pixel passed the check (a tile with
        # pixels that failed keeps them held, through the dense maps)
        fits, fit_count = self._within(off, bound_x, bound_y, usable)
        dense_count = fits.size - fit_count
        if dense_count > DENSE_SHARE * fits.size:
            return WarpPlan(None, np.ones(counts.shape, dtype=bool), tile_px)
        # in frame pixels: flow pixel u = (x + 0.5) / fx - 0.5 (centred: minus the centre), displacement = scale *
        # fx * flow
        (a, d), (b, e), (c, f) = coef.tolist()
        ou, ov = 0.5 / fx - 0.5 - (small_w - 1) / 2.0, 0.5 / fy - 0.5 - (small_h - 1) / 2.0
        matrix = np.array([[1.0 + scale * a, scale * b * fx / fy, scale * fx * (a * ou + b * ov + c)],
                           [scale * d * fy / fx, 1.0 + scale * e, scale * fy * (d * ou + e * ov + f)],
                           [0.0, 0.0, 1.0]])
        return WarpPlan(matrix, fits == 0, tile_px, (c, f), dense_count)

    @staticmethod
    def _within(off: np.ndarray, bound_x: float, bound_y: float, usable: Optional[np.ndarray]) -> tuple:
        """(uint8 255 on the tiles whose deviation `off` (tiles_y, tiles_x, 2) is within the bounds on both axes and
        that are `usable` (when given), their count)."""
        inside = cv2.inRange(off, (-bound_x, -bound_y), (bound_x, bound_y))
        if usable is not None:
            inside = cv2.bitwise_and(inside, usable)
        return inside, cv2.countNonZero(inside)

    def applied_displacement(self, flow_small: np.ndarray, scale: float, size: tuple[int, int],
                             plan: Optional[WarpPlan]) -> np.ndarray:
        """(H, W, 2): the backward displacement `warp` applies to each pixel of a frame of `size` under `plan` (the
        global motion on its tiles, the dense flow on the others), in frame pixels (benchmarks and tests)."""
        width, height = size
        dense = np.dstack(self.displacement(flow_small, scale, size))
        if plan is None or plan.matrix is None:
            return dense
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
        m = plan.matrix
        moved = np.dstack([m[0, 0] * xs + m[0, 1] * ys + m[0, 2] - xs, m[1, 0] * xs + m[1, 1] * ys + m[1, 2] - ys])
        tile_w, tile_h = plan.tile_px
        per_pixel = np.repeat(np.repeat(plan.dense, tile_h, axis=0), tile_w, axis=1)[:height, :width]
        return np.where(per_pixel[..., None], dense, moved).astype(np.float32)

    def _tile_grid(self, small_h: int, small_w: int) -> tuple:
        """The tiles of a flow field, cached: ((n, 3) [u, v, 1] of each tile's centroid, u and v from the field's
        centre; (tiles_y, tiles_x) flow pixels in each tile; the tiles' first rows and columns, or None when the
        field is a whole number of tiles)."""
        key = ("tiles", small_h, small_w)
        cached = self._grids.get(key)
        if cached is None:
            starts_y, starts_x = np.arange(0, small_h, TILE), np.arange(0, small_w, TILE)
            ends_y, ends_x = np.append(starts_y[1:], small_h), np.append(starts_x[1:], small_w)
            us, vs = np.meshgrid((starts_x + ends_x - 1 - (small_w - 1)) / 2.0,
                                 (starts_y + ends_y - 1 - (small_h - 1)) / 2.0)
            whole = small_h % TILE == 0 and small_w % TILE == 0
            cached = self._grids[key] = (np.dstack([us, vs, np.ones_like(us)]).reshape(-1, 3).astype(np.float32),
                                         np.outer(ends_y - starts_y, ends_x - starts_x).astype(np.float32),
                                         None if whole else (starts_y, starts_x))
        return cached

    def _tile_fit(self, small_h: int, small_w: int) -> np.ndarray:
        """(3, n) the least-squares affine fit of all the tiles' means, weighted by their pixel counts, as a matrix
        (the tiles never change, so the fit is one product), float32; cached."""
        key = ("tile fit", small_h, small_w)
        fit = self._grids.get(key)
        if fit is None:
            centres, counts, _ = self._tile_grid(small_h, small_w)
            centres, counts = centres.astype(np.float64), counts.reshape(-1, 1).astype(np.float64)
            weighted = centres * counts
            fit = self._grids[key] = np.linalg.solve(weighted.T @ centres, weighted.T).astype(np.float32)
        return fit

    def _solve(self, small_h: int, small_w: int, means: np.ndarray, weight: np.ndarray,
               count: int) -> Optional[np.ndarray]:
        """(3, 2) the affine fit of the tiles' `means` (n, 2) weighted by `weight` (n,), or None with fewer than 6
        tiles weighing (`count`). The normal matrix from the tiles' cached moments (one product), its inverse by
        cofactors (np.linalg: 10x slower at this size)."""
        if count < 6:
            return None
        key = ("moments", small_h, small_w)
        moments = self._grids.get(key)
        if moments is None:    # per tile: u*u, u*v, u, v*v, v, 1 (the symmetric normal matrix's six entries)
            centres = self._tile_grid(small_h, small_w)[0].astype(np.float64)
            u, v = centres[:, 0], centres[:, 1]
            moments = self._grids[key] = (np.stack([u * u, u * v, u, v * v, v, np.ones_like(u)]).astype(np.float32),
                                          np.ascontiguousarray(self._tile_grid(small_h, small_w)[0].T))
        products, centres_t = moments
        weight = weight.astype(np.float32)
        (a, b, c, e, f, i) = (products @ weight).tolist()
        right = centres_t @ (means * weight[:, None])
        cofactors = [[e * i - f * f, c * f - b * i, b * f - c * e], [c * f - b * i, a * i - c * c, b * c - a * f],
                     [b * f - c * e, b * c - a * f, a * e - b * b]]
        det = a * cofactors[0][0] + b * cofactors[0][1] + c * cofactors[0][2]
        if abs(det) < 1e-9 * max(abs(a * e * i), 1e-30):
            return None
        return (np.array(cofactors, dtype=np.float32) / np.float32(det)) @ right

    def _inverse(self, matrix: np.ndarray) -> np.ndarray:
        """The inverse of a view matrix, cached (np.linalg.inv costs 0.07 ms a call)."""
        key = matrix.tobytes()
        inverse = self._inverses.get(key)
        if inverse is None:
            if len(self._inverses) > 8:
                self._inverses.clear()
            inverse = self._inverses[key] = np.linalg.inv(matrix)
        return inverse

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
        map_x, map_y = cv2.split(self._ring_maps(flow_small, scale, size, inverse))
        # resized with the border ring, then cropped: output pixel i samples small pixel (i + 0.5) / f - 0.5, never
        # clamped at the frame's edge
        big = (fx * (small_w + 2), fy * (small_h + 2))
        rows, cols = slice(fy, fy + height), slice(fx, fx + width)
        return (cv2.resize(map_x, big, interpolation=cv2.INTER_LINEAR)[rows, cols],
                cv2.resize(map_y, big, interpolation=cv2.INTER_LINEAR)[rows, cols])

    def _ring_maps(self, flow_small: np.ndarray, scale: float, size: tuple[int, int],
                   inverse: Optional[np.ndarray] = None) -> np.ndarray:
        """`maps` at the flow's resolution with one repeated pixel around it, as one (h + 2, w + 2, 2) array: the
        source (x, y), in frame pixels, of the frame pixel at each flow pixel's centre. `size` is a whole multiple of
        the flow. Two-channel throughout: three OpenCV calls where the per-channel version took six."""
        small_h, small_w = flow_small.shape[:2]
        fx, fy = size[0] // small_w, size[1] // small_h
        key = ("ring", small_h, small_w, fx, fy)
        grid = self._grids.get(key)
        if grid is None:    # full-resolution coordinates of the padded small pixels' centres
            xs = (np.arange(-1, small_w + 1, dtype=np.float32) + 0.5) * fx - 0.5
            ys = (np.arange(-1, small_h + 1, dtype=np.float32) + 0.5) * fy - 0.5
            grid = self._grids[key] = np.ascontiguousarray(np.dstack(np.meshgrid(xs, ys)))
        padded = cv2.copyMakeBorder(flow_small, 1, 1, 1, 1, cv2.BORDER_REPLICATE)
        kx, ky = float(scale * fx), float(scale * fy)
        if inverse is not None:
            (a, b, c), (d, e, f), (g, h, i) = inverse.tolist()
            if b == d == g == h == 0.0:
                # a scale and shift (the usual rig): A (grid + k flow) = A grid (cached) + A's scale x k flow
                a, c, e, f = a / i, c / i, e / i, f / i
                moved_key = ("ring view", small_h, small_w, fx, fy, a, c, e, f)
                moved = self._grids.get(moved_key)
                if moved is None:
                    if len(self._grids) > 64:          # a view that keeps changing (live refinement)
                        self._grids.clear()
                    moved = self._grids[moved_key] = cv2.transform(grid, np.array([[a, 0.0, c], [0.0, e, f]]))
                grid, kx, ky, inverse = moved, kx * a, ky * e, None
        if kx == ky:
            ring = cv2.scaleAdd(padded, kx, grid)
        else:
            ring = cv2.add(cv2.multiply(padded, (kx, ky, 0.0, 0.0)), grid)
        if inverse is None:
            return ring
        matrix = inverse / inverse[2, 2]
        if is_affine(matrix, size):
            return cv2.transform(ring, matrix[:2])
        return cv2.perspectiveTransform(ring, matrix)

    def _grid_xy(self, shape: tuple) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) pixel coordinates of a frame of `shape` (H, W), float32, cached."""
        grids = self._grids.get(tuple(shape))
        if grids is None:
            ys, xs = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
            grids = self._grids[tuple(shape)] = (xs, ys)
        return grids

    def _half_grid(self, shape: tuple) -> np.ndarray:
        """Where each pixel of a frame of `shape` (H, W) lies in the frame halved (pyrDown), as `_grid`, cached."""
        key = ("half",) + tuple(shape)
        grid = self._grids.get(key)
        if grid is None:
            grid = self._grids[key] = self._grid(shape) * np.float32(0.5) - np.float32(0.25)
        return grid

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
        start = self._predicted_start(t_now, t_ref)
        t0 = time.thread_time()
        backward, mask, reliable = self.flow_and_mask(now_small, ref_small, start)
        t1 = time.thread_time()
        if reliable < self.min_reliable:
            self._velocity = None
            return self._held(ir, view), Compensation(False, "motion unreliable (scene cut?)", reliable, start=start)
        flow = self.held_where_unreliable(backward, mask, reliable)
        size = (ir.shape[1], ir.shape[0]) if view is None else tuple(view[1])
        plan = self.plan(flow, scale, size, mask if reliable < 1.0 else None)
        # the rig's motion (flow px per second of span) for the next frame's start: the global motion at the centre
        mean = plan.centre or cv2.mean(backward, mask if reliable < 1.0 else None)
        self._velocity = (mean[0] / span, mean[1] / span, t_now)
        t2 = time.thread_time()
        moved = self.warp(ir, flow, scale, view=view, plan=plan)
        cpu = {"flow": t1 - t0, "fit": t2 - t1, "warp": time.thread_time() - t2}
        return moved, Compensation(True, "", reliable, plan.dense_share, start, cpu)

    def _predicted_start(self, t_now: float, t_ref: float) -> Optional[tuple[float, float]]:
        """The dominant motion now -> ref predicted from the last frame's mean flow (per second of span), when it
        is recent and small enough for DIS to follow from there (then phase correlation, 0.2 ms, is skipped), else
        None. A wrong prediction (a jolt) fails the forward-backward check: that frame keeps the held IR, and the
        next one measures again."""
        if self._velocity is None:
            return None
        vx, vy, t_seen = self._velocity
        if not 0.0 < t_now - t_seen <= TRACK_MAX_AGE_S:
            return None
        span = t_now - t_ref
        sx, sy = vx * span, vy * span
        if max(abs(sx), abs(sy)) > TRACK_MAX_PX * self.flow_width / FLOW_WIDTH:
            return None
        return (0.0, 0.0) if max(abs(sx), abs(sy)) < 0.5 else (float(sx), float(sy))

    @staticmethod
    def _held(ir: np.ndarray, view: Optional[tuple]) -> np.ndarray:
        """The IR frame as held: itself, or registered into the view when it came raw."""
        return ir if view is None else warp_into_view(ir, view)


__all__ = ["MODES", "FLOW_WIDTH", "VisHistory", "IrMotionCompensator", "Compensation", "WarpPlan",
           "is_affine", "resolve_mode"]
