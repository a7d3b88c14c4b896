"""Temporal stability of a video (VF-Bench style): how much a frame differs from the previous one once the motion of
the scene, measured on the VIS frames, is taken out.

    python -m benchmarks.temporal --video fused.mp4 --vis vis.mp4 --also ir.mp4 --also ir_truth.mp4
    python -m benchmarks.temporal --video fused.mp4 --vis vis.mp4 --homography h.json --also ir.mp4   # 720p rigs

For each pair of consecutive VIS frames (k-1, k):

    B = DIS optical flow (preset MEDIUM) VIS(k) -> VIS(k-1), on BT.601 luma, at the VIS size or at most
        FLOW_MAX_WIDTH px wide (aspect kept); F = the flow VIS(k-1) -> VIS(k)
    valid(x) = |B(x) + F(x + B(x))| < FB_TOLERANCE_PX (flow pixels)   and   x + B(x) inside the frame
    d_k = mean over valid x of |Y_k(x) - Y_{k-1}(x + B(x))|       (Y: the video's luma at the VIS size, 0..255;
                                                                  the previous frame warped with cv2.remap, bilinear)

and the figure is the mean of d_k over the pairs. A pair where fewer than MIN_VALID of the pixels pass is a scene cut
(the content changed, no motion explains it) and is skipped. Lower is steadier: a video whose content follows the VIS
motion scores near the VIS clip's own figure (interpolation and flow error); one that lags (a held 9 fps IR layer
that jumps every third frame) scores far higher.

The forward-backward check (Sundaram et al. 2010, as used by video-fusion temporal metrics) drops occlusions and
pixels whose flow is inconsistent; the fixed 1 px tolerance (rather than one growing with the motion) keeps only
pixels whose motion is known to about a pixel, which is what the warp needs to compare like with like.

The flow depends only on the VIS frames: `flows = vis_flows(vis_frames)` once, then `warped_difference(frames,
flows)` for each video (fused, VIS, IR...). Both take any iterable of frames (a generator reading a video is fine:
only two frames are held at a time); the flows are kept as float16 at the flow resolution (<= 0.03 px of rounding
for motions under 64 px).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

import cv2
import numpy as np

FLOW_MAX_WIDTH = 640        # flow is measured at the VIS width, or this when the VIS frames are wider
FB_TOLERANCE_PX = 1.0       # forward-backward disagreement (flow pixels) beyond which a pixel is occluded/unreliable
MIN_VALID = 0.5             # below this share of valid pixels a pair is a scene cut and is skipped
DIS_PRESET = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM


# ------------------------------------------------------------------------------------------------------ pixels
def luma(frame: np.ndarray, bgr: bool = False) -> np.ndarray:
    """BT.601 luma as float32 (0..255 for uint8 frames); gray frames pass through. Float, so that two frames' lumas
    are not both rounded before they are compared."""
    image = np.asarray(frame)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return image.astype(np.float32, copy=False)
    code = cv2.COLOR_BGR2GRAY if bgr else cv2.COLOR_RGB2GRAY     # OpenCV's weights are BT.601's
    return cv2.cvtColor(image[:, :, :3].astype(np.float32, copy=False), code)


def flow_size(vis_size: tuple[int, int], max_width: int = FLOW_MAX_WIDTH) -> tuple[int, int]:
    """(W, H) at which the flow of VIS frames of `vis_size` (W, H) is measured."""
    width, height = vis_size
    if width <= max_width:
        return width, height
    return max_width, max(8, int(round(height * max_width / width)))


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (image.shape[1], image.shape[0]) == tuple(size):
        return image
    shrinking = image.shape[1] > size[0]
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def _grid(width: int, height: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.dstack([xs, ys])


# ------------------------------------------------------------------------------------------------------- flows
@dataclass
class PairFlow:
    """The motion between VIS frames k-1 and k (`index` = k)."""

    index: int
    valid_share: float                      # share of pixels that pass the forward-backward and inside checks
    flow: Optional[np.ndarray] = None       # float16 (h, w, 2) at the flow size, k -> k-1; None for a skipped pair
    valid: Optional[np.ndarray] = None      # uint8 (h, w), 1 where valid

    @property
    def used(self) -> bool:
        return self.flow is not None


@dataclass
class VisFlows:
    """The flows of a VIS sequence, computed once and applied to any number of videos of the same length."""

    vis_size: tuple[int, int]               # (W, H) every measured video is brought to
    flow_size: tuple[int, int]
    frames: int
    pairs: list[PairFlow] = field(default_factory=list)

    @property
    def pairs_used(self) -> int:
        return sum(p.used for p in self.pairs)

    def head(self, count: int) -> "VisFlows":
        """The flows of the first `count` frames (to measure a video that ends early on the same frames)."""
        count = max(1, min(int(count), self.frames))
        return VisFlows(self.vis_size, self.flow_size, count, self.pairs[:count - 1])


def vis_flows(vis_frames: Iterable[np.ndarray], bgr: bool = False, max_width: int = FLOW_MAX_WIDTH,
              fb_tolerance: float = FB_TOLERANCE_PX, min_valid: float = MIN_VALID) -> VisFlows:
    """DIS flow (MEDIUM) with the forward-backward check between each pair of consecutive VIS frames."""
    dis = cv2.DISOpticalFlow_create(DIS_PRESET)
    flows: Optional[VisFlows] = None
    previous: Optional[np.ndarray] = None
    grid: Optional[np.ndarray] = None
    for k, frame in enumerate(vis_frames):
        if flows is None:
            vis_size = (frame.shape[1], frame.shape[0])
            flows = VisFlows(vis_size, flow_size(vis_size, max_width), 0)
            grid = _grid(*flows.flow_size)
        elif (frame.shape[1], frame.shape[0]) != flows.vis_size:
            raise ValueError(f"VIS frame {k} is {frame.shape[1]}x{frame.shape[0]}, the first one "
                             f"{flows.vis_size[0]}x{flows.vis_size[1]}")
        gray = _resize(np.clip(luma(frame, bgr) + 0.5, 0, 255).astype(np.uint8), flows.flow_size)
        if previous is not None:
            flows.pairs.append(_pair_flow(dis, k, gray, previous, grid, fb_tolerance, min_valid))
        previous = gray
        flows.frames = k + 1
    if flows is None:
        raise ValueError("no VIS frames")
    return flows


def _pair_flow(dis, index: int, current: np.ndarray, previous: np.ndarray, grid: np.ndarray, fb_tolerance: float,
               min_valid: float) -> PairFlow:
    backward = dis.calc(current, previous, None)          # current(x) ~ previous(x + backward(x))
    forward = dis.calc(previous, current, None)
    landed = grid + backward
    round_trip = backward + cv2.remap(forward, landed, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    height, width = current.shape[:2]
    inside = ((landed[..., 0] >= 0) & (landed[..., 0] <= width - 1) &
              (landed[..., 1] >= 0) & (landed[..., 1] <= height - 1))
    valid = (np.hypot(round_trip[..., 0], round_trip[..., 1]) < fb_tolerance) & inside
    share = float(valid.mean())
    if share < min_valid:
        return PairFlow(index, share)
    return PairFlow(index, share, backward.astype(np.float16), valid.astype(np.uint8))


# ---------------------------------------------------------------------------------------------------- measure
def to_vis_view(frame: np.ndarray, vis_size: tuple[int, int], homography: Optional[np.ndarray] = None) -> np.ndarray:
    """A frame of another camera brought to the VIS frame: warped by `homography` (its pixels -> VIS pixels) when
    given, else resized (same view, other resolution: the 320x240 IR beside the 640x480 VIS)."""
    if homography is not None and (frame.shape[1], frame.shape[0]) != tuple(vis_size):
        return cv2.warpPerspective(frame, homography, tuple(vis_size), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REPLICATE)
    return _resize(frame, tuple(vis_size))


def warped_difference(frames: Iterable[np.ndarray], flows: Union[VisFlows, Iterable[np.ndarray]], bgr: bool = False,
                      homography: Optional[np.ndarray] = None) -> dict:
    """The mean absolute luma difference between each frame and the previous one warped by the VIS motion.

    `flows`: a `vis_flows(...)` result, or the VIS frames themselves (the flow is then computed here, with the same
    colour order `bgr`). Frames of another size are brought to the VIS size (`to_vis_view`). Returns mean (None when
    no pair is usable), per_pair (one value per consecutive pair, None where skipped), pairs, pairs_used,
    pairs_skipped, frames."""
    if not isinstance(flows, VisFlows):
        flows = vis_flows(flows, bgr)
    width, height = flows.vis_size
    small_w, small_h = flows.flow_size
    factors = np.array([width / small_w, height / small_h], dtype=np.float32)
    grid = _grid(width, height)
    per_pair: list[Optional[float]] = []
    previous: Optional[np.ndarray] = None
    count = 0
    for k, frame in enumerate(frames):
        if k >= flows.frames:
            raise ValueError(f"more frames than the {flows.frames} VIS frames the flow was measured on")
        current = luma(to_vis_view(np.asarray(frame), flows.vis_size, homography), bgr)
        if previous is not None:
            per_pair.append(_pair_difference(flows.pairs[k - 1], previous, current, grid, factors))
        previous = current
        count = k + 1
    if count != flows.frames:
        raise ValueError(f"{count} frames against {flows.frames} VIS frames: the sequences must be the same length")
    used = [d for d in per_pair if d is not None]
    return {"mean": float(np.mean(used)) if used else None, "per_pair": per_pair, "pairs": len(per_pair),
            "pairs_used": len(used), "pairs_skipped": len(per_pair) - len(used), "frames": count}


def _pair_difference(pair: PairFlow, previous: np.ndarray, current: np.ndarray, grid: np.ndarray,
                     factors: np.ndarray) -> Optional[float]:
    if not pair.used:
        return None
    height, width = current.shape[:2]
    flow = pair.flow.astype(np.float32)
    if flow.shape[:2] != (height, width):
        flow = cv2.resize(flow * factors, (width, height), interpolation=cv2.INTER_LINEAR)
    maps = grid + flow
    valid = pair.valid if pair.valid.shape == (height, width) else cv2.resize(pair.valid, (width, height),
                                                                              interpolation=cv2.INTER_NEAREST)
    valid = (valid > 0) & (maps[..., 0] >= 0) & (maps[..., 0] <= width - 1) & (maps[..., 1] >= 0) & \
        (maps[..., 1] <= height - 1)
    if not valid.any():
        return None
    warped = cv2.remap(previous, maps, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return float(np.abs(current - warped)[valid].mean())


# -------------------------------------------------------------------------------------------------------- CLI
def read_video(path: str | Path) -> Iterator[np.ndarray]:
    """The frames of a video file (BGR uint8), one at a time."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise SystemExit(f"cannot open video {path}")
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield frame
    finally:
        capture.release()


