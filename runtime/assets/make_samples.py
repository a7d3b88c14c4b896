"""Build demo clips from real training pairs: the bundled runtime/assets/samples/{ir,vis}.mp4 and larger rigs.

    python -m runtime.assets.make_samples                                      # the bundled 480p clips
    python -m runtime.assets.make_samples --preset 720p --out build/samples/720p
    python -m runtime.assets.make_samples --preset 1080p --out build/samples/1080p
    python -m runtime.assets.make_samples --preset 720p --out build/ir_motion/clips --truth   # + ir_truth.mp4

A virtual camera rig pans and zooms smoothly over a few aligned pairs of a *training* split (never a test or
validation list), a few seconds per scene, with a cut between scenes. Both cameras follow one trajectory (the pairs
are pixel-aligned), each sampled at its own frame times and over its own part of the rig's view:

  480p   RoadScene train.txt: VIS 640x480 at 30 fps, IR 320x240 at 9 fps, one 4:3 view (the bundled clips)
  vga    LLVIP-mini train.txt (night streets, 1280x1024): VIS 640x480 at 30 fps, IR 640x512 at 9 fps
  720p   LLVIP-mini train.txt (night streets, 1280x1024): VIS 1280x720 at 30 fps, IR 640x512 at 9 fps
  1080p  the same scenes: VIS 1920x1080 at 30 fps, IR 640x512 at 9 fps

In the vga, 720p and 1080p rigs (the three sizes of runtime.measure's table) the cameras have different shapes, as an
RGB camera beside a 640x512 thermal core does: the IR sees a 5:4 view, the VIS the 4:3 or 16:9 band across its middle.
`h.json` beside the clips is the exact IR->VIS homography
of that geometry (`fusion run --homography h.json`), so the warped IR covers the whole VIS frame. LLVIP's licence is
non-commercial research only: the vga/720p/1080p clips are made on demand and never shipped. Deterministic: same pairs,
same trajectory, same files.

`--truth` also writes `ir_truth.mp4`: the IR camera (same size, same part of the view, same trajectory) sampled at the
VIS frame times and rate, what a thermal camera as fast as the VIS one would have seen. It is the reference for IR
motion compensation (benchmarks/ir_motion.py): the 9 fps IR frame carried to each VIS time should look like it.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from runtime.errors import FusionError
from runtime.imageio import atomic_path, read_raw, read_names, write_json

SCENES = ("FLIR_00060", "FLIR_05095", "FLIR_00594", "FLIR_00233")   # train.txt pairs whose edges agree best
SECONDS_PER_SCENE = 2.5
VIS_SIZE, VIS_FPS = (640, 480), 30.0
IR_SIZE, IR_FPS = (320, 240), 9.0


@dataclass(frozen=True)
class Preset:
    """A rig: which training pairs, the rig's view aspect (num, den), and per camera its size, rate and the part of
    the view it sees as (x0, y0, x1, y1) in unit view coordinates."""

    dataset: str
    scenes: tuple
    aspect: tuple
    vis_size: tuple
    ir_size: tuple
    vis_rect: tuple = (0.0, 0.0, 1.0, 1.0)
    ir_rect: tuple = (0.0, 0.0, 1.0, 1.0)
    vis_fps: float = VIS_FPS
    ir_fps: float = IR_FPS

    def homography(self) -> np.ndarray:
        """IR pixel -> VIS pixel for this rig (a scale and a shift: both cameras share one centre of projection)."""
        def to_unit(rect, size):
            x0, y0, x1, y1 = rect
            return np.array([[(x1 - x0) / size[0], 0, x0], [0, (y1 - y0) / size[1], y0], [0, 0, 1]])
        matrix = np.linalg.inv(to_unit(self.vis_rect, self.vis_size)) @ to_unit(self.ir_rect, self.ir_size)
        return matrix / matrix[2, 2]


# LLVIP training pairs with the most texture in the visible frame (training split only).
LLVIP_SCENES = ("010002", "010009", "010013", "010024")
# A 5:4 view (the IR core's); the 16:9 VIS band is its middle 0.5625 / 0.8 of the height.
_BAND = (1.0 - 0.5625 / 0.8) / 2.0
# The 4:3 VIS band of the same view (a 640x480 camera beside the 640x512 core): its middle 0.75 / 0.8 of the height.
_BAND_4_3 = (1.0 - 0.75 / 0.8) / 2.0
PRESETS = {
    "480p": Preset("roadscene", SCENES, (4, 3), VIS_SIZE, IR_SIZE),
    "vga": Preset("llvip_mini", LLVIP_SCENES, (5, 4), (640, 480), (640, 512),
                  vis_rect=(0.0, _BAND_4_3, 1.0, 1.0 - _BAND_4_3)),
    "720p": Preset("llvip_mini", LLVIP_SCENES, (5, 4), (1280, 720), (640, 512), vis_rect=(0.0, _BAND, 1.0, 1.0 - _BAND)),
    "1080p": Preset("llvip_mini", LLVIP_SCENES, (5, 4), (1920, 1080), (640, 512),
                    vis_rect=(0.0, _BAND, 1.0, 1.0 - _BAND)),
}


def camera_window(t: float, scene: int, image_wh: tuple[int, int], aspect: tuple = (4, 3)) -> np.ndarray:
    """2x3 affine mapping the rig's unit view to source pixels at time t within a scene.

    The window keeps the rig's aspect, zooms between 1.0x and ~1.35x and drifts along a smooth curve that differs
    per scene, never leaving the image.
    """
    w, h = image_wh
    num, den = float(aspect[0]), float(aspect[1])
    base_w = min(w, h * num / den)
    phase = t / SECONDS_PER_SCENE
    zoom = 1.0 + 0.35 * (0.5 - 0.5 * math.cos(math.pi * phase * (1 + scene % 2)))
    win_w = base_w / zoom
    win_h = win_w * den / num
    free_x, free_y = w - win_w, h - win_h
    cx = win_w / 2 + free_x * (0.5 + 0.45 * math.sin(2 * math.pi * (0.35 * phase + 0.17 * scene)))
    cy = win_h / 2 + free_y * (0.5 + 0.45 * math.sin(2 * math.pi * (0.22 * phase + 0.31 * scene) + 1.0))
    return np.array([[win_w, 0.0, cx - win_w / 2], [0.0, win_h, cy - win_h / 2]], dtype=np.float64)


def render(image: np.ndarray, window: np.ndarray, size: tuple[int, int],
           rect: tuple = (0.0, 0.0, 1.0, 1.0)) -> np.ndarray:
    """The part `rect` of the window of `image`, resampled to `size` (W, H)."""
    out_w, out_h = size
    x0, y0, x1, y1 = rect
    to_unit = np.array([[(x1 - x0) / out_w, 0, x0], [0, (y1 - y0) / out_h, y0], [0, 0, 1]])
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


def read_scene(root: Path, stem: str) -> tuple[np.ndarray, np.ndarray]:
    """(IR gray, VIS BGR) of one training pair, whatever the file extension."""
    def find(folder: str) -> Path:
        matches = sorted((root / folder).glob(f"{stem}.*"))
        if not matches:
            raise FusionError(f"sample scene {stem} has no image in {root / folder}")
        return matches[0]
    ir = read_raw(find("ir"))
    if ir.ndim == 3:
        ir = cv2.cvtColor(ir, cv2.COLOR_RGB2GRAY)
    return ir, cv2.cvtColor(read_raw(find("vi")), cv2.COLOR_RGB2BGR)


def make_samples(data: Path, out: Path, preset: str = "480p", truth: bool = False) -> dict:
    """Render `preset`'s clips from the training pairs under `data` (the dataset folder itself, or the folder that
    holds it) into `out`; returns what samples.json records. `truth` adds ir_truth.mp4 (the IR camera at the VIS
    frame times), recorded under "ir_truth"; without it the files written are exactly those of earlier versions."""
    rig = PRESETS[preset]
    if not (data / "train.txt").is_file() and (data.parent / rig.dataset / "train.txt").is_file():
        data = data.parent / rig.dataset
    if not (data / "train.txt").is_file():
        raise FusionError(f"{data} holds no train.txt; give --data the {rig.dataset} folder")
    train = {Path(name).stem for name in read_names(data / "train.txt")}
    missing = [s for s in rig.scenes if s not in train]
    if missing:
        raise FusionError(f"sample scenes {missing} are not in {data / 'train.txt'}; samples use training pairs only")
    pairs = [read_scene(data, stem) for stem in rig.scenes]
    duration = SECONDS_PER_SCENE * len(rig.scenes)

    def frames(fps: float, size: tuple[int, int], which: int, rect: tuple):
        for k in range(int(round(duration * fps))):
            t = k / fps
            scene = min(int(t // SECONDS_PER_SCENE), len(rig.scenes) - 1)
            image = pairs[scene][which]
            window = camera_window(t - scene * SECONDS_PER_SCENE, scene, (image.shape[1], image.shape[0]),
                                   rig.aspect)
            frame = render(image, window, size, rect)
            yield cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR) if frame.ndim == 2 else frame

    out.mkdir(parents=True, exist_ok=True)
    n_vis = write_clip(out / "vis.mp4", frames(rig.vis_fps, rig.vis_size, 1, rig.vis_rect), rig.vis_fps, rig.vis_size)
    n_ir = write_clip(out / "ir.mp4", frames(rig.ir_fps, rig.ir_size, 0, rig.ir_rect), rig.ir_fps, rig.ir_size)
    info = {"scenes": list(rig.scenes), "split": "train", "seconds": duration,
            "vis": {"file": "vis.mp4", "size": list(rig.vis_size), "fps": rig.vis_fps, "frames": n_vis},
            "ir": {"file": "ir.mp4", "size": list(rig.ir_size), "fps": rig.ir_fps, "frames": n_ir},
            "made_by": "python -m runtime.assets.make_samples"}
    if truth:
        # The IR camera's own size and view, at the VIS camera's times: the frame a held 9 fps IR frame should
        # become once carried to a VIS frame's time.
        n_truth = write_clip(out / "ir_truth.mp4", frames(rig.vis_fps, rig.ir_size, 0, rig.ir_rect), rig.vis_fps,
                             rig.ir_size)
        info["ir_truth"] = {"file": "ir_truth.mp4", "size": list(rig.ir_size), "fps": rig.vis_fps,
                            "frames": n_truth}
    if preset != "480p":
        from runtime.registration import save_homography
        save_homography(out / "h.json", rig.homography(), rig.ir_size, rig.vis_size,
                        source=f"the {preset} sample rig's geometry (exact)")
        info.update({"preset": preset, "dataset": rig.dataset, "homography": "h.json",
                     "made_by": f"python -m runtime.assets.make_samples --preset {preset}"})
    write_json(out / "samples.json", info)
    return info


def main(argv=None) -> int:
    repo = Path(__file__).resolve().parents[2]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="480p",
                        help="480p: the bundled clips (default); 720p/1080p: LLVIP night rigs with a 640x512 IR core")
    parser.add_argument("--data", type=Path, default=None,
                        help="the dataset folder (default: ../shared/data/<the preset's set>)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: runtime/assets/samples for 480p, build/samples/PRESET otherwise)")
    parser.add_argument("--truth", action="store_true",
                        help="also write ir_truth.mp4: the IR camera at the VIS frame times and rate (the reference "
                             "for IR motion compensation, benchmarks/ir_motion.py)")
    args = parser.parse_args(argv)
    rig = PRESETS[args.preset]
    data = args.data or repo.parent / "shared" / "data" / rig.dataset
    out = args.out or (Path(__file__).resolve().parent / "samples" if args.preset == "480p"
                       else repo / "build" / "samples" / args.preset)
    info = make_samples(data, out, args.preset, truth=args.truth)
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
