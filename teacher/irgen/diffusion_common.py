"""Shared pieces of the diffusion RGB->IR generators (`sd-img2img`, `sd-text`, `flux-fill`).

- Local base folders: `check_base_folder` says in one sentence what a Stable Diffusion or FLUX.1-Fill folder must hold.
- Typed configs (YAML + `--set`) with the sections every diffusion generator shares: `lora`, `data`, `optim`, `train`.
- LoRA on attention projections with peft, saved in the diffusers layout (`pytorch_lora_weights.safetensors`, with
  the peft config in the safetensors metadata) beside `irgen.json`, so other diffusers tools load it too.
- One training loop on accelerate (multi-GPU with `accelerate launch`, bf16 on CUDA, gradient accumulation) with a
  pickle-free checkpoint (teacher.training_utils: trainable tensors and optimizer state as safetensors, the rest
  JSON) for `--resume`, a loss log and sample grids.

Nothing here imports torch or diffusers at module import time: `fusion teacher` imports generator modules to collect
their options, and must stay fast.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from runtime.errors import FusionError
from teacher.training_utils import Checkpoint, checkpoint_to_resume, save_checkpoint, set_learning_rate, warmup_cosine

WEIGHTS_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' load_lora_weights looks for
INFO_NAME = "irgen.json"
ADAPTER_NAME = "thermal"

# What a local base folder must hold (the diffusers `save_pretrained` layout of each pipeline).
BASE_LAYOUTS = {
    "sd": ("model_index.json", "unet/", "vae/", "text_encoder/", "tokenizer/", "scheduler/"),
    "flux-fill": ("model_index.json", "transformer/", "vae/", "text_encoder/", "text_encoder_2/", "tokenizer/",
                  "tokenizer_2/", "scheduler/"),
}
BASE_EXAMPLES = {
    "sd": "a Stable Diffusion 1.5 or 2.1 diffusers folder such as stable-diffusion-v1-5",
    "flux-fill": "the FLUX.1-Fill-dev diffusers folder",
}


def check_base_folder(path: str | os.PathLike | None, family: str, option: str = "--base") -> Path:
    """The base folder as a Path; FusionError listing what it must contain when it is missing or incomplete."""
    layout = BASE_LAYOUTS[family]
    need = ", ".join(layout)
    if path is None:
        raise FusionError(f"pass {option} PATH: a local folder with {BASE_EXAMPLES[family]} holding {need}")
    folder = Path(path)
    missing = [item for item in layout
               if not ((folder / item.rstrip("/")).is_dir() if item.endswith("/") else (folder / item).is_file())]
    if missing:
        state = "does not exist" if not folder.exists() else f"lacks {', '.join(missing)}"
        raise FusionError(f"{option} {folder} {state}; it must be {BASE_EXAMPLES[family]} (a diffusers "
                          f"save_pretrained layout) containing {need}")
    return folder


BASE_TITLES = {"sd": "Stable Diffusion", "flux-fill": "FLUX.1-Fill"}


def load_local_pipeline(pipeline_class: str, base: Path, family: str, **kwargs):
    """`diffusers.<pipeline_class>.from_pretrained(base, local_files_only=True, **kwargs)` with its progress bar off;
    FusionError naming what the folder must hold when diffusers cannot load it."""
    import diffusers
    try:
        pipe = getattr(diffusers, pipeline_class).from_pretrained(str(base), local_files_only=True, **kwargs)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        layout = BASE_LAYOUTS[family]
        raise FusionError(f"{base} could not be loaded as a {BASE_TITLES[family]} folder ({first}); it must hold "
                          f"{', '.join(layout[:-1])} and {layout[-1]} as written by diffusers save_pretrained"
                          ) from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ------------------------------------------------------------------------------------------------------ configs
@dataclass
class LoraSettings:
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    # Attention projections of the UNet / transformer blocks (diffusers module names).
    targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])


@dataclass
class DiffusionDataConfig:
    scale: float = 1.0  # resize every image by this factor first (RoadScene frames are 250-550 px)
    crop: int = 512  # square training crops, a multiple of the model's size multiple (8 for SD, 16 for FLUX)
    batch_size: int = 1  # per GPU
    hflip: bool = True


@dataclass
class DiffusionOptimConfig:
    lr: float = 1e-4
    weight_decay: float = 1e-2
    warmup_steps: int = 50
    grad_clip: float = 1.0
    grad_accum: int = 1  # optimizer step every N batches (effective batch = batch_size x N x GPUs)


@dataclass
class DiffusionLoopConfig:
    steps: int = 2000  # optimizer steps
    mixed_precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU), no, bf16, fp16
    gradient_checkpointing: bool = True
    log_every: int = 10
    save_every: int = 250  # weights + resumable checkpoint
    sample_every: int = 250  # sample grid into samples/ (0: only at the end)
    sample_count: int = 2  # images in a sample grid


def resolve_precision(name: str, device: str) -> str:
    if name not in ("auto", "no", "bf16", "fp16"):
        raise FusionError(f"train.mixed_precision must be auto, no, bf16 or fp16, got '{name}'")
    if name == "auto":
        return "bf16" if str(device).startswith("cuda") else "no"
    if name != "no" and not str(device).startswith("cuda"):
        return "no"  # half precision on CPU is slow and badly supported: fall back to fp32
    return name


def weight_dtype(precision: str):
    import torch
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


# --------------------------------------------------------------------------------------------------------- data
def resize_by(image: np.ndarray, scale: float) -> np.ndarray:
    import cv2
    if scale == 1.0:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)


class AlignedCrops:
    """Lists of aligned float32 images ((H,W) or (H,W,C) in [0,1]) per key, served as batches of random square crops.

    Batches come from `numpy.random.default_rng((seed, step, rank))`, so a resumed run sees the batches the
    uninterrupted one would have, and each GPU process sees different ones.
    """

    def __init__(self, items: list[dict[str, np.ndarray]], config: DiffusionDataConfig):
        if not items:
            raise FusionError("no training images")
        self.items = [{k: resize_by(v, config.scale) for k, v in item.items()} for item in items]
        self.config = config

    def __len__(self) -> int:
        return len(self.items)

    @staticmethod
    def _fit(array: np.ndarray, crop: int) -> np.ndarray:
        """Images smaller than the crop are scaled up (not padded: padding would teach the model mirrored edges)."""
        h, w = array.shape[:2]
        if min(h, w) >= crop:
            return array
        return resize_by(array, crop / min(h, w) + 1e-6)

    def batch(self, seed: int, step: int, rank: int = 0, batch_size: int | None = None) -> dict[str, np.ndarray]:
        """key -> (B, C, crop, crop) float32 arrays."""
        rng = np.random.default_rng((seed, step, rank))
        crop = self.config.crop
        out: dict[str, list[np.ndarray]] = {}
        for index in rng.integers(0, len(self.items), size=batch_size or self.config.batch_size):
            item = {k: self._fit(v, crop) for k, v in self.items[index].items()}
            h, w = next(iter(item.values())).shape[:2]
            top = int(rng.integers(0, h - crop + 1))
            left = int(rng.integers(0, w - crop + 1))
            flip = self.config.hflip and rng.random() < 0.5
            for key, array in item.items():
                patch = array[top:top + crop, left:left + crop]
                if flip:
                    patch = patch[:, ::-1]
                patch = patch[None] if patch.ndim == 2 else np.moveaxis(patch, -1, 0)
                out.setdefault(key, []).append(np.ascontiguousarray(patch, dtype=np.float32))
        return {key: np.stack(values) for key, values in out.items()}


def load_paired_items(data: str | None, names: str | None) -> list[dict[str, np.ndarray]]:
    """Aligned RGB (H,W,3) / IR (H,W) pairs of a dataset folder (ir/ + vi/), restricted to a split file."""
    from runtime.imageio import discover_pairs, read_pair
    if data is None:
        raise FusionError("pass --data DIR: a dataset folder with aligned ir/ and vi/ images")
    items = []
    for pair in discover_pairs(data=data, names=names):
        ir, vis = read_pair(pair)
        rgb = np.repeat(vis[..., None], 3, axis=2) if vis.ndim == 2 else vis
        items.append({"rgb": rgb, "ir": ir})
    return items


def working_size(height: int, width: int, short_side: int, multiple: int) -> tuple[int, int]:
    """(h, w) with the shorter side near `short_side`, the aspect ratio kept, both multiples of `multiple`."""
    scale = short_side / min(height, width)
    h = max(multiple, int(round(height * scale / multiple)) * multiple)
    w = max(multiple, int(round(width * scale / multiple)) * multiple)
    return h, w


def resize_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    import cv2
    if image.shape[:2] == (height, width):
        return image
    shrink = height * width < image.shape[0] * image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """A generated RGB (H,W,3) render -> IR (H,W): its BT.601 luminance (thermal renders are near-gray anyway)."""
    from runtime.color import luminance
    return np.clip(luminance(np.asarray(rgb, dtype=np.float32)), 0.0, 1.0).astype(np.float32)


def save_grid(path: Path, rows: list[list[np.ndarray]]) -> Path:
    """Rows of (H,W) or (H,W,3) float images (same height within a row) -> one RGB PNG, written atomically."""
    from runtime.imageio import write_image
    lines = []
    for row in rows:
        tiles = [np.repeat(t[..., None], 3, axis=2) if t.ndim == 2 else t for t in row]
        lines.append(np.concatenate(tiles, axis=1))
    width = max(line.shape[1] for line in lines)
    lines = [np.pad(line, ((0, 0), (0, width - line.shape[1]), (0, 0))) for line in lines]
    return write_image(path, np.clip(np.concatenate(lines, axis=0), 0, 1))


# --------------------------------------------------------------------------------------------------------- LoRA
def add_lora(model, settings: LoraSettings) -> None:
    """Attach a trainable LoRA adapter (peft) to the attention projections of a diffusers UNet/transformer."""
    from peft import LoraConfig
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        init_lora_weights="gaussian", target_modules=list(settings.targets))
    model.add_adapter(config, adapter_name=ADAPTER_NAME)
    if not any("lora_" in name for name, _ in model.named_parameters()):
        raise FusionError(f"lora.targets {settings.targets} match no module of the {type(model).__name__}; use "
                          f"attention projection names such as to_q, to_k, to_v, to_out.0")


def lora_state(model) -> tuple[dict, dict]:
    """(LoRA tensors in the diffusers layout, the peft config as a dict) of `model`'s thermal adapter."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict
    state = get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME)
    state = convert_state_dict_to_diffusers(state)
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    config = model.peft_config[ADAPTER_NAME].to_dict()
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    return state, config


