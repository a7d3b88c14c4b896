"""Build the bundled demo clips from real RoadScene pairs: runtime/assets/samples/{ir,vis}.mp4.

    python -m runtime.assets.make_samples [--data ../shared/data/roadscene] [--out runtime/assets/samples]

A virtual camera pans and zooms smoothly over a few aligned pairs of the *training* split (never test.txt), a few
seconds per scene, with a cut between scenes. The VIS clip is 640x480 at 30 fps; the IR clip is 320x240 at 9 fps, like
a small thermal core beside an RGB camera, so the runtime has to pair frames of different rates and sizes. Both
cameras follow one trajectory (the RoadScene pairs are pixel-aligned), each sampled at its own frame times.
Deterministic: same pairs, same trajectory, same files.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import cv2
import numpy as np

from runtime.errors import FusionError
from runtime.imageio import atomic_path, read_raw, read_names, write_json

SCENES = ("FLIR_00060", "FLIR_05095", "FLIR_00594", "FLIR_00233")   # train.txt pairs whose edges agree best
SECONDS_PER_SCENE = 2.5
VIS_SIZE, VIS_FPS = (640, 480), 30.0
IR_SIZE, IR_FPS = (320, 240), 9.0


def camera_window(t: float, scene: int, image_wh: tuple[int, int]) -> np.ndarray:
    """2x3 affine mapping output pixels (unit square scaled later) to source pixels at time t within a scene.

    The window keeps a 4:3 aspect, zooms between 1.0x and ~1.35x and drifts along a smooth curve that differs per
    scene, never leaving the image.
    """
    w, h = image_wh
    base_w = min(w, h * 4.0 / 3.0)
    phase = t / SECONDS_PER_SCENE
    zoom = 1.0 + 0.35 * (0.5 - 0.5 * math.cos(math.pi * phase * (1 + scene % 2)))
    win_w = base_w / zoom
    win_h = win_w * 3.0 / 4.0
    free_x, free_y = w - win_w, h - win_h
    cx = win_w / 2 + free_x * (0.5 + 0.45 * math.sin(2 * math.pi * (0.35 * phase + 0.17 * scene)))
    cy = win_h / 2 + free_y * (0.5 + 0.45 * math.sin(2 * math.pi * (0.22 * phase + 0.31 * scene) + 1.0))
    return np.array([[win_w, 0.0, cx - win_w / 2], [0.0, win_h, cy - win_h / 2]], dtype=np.float64)


def render(image: np.ndarray, window: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The window of `image` resampled to `size` (W, H)."""
    out_w, out_h = size
    to_unit = np.array([[1.0 / out_w, 0, 0], [0, 1.0 / out_h, 0], [0, 0, 1]])
    matrix = window @ to_unit   # output pixel -> source pixel
    return cv2.warpAffine(image, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT)


def write_clip(path: Path, frames, fps: float, size: tuple[int, int]) -> int:
    count = 0
    with atomic_path(path) as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        if not writer.isOpened():
            raise FusionError(f"OpenCV cannot write mp4 video to {path}")
        for frame in frames:
            writer.write(frame)
            count += 1
        writer.release()
    return count


def make_samples(data: Path, out: Path) -> dict:
    train = set(read_names(data / "train.txt"))
    missing = [s for s in SCENES if s not in train]
    if missing:
        raise FusionError(f"sample scenes {missing} are not in {data / 'train.txt'}; samples use training pairs only")
    pairs = []
    for stem in SCENES:
        ir = read_raw(data / "ir" / f"{stem}.jpg")
        if ir.ndim == 3:
            ir = cv2.cvtColor(ir, cv2.COLOR_RGB2GRAY)
        vis = cv2.cvtColor(read_raw(data / "vi" / f"{stem}.jpg"), cv2.COLOR_RGB2BGR)
        pairs.append((ir, vis))
    duration = SECONDS_PER_SCENE * len(SCENES)

    def frames(fps: float, size: tuple[int, int], which: int):
        for k in range(int(round(duration * fps))):
            t = k / fps
            scene = min(int(t // SECONDS_PER_SCENE), len(SCENES) - 1)
            image = pairs[scene][which]
            window = camera_window(t - scene * SECONDS_PER_SCENE, scene, (image.shape[1], image.shape[0]))
            frame = render(image, window, size)
            yield cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR) if frame.ndim == 2 else frame

    out.mkdir(parents=True, exist_ok=True)
    n_vis = write_clip(out / "vis.mp4", frames(VIS_FPS, VIS_SIZE, 1), VIS_FPS, VIS_SIZE)
    n_ir = write_clip(out / "ir.mp4", frames(IR_FPS, IR_SIZE, 0), IR_FPS, IR_SIZE)
    info = {"scenes": list(SCENES), "split": "train", "seconds": duration,
            "vis": {"file": "vis.mp4", "size": list(VIS_SIZE), "fps": VIS_FPS, "frames": n_vis},
            "ir": {"file": "ir.mp4", "size": list(IR_SIZE), "fps": IR_FPS, "frames": n_ir},
            "made_by": "python -m runtime.assets.make_samples"}
    write_json(out / "samples.json", info)
    return info


def main(argv=None) -> int:
    repo = Path(__file__).resolve().parents[2]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=repo.parent / "shared" / "data" / "roadscene")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "samples")
    args = parser.parse_args(argv)
    info = make_samples(args.data, args.out)
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
