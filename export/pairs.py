"""Real IR/VIS pairs as model inputs, for parity checks, INT8 calibration and the INT8 report.

Every check in `export/` runs on real images (RoadScene by default), because a random tensor does not exercise the
ranges a quantised or fp16 graph meets in the field. Inputs are what the exported graph takes: `ir` (1, 1, H, W) and
`vis` (1, C, H, W), float32 in [0, 1], where C is 1 (VIS luminance, BT.601 full range) or 3 (RGB students).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from runtime.config import parse_hw
from runtime.errors import FusionError

REPO_ROOT = Path(__file__).resolve().parents[1]


def shown_path(path: str | os.PathLike) -> str:
    """A path as reports and model metadata record it: relative to the repository when inside it or beside it (like
    ../shared/data), so files shipped in the repository do not carry the build machine's absolute paths."""
    resolved = Path(os.path.abspath(path))  # not resolve(): ../shared may be a symlink, and is still "beside"
    if resolved == REPO_ROOT or REPO_ROOT in resolved.parents:
        return resolved.relative_to(REPO_ROOT).as_posix()
    beside = REPO_ROOT.parent
    if beside != Path(beside.anchor) and beside in resolved.parents:
        return "../" + resolved.relative_to(beside).as_posix()
    return str(resolved)


def default_data_dir() -> Path:
    """The dataset used for checks when --data is not given: $FUSION_DATA, else ../shared/data/roadscene."""
    env = os.environ.get("FUSION_DATA")
    if env:
        return Path(env)
    return REPO_ROOT.parent / "shared" / "data" / "roadscene"


def parse_imgsz(text: str | Sequence[int] | None) -> tuple[int, int] | None:
    """'480x640' (H x W), '640' (square) or (H, W) -> (H, W); None stays None."""
    return parse_hw(text, minimum=8)


def resize_cover_crop(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Scale `img` (H, W[, C]) so it covers `size` (H, W) while keeping its aspect, then centre-crop to `size`.

    Neither stretching nor padding: the network sees the statistics of real frames at the export size.
    """
    import cv2
    target_h, target_w = size
    h, w = img.shape[:2]
    scale = max(target_h / h, target_w / w)
    new_h, new_w = max(target_h, round(h * scale)), max(target_w, round(w * scale))
    if (new_h, new_w) != (h, w):
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        img = cv2.resize(img, (new_w, new_h), interpolation=interpolation)
    top, left = (new_h - target_h) // 2, (new_w - target_w) // 2
    return np.ascontiguousarray(img[top:top + target_h, left:left + target_w])


@dataclass
class ModelInput:
    """One real pair as the exported graph takes it."""

    name: str
    ir: np.ndarray   # (1, 1, H, W) float32 [0, 1]
    vis: np.ndarray  # (1, C, H, W) float32 [0, 1]

    @property
    def size(self) -> tuple[int, int]:
        return int(self.ir.shape[2]), int(self.ir.shape[3])

    def feeds(self) -> dict[str, np.ndarray]:
        return {"ir": self.ir, "vis": self.vis}


def spread(names: Sequence[str], count: int | None) -> list[str]:
    """`count` names spread evenly over the list (first and last included), deterministic; all when count is None
    or at least the list length. Spreading rather than taking the first N avoids a run of near-identical frames."""
    names = list(names)
    if count is None or count >= len(names):
        return names
    if count <= 0:
        return []
    if count == 1:
        return names[:1]
    picks = np.linspace(0, len(names) - 1, count).round().astype(int)
    return [names[i] for i in dict.fromkeys(picks.tolist())]


def split_file(data: Path, split: str) -> Path:
    path = Path(data) / f"{split}.txt"
    if not path.is_file():
        raise FusionError(f"{data} has no {split}.txt; pass the list of pair names explicitly")
    return path


def load_inputs(data: str | os.PathLike | None, names: str | os.PathLike | Sequence[str] | None,
                count: int | None, imgsz: tuple[int, int] | None, vis_channels: int = 1) -> list[ModelInput]:
    """Read `count` real pairs (spread over `names`, a split file or a list) as model inputs.

    imgsz (H, W): resize-and-centre-crop every pair to that size; None keeps each pair's native size.
    """
    from runtime.color import luminance
    from runtime.imageio import discover_pairs, read_names, read_pair

    data = Path(data) if data is not None else default_data_dir()
    if not data.is_dir():
        raise FusionError(f"the real pairs used for export checks are not at {data}; pass --data DIR "
                          f"(a folder with ir/ and vi/) or set FUSION_DATA")
    if isinstance(names, (str, os.PathLike)):
        wanted = read_names(names)
    elif names is None:
        wanted = read_names(split_file(data, "train"))
    else:
        wanted = [Path(n).stem for n in names]
    pairs = discover_pairs(data, names=spread(wanted, count))
    inputs = []
    for pair in pairs:
        ir, vis = read_pair(pair)
        if vis_channels == 1:
            vis = luminance(vis) if vis.ndim == 3 else vis
        elif vis.ndim == 2:
            vis = np.repeat(vis[..., None], 3, axis=2)
        if imgsz is not None:
            ir, vis = resize_cover_crop(ir, imgsz), resize_cover_crop(vis, imgsz)
        vis_chw = vis[None] if vis.ndim == 2 else vis.transpose(2, 0, 1)
        inputs.append(ModelInput(pair.name, np.ascontiguousarray(ir[None, None], dtype=np.float32),
                                 np.ascontiguousarray(vis_chw[None], dtype=np.float32)))
    return inputs


def stack_inputs(items: Sequence[ModelInput], batch: int) -> ModelInput:
    """The first `batch` inputs as one batched input (names joined with '+')."""
    items = list(items)[:batch]
    return ModelInput("+".join(i.name for i in items), np.ascontiguousarray(np.concatenate([i.ir for i in items])),
                      np.ascontiguousarray(np.concatenate([i.vis for i in items])))


def check_disjoint(calib_names: str | os.PathLike | Sequence[str], test_names: str | os.PathLike | Sequence[str]) \
        -> None:
    """Refuse to calibrate on test pairs (lists are split files or names)."""
    from runtime.imageio import read_names
    calib = set(read_names(calib_names)) if isinstance(calib_names, (str, Path)) else set(calib_names)
    test = set(read_names(test_names)) if isinstance(test_names, (str, Path)) else set(test_names)
    overlap = sorted(calib & test)
    if overlap:
        raise FusionError(f"{len(overlap)} calibration pair(s) are in the test split ({', '.join(overlap[:3])}); "
                          f"calibrate on training pairs only (--calib-names) so the INT8 report stays honest")

