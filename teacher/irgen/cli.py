"""`fusion teacher train-irgen` and `fusion teacher synth-ir`: train an RGB->IR generator, then turn RGB-only
images into IR/VIS dataset folders the fusion teachers and the student use directly.

    fusion teacher train-irgen --generator tqd --data ../shared/data/roadscene --names train.txt \\
        --config configs/irgen/tqd_cpu.yaml --out build/irgen/tqd
    fusion teacher synth-ir --generator tqd --weights build/irgen/tqd --rgb my_rgb_frames/ --out my_dataset/

Generators are looked up in `teacher.registry` (kind "irgen") and driven only through `teacher.irgen.base.IRGenerator`.
Each generator adds its own options with `add_arguments(parser, verb)`; a generator whose module cannot be imported
here (a missing extra) is listed in `--help` and does not break the others. This module imports neither torch nor
any generator's heavy dependencies at import time, so `fusion teacher list` stays fast.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from runtime.errors import FusionError

IRGEN_KIND = "irgen"


# ------------------------------------------------------------------------------------------------------- arguments
def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--generator", required=True, metavar="NAME",
                        help="RGB->IR generator from `fusion teacher list --kind irgen` (tqd, decomp, ...)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="where to run (default: cuda when available, else cpu)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--base", default=None, metavar="PATH",
                        help="local base-model folder, for generators built on a pretrained model (diffusion)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run in --out instead of refusing to touch it")


def _add_generator_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    """Let every importable irgen generator add its options; list the ones that cannot be imported here."""
    from teacher.registry import TEACHERS, load_teacher_class
    # Options of different generators share one namespace: the same flag from two generators must mean the same
    # thing, and a later definition replaces an earlier identical one instead of failing.
    parser.conflict_handler = "resolve"
    by_hook: dict = {}  # one add_arguments implementation -> (class, names of the generators sharing it)
    unavailable: list[str] = []
    for entry in TEACHERS.values():
        if entry.kind != IRGEN_KIND:
            continue
        try:
            cls = load_teacher_class(entry.name, IRGEN_KIND)
        except Exception as exc:  # noqa: BLE001 - any import failure only disables this one generator
            unavailable.append(f"{entry.name} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
            continue
        hook = getattr(cls.add_arguments, "__func__", cls.add_arguments)
        by_hook.setdefault(hook, (cls, []))[1].append(entry.name)
    for cls, names in by_hook.values():
        group = parser.add_argument_group(f"options of {', '.join(names)}")
        try:
            cls.add_arguments(group, verb)
        except Exception as exc:  # noqa: BLE001 - a broken generator must not take `fusion teacher` down
            unavailable.append(f"{', '.join(names)} (its options failed: {exc})")
    if unavailable:
        parser.epilog = ("generators not available in this installation: " + "; ".join(unavailable))


def configure_train_irgen(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--data", metavar="DIR", help="dataset folder with aligned ir/ and vi/ (RGB) images")
    parser.add_argument("--names", metavar="FILE", help="split file naming the training pairs (e.g. train.txt)")
    parser.add_argument("--config", metavar="FILE", help="YAML training config, or the name of a packaged one "
                                                          "(configs/irgen/NAME.yaml, configs/irgen_diffusion/NAME.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=1e-4 (repeatable)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder: weights (config.json + model.safetensors), checkpoints, logs")
    _add_generator_arguments(parser, "train-irgen")
    parser.set_defaults(func=run_train_irgen)


def configure_synth_ir(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--weights", metavar="DIR", help="trained generator folder (what train-irgen wrote)")
    parser.add_argument("--rgb", metavar="DIR",
                        help="folder of RGB images (or a dataset folder holding vi/) to synthesise IR for")
    parser.add_argument("--out", required=True, metavar="DATASET_DIR",
                        help="dataset folder to write: vi/ (the RGB frames) and ir/ (synthesised, 8-bit PNG)")
    parser.add_argument("--names", metavar="FILE", help="only these images (a split file of names or stems)")
    parser.add_argument("--shard", metavar="I/N", help="process every N-th image starting at I (torchrun ranks are "
                                                       "used automatically)")
    parser.add_argument("--vis-mode", choices=["copy", "hardlink", "symlink"], default="copy",
                        help="how vi/ holds the RGB frames (default copy; hardlink falls back to copy across disks)")
    parser.add_argument("--visualize", action="store_true",
                        help="also write a per-image panel of the generator's internals to visual/ when it has one "
                             "(attention maps of the thermal query decoder, the decomposition of decomp)")
    parser.add_argument("--prompt", default=None, metavar="TEXT", help="text prompt (text-to-IR generators)")
    parser.add_argument("--count", type=int, default=None, metavar="N",
                        help="number of images to sample, for text-to-IR generators that need no RGB input")
    _add_generator_arguments(parser, "synth-ir")
    parser.set_defaults(func=run_synth_ir)


# ----------------------------------------------------------------------------------------------------------- helpers
def resolve_device(name: str | None) -> str:
    """'cpu' / 'cuda' / None (auto) -> a torch device string; FusionError when CUDA is asked for but absent."""
    import torch
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise FusionError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu")
    return name


def load_generator_class(name: str):
    """The IRGenerator class registered as `name`; FusionError naming the missing extra when it cannot import."""
    from teacher.registry import load_teacher_class
    try:
        return load_teacher_class(name, IRGEN_KIND)
    except ModuleNotFoundError as exc:
        from runtime.errors import EXTRA_OF_MODULE, require
        if exc.name and (exc.name in EXTRA_OF_MODULE or exc.name.split(".")[0] in EXTRA_OF_MODULE):
            require(exc.name, purpose=f"the '{name}' generator")  # raises, naming the pip extra to install
        raise FusionError(f"the '{name}' generator is not available in this installation ({exc})") from None


def rgb_images(folder: str | os.PathLike, names: str | None) -> dict[str, Path]:
    """Stem -> RGB image path, from a folder of images or a dataset folder holding vi/; restricted to `names`."""
    from runtime.imageio import VIS_FOLDER_NAMES
    from teacher.irgen.base import list_images_in
    return list_images_in(folder, names, VIS_FOLDER_NAMES, what="RGB")


def read_rgb(path: Path) -> np.ndarray:
    """An RGB float32 (H, W, 3) image in [0, 1]; gray files are repeated to three channels."""
    from runtime.imageio import read_vis
    rgb = read_vis(path)
    return np.repeat(rgb[..., None], 3, axis=2) if rgb.ndim == 2 else rgb


def place_visible(source: Path, target: Path, mode: str) -> None:
    """Put the RGB frame into vi/ as a copy, hard link or symbolic link, atomically (temporary name, then rename)."""
    from runtime.imageio import atomic_path
    with atomic_path(target) as tmp:
        tmp.unlink()
        if mode == "symlink":
            os.symlink(os.path.abspath(source), tmp)
        elif mode == "hardlink":
            try:
                os.link(source, tmp)
            except OSError:  # another file system, or links not allowed: a copy is always possible
                shutil.copyfile(source, tmp)
        else:
            shutil.copyfile(source, tmp)


def check_generated(ir, name: str, generator: str, shape: tuple[int, int] | None) -> np.ndarray:
    ir = np.asarray(ir, dtype=np.float32)
    if ir.ndim != 2 or (shape is not None and ir.shape != shape):
        raise RuntimeError(f"generator '{generator}' returned an image of shape {ir.shape} for '{name}', "
                           f"expected (H, W) = {shape}")
    if not np.isfinite(ir).all():
        raise RuntimeError(f"generator '{generator}' returned non-finite values for '{name}'")
    return np.clip(ir, 0.0, 1.0)


# -------------------------------------------------------------------------------------------------------- handlers
def run_train_irgen(args: argparse.Namespace) -> int:
    cls = load_generator_class(args.generator)
    args.device = resolve_device(args.device)
    if args.config:
        from runtime.config import resolve_config
        args.config = str(resolve_config(args.config, ("irgen", "irgen_diffusion")))
    code = cls.train(args)
    return 0 if code is None else int(code)


def run_synth_ir(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from runtime.imageio import write_image
    from teacher.batch import file_hash, pending, resolve_shard, take_shard, write_manifest

    cls = load_generator_class(args.generator)
    out = Path(args.out)
    needs_rgb = getattr(cls, "needs_rgb", True)
    if needs_rgb:
        if args.rgb is None:
            raise FusionError(f"the '{args.generator}' generator synthesises IR from RGB images: pass --rgb DIR")
        sources = rgb_images(args.rgb, args.names)
        items = list(sources)
    else:
        if not args.count or args.count < 1:
            raise FusionError(f"the '{args.generator}' generator samples from text: pass --count N (and --prompt)")
        sources = {}
        items = [f"sample_{i:05d}" for i in range(args.count)]
    # A seed per item from its position in the whole list, so sharded and unsharded runs write the same images.
    seed_of = {name: args.seed + i for i, name in enumerate(items)}

    shard = resolve_shard(args.shard)
    mine = take_shard(items, shard)
    ir_dir, vi_dir, visual_dir = out / "ir", out / "vi", out / "visual"
    todo, done = pending(mine, lambda name: ir_dir / f"{name}.png", args.resume)

    weights_hash = None
    if args.weights is not None and Path(args.weights).exists():
        # A trained folder also holds checkpoints, logs and caches: hash what defines the model.
        weights = Path(args.weights)
        weights_hash = file_hash(weights / "model.safetensors") if (weights / "model.safetensors").is_file() \
            else file_hash(weights)
    manifest = dict(generator=args.generator, weights=args.weights, weights_hash=weights_hash, base=args.base,
                    rgb=args.rgb, names=args.names, prompt=args.prompt, seed=args.seed, vis_mode=args.vis_mode,
                    items=len(mine), already_done=done)
    if not todo:
        print(f"synth-ir: all {len(mine)} image(s) of this shard already exist in {ir_dir}")
        write_manifest(out, shard, **manifest, written=0)
        return 0

    device = resolve_device(args.device)
    if args.weights is None:
        raise FusionError(f"pass --weights DIR: the folder `fusion teacher train-irgen --generator {args.generator}` "
                          f"wrote")
    generator = cls.from_pretrained(args.weights, device=device, args=args)
    written = 0
    progress = tqdm(todo, desc=f"synth-ir {args.generator}" + (f" shard {shard.label}" if shard else ""),
                    unit="img", dynamic_ncols=True, file=sys.stderr)
    for name in progress:
        rgb = read_rgb(sources[name]) if needs_rgb else None
        ir = generator.generate(rgb, seed=seed_of[name], prompt=args.prompt)
        ir = check_generated(ir, name, args.generator, rgb.shape[:2] if rgb is not None else None)
        if needs_rgb:
            # vi/ first: an item counts as finished only once ir/ exists, so an interrupted item is redone whole.
            place_visible(sources[name], vi_dir / sources[name].name, args.vis_mode)
        if args.visualize:
            panel = generator.visualize(rgb, ir) if rgb is not None else None
            if panel is not None:
                write_image(visual_dir / f"{name}.png", panel)
        write_image(ir_dir / f"{name}.png", ir)
        written += 1
    write_manifest(out, shard, **manifest, written=written, settings=generator.settings())
    print(f"synth-ir: wrote {written} image(s) to {ir_dir}" + (f" ({done} were already there)" if done else ""))
    return 0