def load_matrix(path: Optional[str], ir_size: tuple[int, int], vis_size: tuple[int, int]) -> Optional[np.ndarray]:
    """The IR->VIS homography of `path` for frames of these sizes (rescaled when it was made for others)."""
    if not path:
        return None
    from runtime.registration import load_homography, rescale_homography
    record = load_homography(path)
    matrix = record.homography
    if record.ir_size and record.vis_size and (tuple(record.ir_size), tuple(record.vis_size)) != (ir_size, vis_size):
        matrix = rescale_homography(matrix, record.ir_size, record.vis_size, ir_size, vis_size)
    return matrix


def video_info(path: str | Path) -> tuple[tuple[int, int], float]:
    """((W, H), fps) of a video file."""
    capture = cv2.VideoCapture(str(path))
    try:
        size = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        return size, float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    finally:
        capture.release()


def held_at(frames: Iterable[np.ndarray], fps: float, vis_fps: float, count: int) -> Iterator[np.ndarray]:
    """A slower (or faster) camera's frames at the VIS frame times: at VIS frame k (t = k / vis_fps) the latest frame
    taken at or before t, as a runtime pairing each VIS frame with the latest IR frame shows it. Stops at `count`
    VIS frames or when the clip ends."""
    iterator = iter(frames)
    index, frame = -1, None
    for k in range(count):
        wanted = int(np.floor(k * fps / vis_fps + 1e-9))
        while index < wanted:
            try:
                frame = next(iterator)
            except StopIteration:
                return
            index += 1
        yield frame