def save_lora_folder(pipeline_class, component: str, model, folder: Path, info: dict) -> None:
    """The LoRA of `model` (the pipeline's "unet" or "transformer") in the diffusers layout, loadable by
    `pipe.load_lora_weights`, with its peft config in the file's metadata; then irgen.json. Each file atomically."""
    import tempfile

    from runtime.imageio import write_json
    state, lora_config = lora_state(model)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".lora-") as tmp:
        pipeline_class.save_lora_weights(tmp, weight_name=WEIGHTS_NAME, safe_serialization=True,
                                         **{f"{component}_lora_layers": state,
                                            f"{component}_lora_adapter_metadata": lora_config})
        os.replace(Path(tmp) / WEIGHTS_NAME, folder / WEIGHTS_NAME)
    write_json(folder / INFO_NAME, info)


def load_lora_quietly(pipe, folder: Path) -> None:
    """pipe.load_lora_weights without diffusers' note that the file has no text-encoder LoRA (ours never has)."""
    from diffusers.utils import logging
    previous = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        pipe.load_lora_weights(str(folder), weight_name=WEIGHTS_NAME, adapter_name=ADAPTER_NAME)
    finally:
        logging.set_verbosity(previous)


def read_info(folder: str | os.PathLike, generator: str) -> dict:
    """irgen.json of a trained folder; FusionError saying what the folder must hold when it is not one."""
    folder = Path(folder)
    path = folder / INFO_NAME
    if not path.is_file() or not (folder / WEIGHTS_NAME).is_file():
        raise FusionError(f"{folder} is not a trained {generator} folder: it must hold {INFO_NAME} and {WEIGHTS_NAME} "
                          f"(what `fusion teacher train-irgen --generator {generator}` writes)")
    info = json.loads(path.read_text(encoding="utf-8"))
    if info.get("generator") != generator:
        raise FusionError(f"{folder} holds a '{info.get('generator')}' generator, not '{generator}'; pass "
                          f"--generator {info.get('generator')}")
    return info


