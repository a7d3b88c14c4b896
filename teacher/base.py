"""The interface every fusion teacher implements: IR + visible luminance -> fused luminance.

Two ways in, one behaviour:
- `teacher.fuse(ir, vis_y)`: numpy, one pair, float32 (H, W) in [0, 1] each -> fused float32 (H, W) in [0, 1].
- `teacher.fuse_batch(ir, vis_y)`: torch, (N, 1, H, W) float in [0, 1] on the teacher's device -> (N, 1, H, W).

Colour is not the teacher's business: the caller splits the visible frame into Y and CbCr (runtime.color) and
puts the visible CbCr back on the fused Y when a colour image is wanted.

Contract for implementers: set `name`, implement `fuse_batch` (torch; the numpy path wraps it), keep heavy imports
(torch, diffusers) inside methods so `fusion teacher list` stays light, and report what produced an output in
`settings()` (it goes into the manifest beside TEACHER_FUSED/).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from runtime.errors import FusionError


def check_pair_arrays(ir: np.ndarray, vis_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate one (ir, vis_y) pair of gray float images and return them as float32."""
    ir = np.asarray(ir)
    vis_y = np.asarray(vis_y)
    if ir.ndim != 2 or vis_y.ndim != 2:
        raise FusionError(f"a fusion teacher takes two gray (H, W) images; got IR {ir.shape} and VIS {vis_y.shape} "
                          f"(pass the visible luminance, e.g. runtime.color.luminance(vis))")
    if ir.shape != vis_y.shape:
        raise FusionError(f"IR {ir.shape[1]}x{ir.shape[0]} and VIS {vis_y.shape[1]}x{vis_y.shape[0]} differ in size; "
                          f"register and crop the pair to one size first")
    if min(ir.shape) < 2:
        raise FusionError(f"image of {ir.shape[1]}x{ir.shape[0]} pixels is too small to fuse")
    return ir.astype(np.float32, copy=False), vis_y.astype(np.float32, copy=False)


class FusionTeacher(ABC):
    """A fusion teacher. Subclasses set `name` and implement `fuse_batch`."""

    name: str = ""

    def __init__(self, device: str = "cpu"):
        self.device = device

    # ------------------------------------------------------------------------------------------- the two entry points
    def fuse(self, ir: np.ndarray, vis_y: np.ndarray) -> np.ndarray:
        """ir, vis_y: float (H, W) in [0, 1] -> fused float32 (H, W) in [0, 1]."""
        import torch
        ir, vis_y = check_pair_arrays(ir, vis_y)
        with torch.no_grad():
            fused = self.fuse_batch(torch.from_numpy(ir)[None, None].to(self.device),
                                    torch.from_numpy(vis_y)[None, None].to(self.device))
        return fused[0, 0].clamp(0, 1).float().cpu().numpy()

    @abstractmethod
    def fuse_batch(self, ir, vis_y):
        """ir, vis_y: torch (N, 1, H, W) float in [0, 1] -> fused (N, 1, H, W) in [0, 1]."""

    # ------------------------------------------------------------------------------------------------------ metadata
    def settings(self) -> dict[str, Any]:
        """What produced the outputs (recorded in the manifest): teacher name and its parameters."""
        return {"teacher": self.name}

    @classmethod
    def add_arguments(cls, parser) -> None:
        """Teacher-specific options for `fusion teacher fuse` (shared namespace: same flag, same meaning)."""

    @classmethod
    def from_args(cls, args) -> "FusionTeacher":
        """Build from parsed `fusion teacher fuse` arguments."""
        return cls(device=getattr(args, "device", "cpu"))
