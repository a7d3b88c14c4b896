"""`fusion teacher train-prior`: train a small unconditional diffusers DDPM prior on your own IR/VIS frames, so
the `ddfm` teacher runs with no download.

    fusion teacher train-prior --images data/ir data/vi --size 128 --out priors/mine
    fusion teacher fuse --teacher ddfm --prior priors/mine --data data

The prior is a diffusers UNet2DModel predicting noise under a linear 1000-step DDPMScheduler, saved as a DDPM
pipeline folder (model_index.json, unet/, scheduler/) holding the EMA weights; `DDPMPipeline.from_pretrained` and
teacher.ddfm.DiffusionPrior both load it. Gray frames are replicated to 3 channels (the DDFM sampler works on RGB
priors and reduces to luminance), random crops of --size with flips feed the model. Training resumes from
FOLDER/training_state/ (weights, EMA, optimiser, step, RNG) with --resume; the resolved settings are written to
FOLDER/train_prior.yaml.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import FusionError
from teacher.training_utils import ModelEMA, find_checkpoint, save_checkpoint, set_learning_rate, warmup_cosine

MODEL_PRESETS = {
    # name: (block_out_channels, layers_per_block, attention on the last N levels)
    "tiny": ((32, 32, 64, 64), 1, 1),  # attention only at 1/8 resolution: DDFM runs priors on whole frames
    "small": ((64, 128, 128, 256), 2, 1),
    "base": ((128, 128, 256, 256, 512), 2, 2),
}


@dataclass
class PriorTrainConfig:
    size: int = 128
    model: str = "small"
    channels: int = 3
    steps: int = 20000
    batch_size: int = 16
    lr: float = 2e-4
    warmup: int = 500
    ema_decay: float = 0.999
    save_every: int = 1000
    seed: int = 0
    num_train_timesteps: int = 1000


def configure_train_prior(parser: argparse.ArgumentParser) -> None:
    defaults = PriorTrainConfig()
    parser.add_argument("--images", nargs="+", required=True, metavar="DIR",
                        help="folders of training frames (IR and/or visible; searched recursively)")
    parser.add_argument("--out", required=True, help="output folder (a diffusers DDPM pipeline)")
    parser.add_argument("--size", type=int, default=defaults.size, help=f"crop size (default {defaults.size})")
    parser.add_argument("--model", choices=sorted(MODEL_PRESETS), default=defaults.model,
                        help=f"UNet size preset (default {defaults.model})")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=defaults.channels,
                        help="prior channels: 3 (gray replicated; default) or 1")
    parser.add_argument("--steps", type=int, default=defaults.steps, help=f"optimiser steps (default {defaults.steps})")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="linear learning-rate warm-up steps")
    parser.add_argument("--ema-decay", type=float, default=defaults.ema_decay)
    parser.add_argument("--save-every", type=int, default=defaults.save_every, help="checkpoint period in steps")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/training_state/")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:K or auto")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.set_defaults(func=run_train_prior)


# ------------------------------------------------------------------------------------------------------------ data
def list_training_images(folders) -> list[Path]:
    from runtime.imageio import IMAGE_EXTENSIONS
    files = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise FusionError(f"image folder not found: {folder}")
        files += sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                        and "TEACHER_FUSED" not in p.parts)
    if not files:
        raise FusionError(f"no images found under {', '.join(map(str, folders))}")
    return files


class FrameCrops:
    """Random square crops of `size` from the frames (rescaled so the shorter side is 1-1.5x size), random flips,
    in [-1, 1], (C, size, size). Frames are decoded once and kept (the datasets this is for are small)."""

    def __init__(self, files: list[Path], size: int, channels: int, seed: int):
        import numpy as np
        from runtime.imageio import read_raw, vis_to_float
        self.size, self.channels = size, channels
        self.rng = np.random.default_rng(seed)
        self.frames = []
        for path in files:
            img = read_raw(path)
            if img.dtype == np.uint16:
                from runtime.imageio import agc_16bit
                img = agc_16bit(img if img.ndim == 2 else img.mean(axis=2))
            else:
                img = vis_to_float(img)
            self.frames.append(img)

    def batch(self, count: int):
        import cv2
        import numpy as np
        import torch
        from runtime.color import luminance
        out = np.empty((count, self.channels, self.size, self.size), dtype=np.float32)
        for i in range(count):
            img = self.frames[self.rng.integers(len(self.frames))]
            scale = self.size * self.rng.uniform(1.0, 1.5) / min(img.shape[:2])
            h, w = max(self.size, round(img.shape[0] * scale)), max(self.size, round(img.shape[1] * scale))
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
            top, left = self.rng.integers(h - self.size + 1), self.rng.integers(w - self.size + 1)
            img = img[top:top + self.size, left:left + self.size]
            if self.rng.random() < 0.5:
                img = img[:, ::-1]
            if self.channels == 1:
                img = luminance(img) if img.ndim == 3 else img
                out[i, 0] = img
            else:
                out[i] = np.repeat(img[None], 3, 0) if img.ndim == 2 else img.transpose(2, 0, 1)
        return torch.from_numpy(out * 2 - 1)


# ----------------------------------------------------------------------------------------------------------- model
def build_unet(config: PriorTrainConfig):
    from diffusers import UNet2DModel
    channels, layers, attention_levels = MODEL_PRESETS[config.model]
    levels = len(channels)
    if config.size % 2 ** (levels - 1):
        raise FusionError(f"--size {config.size} must be a multiple of {2 ** (levels - 1)} for the "
                          f"'{config.model}' model")
    down = tuple("AttnDownBlock2D" if i >= levels - attention_levels else "DownBlock2D" for i in range(levels))
    up = tuple("AttnUpBlock2D" if i < attention_levels else "UpBlock2D" for i in range(levels))
    return UNet2DModel(sample_size=config.size, in_channels=config.channels, out_channels=config.channels,
                       block_out_channels=channels, layers_per_block=layers, down_block_types=down,
                       up_block_types=up, norm_num_groups=min(32, channels[0] // 2), attention_head_dim=32,
                       resnet_time_scale_shift="scale_shift")


def save_prior(out: Path, unet, scheduler) -> None:
    """Write the DDPM pipeline folder atomically (a temporary folder renamed over the old one)."""
    import shutil

    from diffusers import DDPMPipeline
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.saving"
    shutil.rmtree(staging, ignore_errors=True)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(str(staging))
    keep = [p for p in (out.iterdir() if out.is_dir() else []) if p.name not in ("unet", "scheduler",
                                                                                 "model_index.json")]
    for item in keep:  # training_state/, train_prior.yaml stay with the new weights
        item.rename(staging / item.name)
    if out.exists():
        old = out.parent / f".{out.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)


def _save_state(out: Path, unet, ema: ModelEMA, optimizer, step: int, rng_state) -> None:
    """OUT/training_state/, a teacher.training_utils checkpoint: weights, EMA, optimiser, step, data RNG."""
    save_checkpoint(out / "training_state", step, tensors={"model": unet.state_dict(), "ema": ema.module.state_dict()},
                    optimizer=optimizer, state={"data_rng": rng_state})


# ---------------------------------------------------------------------------------------------------------- train
def train_prior(images, out, config: PriorTrainConfig, device: str = "cpu", resume: bool = False,
                log=sys.stderr) -> dict:
    """Train (or continue) a prior; returns {"step", "loss" (last EMA of the loss), "seconds_per_step"}."""
    import torch
    from diffusers import DDPMScheduler
    from tqdm import tqdm

    from runtime.config import save_config
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not resume:
        raise FusionError(f"{out} already exists; pass --resume to continue training it, or choose another --out")
    checkpoint = find_checkpoint(out / "training_state") if resume else None
    if resume and checkpoint is None and out.exists() and any(out.iterdir()):
        raise FusionError(f"{out} has no training_state/ to resume from")
    torch.manual_seed(config.seed)
    files = list_training_images(images)
    data = FrameCrops(files, config.size, config.channels, config.seed)
    unet = build_unet(config).to(device)
    scheduler = DDPMScheduler(num_train_timesteps=config.num_train_timesteps, beta_schedule="linear",
                              beta_start=1e-4, beta_end=0.02)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=0.0)
    ema = ModelEMA(unet, config.ema_decay)
    step = 0
    if checkpoint is not None:
        unet.load_state_dict(checkpoint.tensors("model", device))
        ema.module.load_state_dict(checkpoint.tensors("ema", device))
        checkpoint.restore_optimizer(optimizer)
        step = ema.updates = checkpoint.step  # one EMA update per step
        data.rng.bit_generator.state = checkpoint.state["data_rng"]
        torch.manual_seed(config.seed + step)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "train_prior.yaml")
    print(f"train-prior: {len(files)} image(s), {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M parameters, "
          f"steps {step} -> {config.steps} on {device}", file=log)

    alphas_cumprod = scheduler.alphas_cumprod.to(device)
    use_amp = str(device).startswith("cuda")
    smoothed, started = None, time.perf_counter()
    first_step = step
    schedule = warmup_cosine(config.warmup, config.steps, 1.0)  # warm-up, then constant
    bar = tqdm(total=config.steps, initial=step, desc="train-prior", unit="step", disable=None)
    unet.train()
    while step < config.steps:
        clean = data.batch(config.batch_size).to(device)
        noise = torch.randn_like(clean)
        t = torch.randint(0, config.num_train_timesteps, (clean.shape[0],), device=device)
        abar = alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = abar.sqrt() * clean + (1 - abar).sqrt() * noise
        set_learning_rate(optimizer, config.lr, schedule(step))
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            pred = unet(noisy, t).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        if not torch.isfinite(loss):
            raise FusionError(f"the loss became {loss.item()} at step {step}; lower --lr and resume")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        step += 1
        ema.update(unet)
        smoothed = loss.item() if smoothed is None else 0.98 * smoothed + 0.02 * loss.item()
        bar.set_postfix(loss=f"{smoothed:.4f}")
        bar.update(1)
        if step % config.save_every == 0 or step == config.steps:
            _checkpoint(out, unet, ema, optimizer, scheduler, step, data, config)
    bar.close()
    if step == first_step:  # nothing to do; still leave loadable weights
        _checkpoint(out, unet, ema, optimizer, scheduler, step, data, config)
    elapsed = time.perf_counter() - started
    return {"step": step, "loss": smoothed,
            "seconds_per_step": elapsed / (step - first_step) if step > first_step else None}


def _checkpoint(out, unet, ema, optimizer, scheduler, step, data, config):
    import copy
    save_prior(out, copy.deepcopy(ema.module).to("cpu"), scheduler)
    _save_state(out, unet, ema, optimizer, step, data.rng.bit_generator.state)


def run_train_prior(args) -> int:
    from runtime.errors import require
    torch = require("torch", purpose="`fusion teacher train-prior`")
    require("diffusers", purpose="`fusion teacher train-prior`")
    from teacher.fuse_cli import resolve_device
    if args.threads:
        torch.set_num_threads(args.threads)
    config = PriorTrainConfig(size=args.size, model=args.model, channels=args.channels, steps=args.steps,
                              batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, ema_decay=args.ema_decay,
                              save_every=args.save_every, seed=args.seed)
    if config.size < 8 or config.batch_size < 1 or config.steps < 0:
        raise FusionError("--size must be at least 8, --batch-size at least 1 and --steps not negative")
    result = train_prior(args.images, args.out, config, device=resolve_device(args.device), resume=args.resume)
    loss = f", loss {result['loss']:.4f}" if result["loss"] is not None else ""
    speed = f", {result['seconds_per_step']:.3f} s/step" if result["seconds_per_step"] else ""
    print(f"train-prior: step {result['step']}{loss}{speed}; prior saved to {args.out} "
          f"(use it with: fusion teacher fuse --teacher ddfm --prior {args.out})", file=sys.stderr)
    return 0