def resolve_base(args: argparse.Namespace | None, info: dict, family: str) -> Path:
    """--base when given, else the base folder recorded at training time."""
    given = getattr(args, "base", None) if args is not None else None
    return check_base_folder(given or info.get("base"), family,
                             option="--base" if given else f"the base folder recorded in {INFO_NAME}")


def place_pipeline(pipe, device: str, args: argparse.Namespace | None) -> None:
    """Move a pipeline to `device`, or, with --cpu-offload on CUDA, let diffusers move each model in when it runs."""
    if getattr(args, "cpu_offload", False) and str(device).startswith("cuda"):
        index = int(str(device).split(":")[1]) if ":" in str(device) else 0
        pipe.enable_model_cpu_offload(gpu_id=index)
    else:
        pipe.to(device)


def local_device(device: str) -> str:
    """'cuda' -> this process's GPU under torchrun / accelerate launch (LOCAL_RANK), so sharded synth-ir ranks do
    not all land on GPU 0."""
    if str(device) == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return str(device)


# --------------------------------------------------------------------------------------------- sampler options
def add_sampler_arguments(parser, verb: str) -> None:
    """synth-ir options shared by the diffusion generators (identical definitions: the CLI keeps one of each)."""
    if verb != "synth-ir":
        return
    parser.add_argument("--steps", type=int, default=None, metavar="N",
                        help="(diffusion generators) denoising steps (default: the value saved at training)")
    parser.add_argument("--guidance", type=float, default=None, metavar="G",
                        help="(diffusion generators) guidance scale (default: the value saved at training)")
    parser.add_argument("--strength", type=float, default=None, metavar="S",
                        help="(sd-img2img) how far the RGB frame is noised before denoising, 0..1")
    parser.add_argument("--negative-prompt", default=None, metavar="TEXT",
                        help="(sd-img2img, sd-text) what the image must not look like")
    parser.add_argument("--resolution", type=int, default=None, metavar="PX",
                        help="(diffusion generators) shorter side of the working size (default: saved at training)")
    parser.add_argument("--cpu-offload", action="store_true",
                        help="(diffusion generators) keep each model on the CPU until it runs (diffusers model CPU "
                             "offload): slower, but FLUX.1-Fill fits a 24 GB GPU")


