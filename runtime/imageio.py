"""Reading and writing images and IR/VIS pairs: the one implementation every stage uses.

Conventions (the whole project keeps to them):
- IR images become float32 arrays in [0, 1] of shape (H, W). 8-bit IR is divided by 255; 16-bit (radiometric) IR goes
  through `agc_16bit`, a robust percentile stretch (optionally followed by CLAHE), because raw 14/16-bit counts use a
  few hundred levels of a 65536 range and a plain division would give a black frame.
- Visible images become float32 arrays in [0, 1], RGB channel order, (H, W, 3), or (H, W) when the file is gray.
- Pairs match by file stem; a dataset folder holds an IR folder and a visible folder (and optionally TEACHER_FUSED).
- Every write goes to a temporary name in the target folder and is renamed into place, so an interrupted job never
  leaves a truncated file under a final name.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import cv2
import numpy as np

from runtime.errors import FusionError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
IR_FOLDER_NAMES = ("ir", "IR", "Ir", "infrared", "Infrared", "thermal")
VIS_FOLDER_NAMES = ("vi", "vis", "VIS", "VI", "Vis", "visible", "Visible", "rgb", "RGB")
TEACHER_FOLDER_NAMES = ("TEACHER_FUSED",)


# ----------------------------------------------------------------------------------------------------------- reading
def looks_truncated(path: Path) -> bool:
    """True when a JPEG lacks its end-of-image marker or a PNG its IEND chunk (OpenCV decodes such files partially
    and only prints a warning, which would let a grey-padded image into a dataset)."""
    suffix = path.suffix.lower()
    if suffix not in (".jpg", ".jpeg", ".png"):
        return False
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 64))
        tail = fh.read()
    if suffix == ".png":
        return b"IEND" not in tail
    return b"\xff\xd9" not in tail


def decode_file(path: str | os.PathLike, flags: int) -> np.ndarray:
    """`cv2.imdecode(file bytes, flags)` (OpenCV channel order), or a FusionError for a missing, truncated or
    undecodable file. The one place that decides whether an image file is good to read."""
    path = Path(path)
    if not path.is_file():
        raise FusionError(f"image not found: {path}")
    if looks_truncated(path):
        raise FusionError(f"image is truncated or corrupt: {path} (re-export or remove it)")
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, flags) if data.size else None
    if img is None:
        raise FusionError(f"cannot decode image: {path} (not an image, or a format OpenCV cannot read)")
    return img


def read_raw(path: str | os.PathLike) -> np.ndarray:
    """Read an image as stored: uint8 or uint16, (H, W) or (H, W, 3) in RGB order (alpha dropped).

    Raises FusionError for a missing, unreadable or truncated file.
    """
    img = decode_file(path, cv2.IMREAD_UNCHANGED)
    if img.ndim == 3:
        if img.shape[2] == 4:
            img = img[:, :, :3]
        if img.shape[2] == 1:
            img = img[:, :, 0]
        else:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.dtype not in (np.uint8, np.uint16):
        raise FusionError(f"unsupported pixel type {img.dtype} in {path}: expected 8-bit or 16-bit images")
    return img


def agc_16bit(raw: np.ndarray, low_percentile: float = 1.0, high_percentile: float = 99.0,
              clahe: bool = False, clahe_clip: float = 2.0, clahe_tiles: int = 8) -> np.ndarray:
    """Automatic gain control for radiometric (14/16-bit) thermal frames: a robust percentile stretch to [0, 1].

    Counts below the `low_percentile` and above the `high_percentile` are clipped, so a few dead or saturated pixels
    cannot set the range. A flat frame maps to 0.5. With `clahe`, contrast-limited adaptive histogram equalisation
    follows on a 16-bit version of the stretched frame (it lifts local detail in scenes with one very hot object).
    Returns float32 (H, W).
    """
    frame = raw.astype(np.float32)
    lo, hi = np.percentile(frame, [low_percentile, high_percentile])
    if hi - lo < 1e-6:
        out = np.full(frame.shape, 0.5, dtype=np.float32)
    else:
        out = np.clip((frame - lo) / (hi - lo), 0.0, 1.0)
    if clahe:
        tool = cv2.createCLAHE(clipLimit=clahe_clip, tileGridSize=(clahe_tiles, clahe_tiles))
        out = tool.apply(np.round(out * 65535.0).astype(np.uint16)).astype(np.float32) / 65535.0
    return out.astype(np.float32)


def ir_to_float(raw: np.ndarray, clahe: bool = False) -> np.ndarray:
    """Any stored IR frame (8/16-bit, gray or 3-channel) to float32 (H, W) in [0, 1]."""
    if raw.ndim == 3:
        # False-colour or 3-channel-gray thermal exports: use their luminance.
        from runtime.color import luminance
        gray = luminance(raw.astype(np.float32))
        if raw.dtype == np.uint16:
            return agc_16bit(gray, clahe=clahe)
        return np.clip(gray / 255.0, 0.0, 1.0).astype(np.float32)
    if raw.dtype == np.uint16:
        return agc_16bit(raw, clahe=clahe)
    if raw.dtype == np.uint8:
        return raw.astype(np.float32) / 255.0
    if np.issubdtype(raw.dtype, np.floating):
        return np.clip(raw, 0.0, 1.0).astype(np.float32)
    raise FusionError(f"unsupported IR pixel type {raw.dtype}: expected 8-bit, 16-bit or float in [0, 1]")


def vis_to_float(raw: np.ndarray) -> np.ndarray:
    """A stored visible frame (8/16-bit, gray or RGB) to float32 in [0, 1], same layout."""
    if raw.dtype == np.uint8:
        return raw.astype(np.float32) / 255.0
    if raw.dtype == np.uint16:
        return raw.astype(np.float32) / 65535.0
    if np.issubdtype(raw.dtype, np.floating):
        return np.clip(raw, 0.0, 1.0).astype(np.float32)
    raise FusionError(f"unsupported visible pixel type {raw.dtype}: expected 8-bit, 16-bit or float in [0, 1]")


def read_ir(path: str | os.PathLike, clahe: bool = False) -> np.ndarray:
    """Read an IR image as float32 (H, W) in [0, 1] (16-bit goes through `agc_16bit`)."""
    return ir_to_float(read_raw(path), clahe=clahe)


def read_vis(path: str | os.PathLike) -> np.ndarray:
    """Read a visible image as float32 in [0, 1]: (H, W, 3) RGB, or (H, W) for a gray file."""
    return vis_to_float(read_raw(path))


# ------------------------------------------------------------------------------------------------------------- pairs
@dataclass(frozen=True)
class ImagePair:
    """One IR/VIS pair of files matched by stem, with the teacher target when the dataset has one."""

    name: str
    ir: Path
    vis: Path
    target: Path | None = None


def read_pair(pair: ImagePair, clahe: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Read a pair as (ir (H, W), vis (H, W[, 3])) float32 in [0, 1]; FusionError when the sizes differ."""
    ir = read_ir(pair.ir, clahe=clahe)
    vis = read_vis(pair.vis)
    if ir.shape[:2] != vis.shape[:2]:
        raise FusionError(
            f"pair '{pair.name}' is not aligned: IR {pair.ir} is {ir.shape[1]}x{ir.shape[0]} but VIS {pair.vis} is "
            f"{vis.shape[1]}x{vis.shape[0]} (register and crop them to the same size, see `fusion calibrate`)"
        )
    return ir, vis


