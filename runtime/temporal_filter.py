"""A light, motion-compensated temporal filter on the fused luminance (`--temporal-filter S`, off by default).

A frame-by-frame fusion picks, per pixel and band, what is salient in either camera. Where the two cameras' details
are close in strength the choice can go one way in one frame and the other way in the next: the fused video
shimmers a little more than either source (measured with benchmarks.temporal's flow-warped difference: the teacher
`pyramid-sharp` itself 1.15x the IR clip's figure on the bundled 480p rig, `laplacian` 1.65x; docs/runtime.md).

The filter is a recursive (IIR) blend along the motion measured on the VIS frames:

    P    = the previous output, warped to this frame with DIS flow VIS(t) -> VIS(t-1) (runtime.motion's estimator:
           phase correlation + DIS at FLOW_WIDTH px, forward-backward checked)
    d    = |Y - P|                                        (Y: this frame's fused luminance, 0..1)
    w    = S * reliable(x) * max(0, 1 - d / threshold)    (reliable: the flow passed its forward-backward check)
    out  = Y + w * (P - Y)

so a pixel that changed by less than `threshold` (flicker, noise) is pulled towards where it was, and anything
that really changed (a warm body walking in, a light switched on, an occlusion the flow missed) passes at once:
its difference is above the threshold, w = 0. Pixels brought from outside the frame, and every pixel after a scene
cut (most pixels fail the flow check), a time gap (dropped frames) or a passthrough frame, start afresh. Still
images are never touched; the model is unchanged.
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from runtime.errors import FusionError
from runtime.motion import IrMotionCompensator

DEFAULT_STRENGTH = 0.6          # `--temporal-filter on`: the weakest that meets issue 25's bar on both sample rigs
THRESHOLD = 0.06                # luminance change (0..1) at and beyond which a pixel is not filtered at all
MAX_GAP_S = 0.2                 # a longer gap between two outputs (dropped frames, a stall) restarts the filter
OUTSIDE = -4.0                  # value warped in from outside the frame: its difference exceeds any threshold


def parse_strength(value) -> float:
    """'off' / 'on' / a number in [0, 1) -> the blend strength (0: off)."""
    text = str(value).strip().lower()
    if text in ("off", "none", "false", "no", ""):
        return 0.0
    if text in ("on", "true", "yes"):
        return DEFAULT_STRENGTH
    try:
        strength = float(text)
    except ValueError:
        raise FusionError(f"--temporal-filter must be off, on or a strength in [0, 1), got '{value}'") from None
    if not 0.0 <= strength < 1.0:
        raise FusionError(f"--temporal-filter strength must be in [0, 1) (0: off, {DEFAULT_STRENGTH:g}: on), "
                          f"got {strength:g}")
    return strength


class TemporalFilter:
    """Filters a sequence of fused luminance frames (see the module docstring). Not thread-safe: the output stage
    calls it once per frame, in order."""

    def __init__(self, strength: float = DEFAULT_STRENGTH, threshold: float = THRESHOLD,
                 max_gap_s: float = MAX_GAP_S):
        if not 0.0 < strength < 1.0:
            raise FusionError(f"temporal filter strength must be in (0, 1), got {strength:g}")
        if threshold <= 0:
            raise FusionError(f"temporal filter threshold must be positive, got {threshold:g}")
        self.strength, self.threshold, self.max_gap_s = float(strength), float(threshold), float(max_gap_s)
        self.motion = IrMotionCompensator()      # its own DIS objects: they keep state between calls
        self.small_gray = self.motion.small_gray
        self.reset()

    def reset(self) -> None:
        """Forget the previous frame (the next one passes unfiltered)."""
        self._previous: Optional[np.ndarray] = None
        self._previous_small: Optional[np.ndarray] = None
        self._previous_t: Optional[float] = None

    def apply(self, y: np.ndarray, small: np.ndarray, t: float) -> tuple[np.ndarray, str]:
        """(the filtered luminance, what happened: "filtered" or why not). `y`: float32 (H, W) in [0, 1]; `small`:
        the VIS frame as `small_gray` made it; `t`: the VIS frame's capture time in seconds."""
        y = np.asarray(y, dtype=np.float32)
        previous, previous_small, previous_t = self._previous, self._previous_small, self._previous_t
        self._previous_small, self._previous_t = small, t
        if previous is None or previous.shape != y.shape or previous_small.shape != small.shape:
            self._previous = y
            return y, "first frame"
        if not 0.0 < t - previous_t <= self.max_gap_s:
            self._previous = y
            return y, "time gap"
        flow, reliable, share = self.motion.flow_and_mask(small, previous_small)
        if share < self.motion.min_reliable:
            self._previous = y
            return y, "scene cut"
        # Bicubic: a recursive filter warps its own output again every frame, and bilinear taps soften it a little each
        # time (SF -2.7% against -0.9% at 480p, same steadiness; docs/runtime.md "Steadier video").
        predicted = self.motion.warp(previous, flow, 1.0, outside=OUTSIDE, interpolation=cv2.INTER_CUBIC)
        height, width = y.shape
        # The weight: strength where the flow is reliable (made at the flow's size, then resized: one full-size
        # pass), tapering to 0 as the change reaches the threshold.
        weight = cv2.resize(cv2.multiply(reliable, 1.0, dtype=cv2.CV_32F, scale=self.strength / 255.0),
                            (width, height), interpolation=cv2.INTER_LINEAR)
        taper = cv2.absdiff(y, predicted)
        cv2.max(cv2.subtract(1.0, cv2.multiply(taper, 1.0 / self.threshold)), 0.0, dst=taper)
        weight = cv2.multiply(weight, taper)
        out = cv2.add(y, cv2.multiply(weight, cv2.subtract(predicted, y)))
        np.clip(out, 0.0, 1.0, out=out)          # bicubic overshoot at a dark or bright edge stays in range
        self._previous = out
        return out, "filtered"


__all__ = ["TemporalFilter", "parse_strength", "DEFAULT_STRENGTH", "THRESHOLD"]
