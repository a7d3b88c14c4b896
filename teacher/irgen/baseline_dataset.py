"""A dataset folder whose "IR" is a trivial function of the RGB frame: the control for students trained on
synthetic pairs. If a student distilled from these pairs fuses real pairs as well as one distilled from a trained
generator's pairs, the generator's realism did not matter for that student; if it is clearly worse, it did.

    python -m teacher.irgen.baseline_dataset --kind inverted-luminance --rgb ../shared/data/roadscene/vi \\
        --names ../shared/data/roadscene/train.txt --out build/irgen/synth/inverted-luminance-train

Kinds are the baselines of `teacher.irgen.evaluate`: `vis-luminance` (BT.601 Y as the IR) and
`inverted-luminance` (1 - Y). The folder has the layout `fusion teacher synth-ir` writes (vi/ + ir/, same stems,
8-bit PNG IR, manifest.json), so `fusion teacher fuse` and `fusion distill train` use it unchanged. Resumable.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from runtime.color import luminance
from runtime.errors import FusionError

KINDS = ("vis-luminance", "inverted-luminance")


def baseline_ir(rgb: np.ndarray, kind: str) -> np.ndarray:
    """(H, W, 3) RGB float [0,1] -> (H, W) float32 [0,1] "IR" of the given baseline kind."""
    y = np.clip(luminance(rgb), 0.0, 1.0).astype(np.float32)
    if kind == "vis-luminance":
        return y
    if kind == "inverted-luminance":
        return 1.0 - y
    raise FusionError(f"unknown baseline kind '{kind}'; choose one of {', '.join(KINDS)}")


def build(kind: str, rgb: str, names: str | None, out: str, resume: bool = False, vis_mode: str = "copy") -> int:
    """Write out/vi + out/ir for every RGB frame (of `names`); returns how many items were written."""
    from runtime.imageio import write_image
    from teacher.batch import pending, write_manifest
    from teacher.irgen.cli import place_visible, read_rgb, rgb_images

    if kind not in KINDS:
        raise FusionError(f"unknown baseline kind '{kind}'; choose one of {', '.join(KINDS)}")
    sources = rgb_images(rgb, names)
    root = Path(out)
    ir_dir, vi_dir = root / "ir", root / "vi"
    todo, done = pending(list(sources), lambda name: ir_dir / f"{name}.png", resume)
    for name in todo:
        ir = baseline_ir(read_rgb(sources[name]), kind)
        place_visible(sources[name], vi_dir / sources[name].name, vis_mode)  # vi/ first: ir/ marks an item done
        write_image(ir_dir / f"{name}.png", ir)
    write_manifest(root, None, generator=f"baseline:{kind}", rgb=rgb, names=names, vis_mode=vis_mode,
                   items=len(sources), already_done=done, written=len(todo))
    return len(todo)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m teacher.irgen.baseline_dataset",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=KINDS, default="inverted-luminance")
    parser.add_argument("--rgb", required=True, help="folder of RGB frames (or a dataset folder holding vi/)")
    parser.add_argument("--names", help="split file of the stems to write (default: every frame)")
    parser.add_argument("--out", required=True, help="dataset folder to write (vi/ + ir/)")
    parser.add_argument("--vis-mode", choices=["copy", "hardlink", "symlink"], default="copy")
    parser.add_argument("--resume", action="store_true", help="keep finished items and do the rest")
    args = parser.parse_args(argv)
    try:
        written = build(args.kind, args.rgb, args.names, args.out, resume=args.resume, vis_mode=args.vis_mode)
    except FusionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"baseline_dataset: wrote {written} {args.kind} IR image(s) to {Path(args.out) / 'ir'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