def list_images(folder: Path) -> dict[str, Path]:
    """Image files of a folder keyed by stem (non-images ignored). FusionError on two files with one stem."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
            if path.stem in found:
                raise FusionError(f"two images share the name '{path.stem}' in {folder}: {found[path.stem].name} "
                                  f"and {path.name}; keep one")
            found[path.stem] = path
    return found


def read_names(names_file: str | os.PathLike) -> list[str]:
    """Stems listed in a split file (one file name or stem per line; blank lines and '#' comments ignored)."""
    path = Path(names_file)
    if not path.is_file():
        raise FusionError(f"names file not found: {path}")
    stems = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            stems.append(Path(line).stem)
    if not stems:
        raise FusionError(f"names file {path} lists no images")
    return stems


def _find_child(folder: Path, candidates: Sequence[str]) -> Path | None:
    for name in candidates:
        if (folder / name).is_dir():
            return folder / name
    return None


def dataset_folders(data: str | os.PathLike) -> tuple[Path, Path, Path | None]:
    """(ir_dir, vis_dir, teacher_dir or None) of a dataset folder; FusionError when IR or VIS is missing."""
    root = Path(data)
    if not root.is_dir():
        raise FusionError(f"dataset folder not found: {root}")
    ir_dir = _find_child(root, IR_FOLDER_NAMES)
    vis_dir = _find_child(root, VIS_FOLDER_NAMES)
    if ir_dir is None or vis_dir is None:
        missing = " and ".join(kind for kind, d in (("an IR folder (ir/)", ir_dir), ("a visible folder (vi/ or vis/)", vis_dir)) if d is None)
        raise FusionError(f"{root} has no {missing}; a dataset folder holds ir/ and vi/ (or pass --ir and --vis)")
    return ir_dir, vis_dir, _find_child(root, TEACHER_FOLDER_NAMES)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def discover_pairs(data: str | os.PathLike | None = None, ir_dir: str | os.PathLike | None = None,
                   vis_dir: str | os.PathLike | None = None, names: str | os.PathLike | Iterable[str] | None = None,
                   teacher_dir: str | os.PathLike | None = None, require_target: bool = False,
                   validate: bool = False, skip_bad: bool = False) -> list[ImagePair]:
    """Match IR and VIS files by stem, from a dataset folder (`data`) or two explicit folders.

    names: a split file path or an iterable of names/stems restricting (and ordering) the pairs.
    require_target: every pair must have a teacher target (TEACHER_FUSED/ or `teacher_dir`).
    validate: also decode every image and check that each pair has one size (slower; catches corrupt files).
    skip_bad: drop offending pairs with a warning instead of raising one FusionError that lists them all.
    """
    if data is not None:
        ir_path, vis_path, found_teacher = dataset_folders(data)
        teacher_dir = teacher_dir if teacher_dir is not None else found_teacher
    elif ir_dir is not None and vis_dir is not None:
        ir_path, vis_path = Path(ir_dir), Path(vis_dir)
        for label, folder in (("IR", ir_path), ("VIS", vis_path)):
            if not folder.is_dir():
                raise FusionError(f"{label} folder not found: {folder}")
    else:
        raise FusionError("give a dataset folder (--data DIR) or both --ir DIR and --vis DIR")
    ir_files, vis_files = list_images(ir_path), list_images(vis_path)
    target_files = list_images(Path(teacher_dir)) if teacher_dir is not None and Path(teacher_dir).is_dir() else {}
    if teacher_dir is not None and not Path(teacher_dir).is_dir() and require_target:
        raise FusionError(f"teacher target folder not found: {teacher_dir} (build it with `fusion teacher fuse`)")

    if names is None:
        wanted = sorted(set(ir_files) | set(vis_files))
    elif isinstance(names, (str, os.PathLike)):
        wanted = read_names(names)
    else:
        wanted = [Path(n).stem for n in names]

    problems: list[str] = []
    pairs: list[ImagePair] = []
    for stem in wanted:
        missing = [kind for kind, files in (("IR", ir_files), ("VIS", vis_files)) if stem not in files]
        if require_target and stem not in target_files:
            missing.append("teacher target")
        if missing:
            problems.append(f"{stem} (no {' or '.join(missing)})")
            continue
        pair = ImagePair(stem, ir_files[stem], vis_files[stem], target_files.get(stem))
        if validate:
            try:
                read_pair(pair)
                if pair.target is not None:
                    target = read_raw(pair.target)
                    if target.shape[:2] != read_raw(pair.ir).shape[:2]:
                        raise FusionError(f"teacher target {pair.target} has another size than its IR image")
            except FusionError as exc:
                problems.append(f"{stem} ({exc})")
                continue
        pairs.append(pair)

    if problems:
        listing = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        if not skip_bad:
            raise FusionError(f"{len(problems)} bad or unmatched pair(s) in {ir_path.parent}: {listing} "
                              f"(fix them, or pass --skip-bad to continue without them)")
        _warn(f"skipping {len(problems)} bad or unmatched pair(s): {listing}")
    if not pairs:
        raise FusionError(f"no IR/VIS pairs found (IR folder {ir_path}, VIS folder {vis_path})")
    return pairs


# ----------------------------------------------------------------------------------------------------------- writing
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same extension); rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes owner-only files; give the result the permissions a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def to_uint8(img: np.ndarray) -> np.ndarray:
    """float [0, 1] (clipped, rounded) or uint8 to uint8."""
    if img.dtype == np.uint8:
        return img
    return np.clip(np.round(np.asarray(img, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def draw_label(tile: np.ndarray, text: str, scale: float = 0.5, colour: tuple = (0, 255, 255)) -> np.ndarray:
    """`text` in the top-left corner of a 3-channel uint8 `tile` (in place), on a black box so it reads on any
    background. (A thick black outline drawn under thin text does not work: OpenCV advances thicker glyphs further,
    so the outline drifts right of the text along the label.)"""
    (text_w, text_h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(tile, (0, 0), (text_w + 8, text_h + 10), (0, 0, 0), -1)
    cv2.putText(tile, text, (4, text_h + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)
    return tile


def write_image(path: str | os.PathLike, img: np.ndarray) -> Path:
    """Write an image atomically. `img`: float in [0, 1] (stored 8-bit), uint8 or uint16; (H, W) or RGB (H, W, 3)."""
    path = Path(path)
    if img.dtype != np.uint16:
        img = to_uint8(img)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    try:
        ok, encoded = cv2.imencode(path.suffix or ".png", img)
    except cv2.error:
        ok = False
    if not ok:
        raise FusionError(f"cannot encode an image as '{path.suffix}' for {path}; use .png or .jpg")
    with atomic_path(path) as tmp:
        encoded.tofile(str(tmp))
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj) -> Path:
    """Write JSON atomically (indented, keys in insertion order)."""
    return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")