def format_table(rows: Sequence[tuple[str, dict]]) -> str:
    name_w = max([len("video")] + [len(name) for name, _ in rows])
    lines = [f"{'video':<{name_w}}  {'frames':>6}  {'pairs used':>10}  {'skipped':>7}  {'warped diff':>11}"]
    for name, result in rows:
        mean = "n/a" if result["mean"] is None else f"{result['mean']:.3f}"
        lines.append(f"{name:<{name_w}}  {result['frames']:>6}  {result['pairs_used']:>10}  "
                     f"{result['pairs_skipped']:>7}  {mean:>11}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", required=True, help="the video to measure (a fused output)")
    parser.add_argument("--vis", required=True, help="the VIS clip whose motion drives the warp (same frame count)")
    parser.add_argument("--also", action="append", default=[],
                        help="more videos to measure (repeatable); one at another frame rate (a 9 fps IR clip) is "
                             "measured as shown at the VIS frame times: each VIS frame with the latest frame")
    parser.add_argument("--homography", default=None,
                        help="IR->VIS homography file: videos of another size than the VIS are warped into the VIS "
                             "view with it (default: resized)")
    parser.add_argument("--max-width", type=int, default=FLOW_MAX_WIDTH, help="widest flow resolution (px)")
    args = parser.parse_args(argv)
    flows = vis_flows(read_video(args.vis), bgr=True, max_width=args.max_width)
    _, vis_fps = video_info(args.vis)
    rows = []
    for path in [args.video, args.vis, *args.also]:
        size, fps = video_info(path)
        matrix = load_matrix(args.homography, size, flows.vis_size) if size != flows.vis_size else None
        frames = read_video(path)
        if fps and vis_fps and abs(fps - vis_fps) > 0.01 * vis_fps:
            frames = held_at(frames, fps, vis_fps, flows.frames)      # a 9 fps IR clip: each frame held
        rows.append((f"{path} ({fps:g} fps)", warped_difference(frames, flows, bgr=True, homography=matrix)))
    print(f"flow: DIS medium at {flows.flow_size[0]}x{flows.flow_size[1]}, forward-backward < {FB_TOLERANCE_PX:g} px, "
          f"pairs with < {MIN_VALID:.0%} valid pixels skipped ({flows.frames - 1 - flows.pairs_used} of "
          f"{flows.frames - 1})")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