def sampler_overrides(args: argparse.Namespace | None) -> dict[str, Any]:
    """The sampler settings given on the synth-ir command line (only those actually passed)."""
    if args is None:
        return {}
    found = {key: getattr(args, attr, None) for key, attr in
             (("steps", "steps"), ("guidance", "guidance"), ("strength", "strength"),
              ("negative_prompt", "negative_prompt"), ("resolution", "resolution"))}
    return {k: v for k, v in found.items() if v is not None}


# ------------------------------------------------------------------------------------------------ training loop
@dataclass
class TrainingJob:
    """What the shared loop needs from a generator."""

    name: str
    model: Any  # the nn.Module holding every trainable parameter (UNet or transformer with adapters)
    # (model as prepared by accelerate, i.e. DDP-wrapped under multi-GPU; step; micro-batch) -> (loss, parts)
    loss_fn: Callable[[Any, int, int], tuple[Any, dict[str, float]]]
    save_fn: Callable[[Path, int], None]  # (folder, step): write weights loadable by from_pretrained
    sample_fn: Callable[[Path], None] | None  # write a sample grid to a path
    extra_modules: dict = field(default_factory=dict)  # other modules with trainable tensors (fine-tuned TQD)


def trainable_tensors(modules: dict) -> dict:
    return {f"{prefix}.{name}": p for prefix, module in modules.items()
            for name, p in module.named_parameters() if p.requires_grad}


def nonfinite_gradients(modules: dict, limit: int = 3) -> str:
    """The first trainable tensors whose gradient holds inf or nan, for the error message."""
    import torch
    names = [name for name, p in trainable_tensors(modules).items()
             if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "") \
        if names else "no tensor (the norm itself overflowed)"


def save_trainable_checkpoint(folder: Path, modules: dict, optimizer, step: int) -> None:
    """The resumable checkpoint (teacher.training_utils): the trainable tensors and the optimizer."""
    save_checkpoint(folder, step, tensors={"trainable": trainable_tensors(modules)}, optimizer=optimizer)


def restore_trainable(checkpoint: Checkpoint, modules: dict, optimizer) -> int:
    """Put back what `save_trainable_checkpoint` wrote; the step to continue from."""
    import torch
    saved = checkpoint.tensors("trainable")
    current = trainable_tensors(modules)
    if set(saved) != set(current):
        raise FusionError(f"the checkpoint in {checkpoint.folder} was made with other trainable parameters (a "
                          f"different lora or adapter config); resume with the config of that run or choose another "
                          f"--out")
    with torch.no_grad():
        for key, param in current.items():
            param.copy_(saved[key].to(param.device, param.dtype))
    checkpoint.restore_optimizer(optimizer)
    return checkpoint.step


def make_accelerator(cfg, device: str, out: Path):
    """An accelerate Accelerator for this run (one process here, N under `accelerate launch`)."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    precision = resolve_precision(cfg.train.mixed_precision, device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        # accelerate keeps one process-wide state and refuses a second Accelerator with other settings (CPU, then
        # bf16 on CUDA, in one Python session or test run); a single process may safely start afresh.
        from accelerate.state import AcceleratorState
        reset = getattr(AcceleratorState, "_reset_state", None)
        if reset is not None:
            reset(True)
    return Accelerator(mixed_precision=precision, gradient_accumulation_steps=cfg.optim.grad_accum,
                       cpu=not str(device).startswith("cuda"),
                       project_config=ProjectConfiguration(project_dir=str(out)))


def prepare_output(out: Path, resume: bool) -> Checkpoint | None:
    """The checkpoint to resume from (None: start fresh); FusionError when --out holds a run and no --resume."""
    return checkpoint_to_resume(out / "checkpoint", resume, out)


def run_training(job: TrainingJob, cfg, args: argparse.Namespace, accelerator, out: Path) -> int:
    """The shared LoRA loop: AdamW on the trainable tensors, warm-up, grad clipping and accumulation, periodic
    weights + checkpoint + sample grid, a JSON-lines loss log, resume from out/checkpoint."""
    import torch
    from tqdm import tqdm

    from runtime.config import save_config

    modules = {"model": job.model, **job.extra_modules}
    params = list(trainable_tensors(modules).values())
    if not params:
        raise FusionError("nothing to train: no parameter requires gradients")
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    resume_from = prepare_output(out, getattr(args, "resume", False))
    start = 0
    if resume_from is not None:
        start = restore_trainable(resume_from, modules, optimizer)
        if accelerator.is_main_process:
            print(f"{job.name}: resuming {out} at step {start}", file=sys.stderr)
    prepared = accelerator.prepare(job.model, optimizer)
    model, optimizer = prepared
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "train_config.yaml")
    log_path = out / "train_log.jsonl"
    steps = cfg.train.steps
    progress = tqdm(range(start, steps), initial=start, total=steps, desc=f"train {job.name}", unit="step",
                    dynamic_ncols=True, file=sys.stderr, disable=not accelerator.is_main_process)
    started = time.time()
    running: dict[str, float] = {}
    seen = 0
    schedule = warmup_cosine(cfg.optim.warmup_steps, steps, 1.0)  # warm-up, then constant
    model.train()
    for step in progress:
        set_learning_rate(optimizer, cfg.optim.lr, schedule(step))
        for micro in range(cfg.optim.grad_accum):
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    loss, parts = job.loss_fn(model, step, micro)
                if not torch.isfinite(loss):
                    raise FusionError(f"the loss became {loss.item()} at step {step}; lower optim.lr")
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    # max_norm inf only measures; a non-finite norm means the step would turn the weights to nan
                    # (fp16 is exempt: its grad scaler skips such steps by design)
                    norm = accelerator.clip_grad_norm_(params, cfg.optim.grad_clip if cfg.optim.grad_clip > 0
                                                       else float("inf"))
                    if norm is not None and accelerator.mixed_precision != "fp16" and \
                            not torch.isfinite(torch.as_tensor(norm)):
                        raise FusionError(f"the gradients became non-finite at step {step} (loss {loss.item():.4g}) "
                                          f"in {nonfinite_gradients(modules)}; lower optim.lr or train with "
                                          f"train.mixed_precision=no")
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            for key, value in parts.items():
                running[key] = running.get(key, 0.0) + value
            seen += 1
        done = step + 1
        if accelerator.is_main_process and (done % cfg.train.log_every == 0 or done == steps):
            means = {k: v / seen for k, v in running.items()}
            record = {"step": done, "lr": optimizer.param_groups[0]["lr"], **means,
                      "seconds": round(time.time() - started, 2)}
            with open(log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
            progress.set_postfix(loss=f"{means.get('loss', 0.0):.4f}")
            running, seen = {}, 0
        if done % cfg.train.save_every == 0 or done == steps:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                job.save_fn(out, done)
                save_trainable_checkpoint(out / "checkpoint", modules, optimizer.optimizer
                                          if hasattr(optimizer, "optimizer") else optimizer, done)
        sample_now = cfg.train.sample_every and done % cfg.train.sample_every == 0
        if job.sample_fn is not None and accelerator.is_main_process and (sample_now or done == steps):
            model.eval()
            with accelerator.autocast():  # fp32 trainable parts beside a bf16 base, as in training
                job.sample_fn(out / "samples" / f"step_{done:06d}.png")
            model.train()
    progress.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        print(f"{job.name}: LoRA weights in {out} ({WEIGHTS_NAME} + {INFO_NAME}); use them with `fusion teacher "
              f"synth-ir --generator {job.name} --weights {out} ...`", file=sys.stderr)
    return 0


def timestep_weights_min_snr(alphas_cumprod, timesteps, gamma: float, prediction_type: str):
    """Min-SNR-gamma loss weights (Hang et al. 2023) for epsilon / v prediction; 1 when gamma <= 0."""
    import torch
    if gamma <= 0:
        return None
    snr = alphas_cumprod[timesteps] / (1 - alphas_cumprod[timesteps])
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    return clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr
