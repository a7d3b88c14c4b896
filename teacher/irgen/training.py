"""Training, resuming, inference and the forward-pass self-check shared by the trainable generators (tqd, decomp).

A generator subclasses `TrainableGenerator` and provides its network class, its typed training config, how to
build the network from that config, the per-image extras it trains on, and its loss. Everything else is here:

- `train`: AdamW with warmup + cosine decay, AMP (bf16/fp16 autocast + grad scaling) on CUDA, gradient clipping,
  a tqdm bar, TensorBoard scalars and sample images (when tensorboard is installed) plus `train_log.jsonl`,
  periodic checkpoints, and `--resume` that continues bit-for-bit with the same batches.
- the weights folder: `config.json` + `model.safetensors` (the network), `train_config.yaml` (the resolved training
  config), `checkpoint/` (a teacher.training_utils checkpoint folder; no pickles).
- `--self-check`: one forward/backward pass on real crops with a report of what usually explains "the loss does not
  go down" (dead gradients, saturated sigmoid, constant output, NaNs, a batch that cannot even be overfitted).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from runtime.errors import FusionError
from teacher.irgen.base import IRGenerator
from teacher.training_utils import (Checkpoint, checkpoint_to_resume, save_checkpoint, set_learning_rate,
                                    warmup_cosine)


@dataclasses.dataclass
class OptimConfig:
    lr: float = 2e-4
    backbone_lr_scale: float = 0.1  # backbone lr factor, applied only when ImageNet weights were loaded
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    min_lr_ratio: float = 0.05  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # 0 disables


@dataclasses.dataclass
class LoopConfig:
    steps: int = 20000
    log_every: int = 20
    save_every: int = 500
    image_every: int = 500  # TensorBoard sample images
    amp: bool = True  # only takes effect on CUDA


def _torch():
    from runtime.errors import require
    return require("torch", purpose="training and running RGB->IR generators")


class TrainableGenerator(IRGenerator):
    """An IRGenerator backed by one ConfigModel network trained on aligned RGB/IR crops."""

    #: "module:Class" of the network (a ConfigModel), imported on first use so the CLI never imports torch.
    model_target: ClassVar[str]
    train_config_class: ClassVar[type]  # a dataclass with fields model, data, optim, train (+ generator-specific)

    def __init__(self, model, device: str = "cpu"):
        self.model = model
        self.device = device

    # ----------------------------------------------------------------------------------------- subclass hooks
    @classmethod
    def network_class(cls):
        import importlib
        module, attribute = cls.model_target.split(":")
        return getattr(importlib.import_module(module), attribute)

    @classmethod
    def build_model(cls, cfg):
        return cls.network_class().from_config(cfg.model)

    @classmethod
    def extras(cls, cfg, args, out: Path):
        """fn(pair, rgb, ir) -> {name: array} of per-image training targets beyond rgb/ir, or None."""
        return None

    @classmethod
    @abstractmethod
    def compute_loss(cls, model, batch: dict, cfg) -> tuple[Any, dict[str, float]]:
        """(scalar loss tensor, {part: float}) for one batch of tensors."""

    @classmethod
    def parameter_groups(cls, model, cfg) -> list[dict]:
        backbone = [p for n, p in model.named_parameters() if n.startswith("backbone.")]
        rest = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
        groups = [{"params": rest, "lr_scale": 1.0}]
        if backbone:
            # A backbone trained from scratch learns at the full rate; pretrained features are nudged gently.
            pretrained = getattr(model, "pretrained_tensors", 0) > 0
            groups.append({"params": backbone, "lr_scale": cfg.optim.backbone_lr_scale if pretrained else 1.0})
        return groups

    # ------------------------------------------------------------------------------------------------ options
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, verb: str) -> None:
        if verb == "train-irgen":
            parser.add_argument("--self-check", type=int, nargs="?", const=50, default=0, metavar="STEPS",
                                help="(tqd, decomp) do not train: run a forward/backward self-check on real crops and "
                                     "try to overfit one batch for STEPS steps (default 50), then print a diagnosis")

    # ----------------------------------------------------------------------------------------------- training
    @classmethod
    def load_train_config(cls, args: argparse.Namespace):
        from runtime.config import load_config
        return load_config(cls.train_config_class, getattr(args, "config", None), getattr(args, "overrides", []))

    @classmethod
    def train(cls, args: argparse.Namespace) -> int:
        torch = _torch()
        from runtime.config import save_config
        from teacher.irgen.data import PairedCrops, load_training_pairs

        cfg = cls.load_train_config(args)
        out = Path(args.out)
        device = getattr(args, "device", None) or "cpu"
        torch.manual_seed(args.seed)
        pairs = load_training_pairs(args.data, args.names)
        data = PairedCrops(pairs, cfg.data, extras=cls.extras(cfg, args, out))
        print(f"{cls.name}: {len(data)} training pairs from {args.data}", file=sys.stderr)
        if getattr(args, "self_check", 0):
            return cls.self_check(cfg, data, steps=args.self_check, device=device, seed=args.seed)

        checkpoint = out / "checkpoint"
        resume_from = checkpoint_to_resume(checkpoint, args.resume, out)
        model = cls.build_model(cfg).to(device)
        optimizer = torch.optim.AdamW(cls.parameter_groups(model, cfg), lr=cfg.optim.lr,
                                      weight_decay=cfg.optim.weight_decay)
        use_amp = cfg.train.amp and device.startswith("cuda")
        amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
        start = 0
        if resume_from is not None:
            start = load_training_state(resume_from, model, optimizer, scaler, device)
            print(f"{cls.name}: resuming {out} at step {start}", file=sys.stderr)
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "train_config.yaml")

        # An interrupted run may have logged steps after its last checkpoint; they are replayed now, so drop them.
        writer = _summary_writer(out / "tensorboard", purge_step=start if start else None)
        log_path = out / "train_log.jsonl"
        trim_log(log_path, start)
        from tqdm import tqdm
        progress = tqdm(range(start, cfg.train.steps), initial=start, total=cfg.train.steps, desc=f"train {cls.name}",
                        unit="step", dynamic_ncols=True, file=sys.stderr)
        schedule = warmup_cosine(cfg.optim.warmup_steps, cfg.train.steps, cfg.optim.min_lr_ratio)
        model.train()
        running: dict[str, float] = {}
        seen = 0
        started = time.time()
        try:
            for step in progress:
                lr_factor = schedule(step)
                set_learning_rate(optimizer, cfg.optim.lr, lr_factor)
                batch = to_tensors(data.batch(args.seed, step), device)
                with torch.autocast(device_type="cuda", dtype=amp_dtype, enabled=use_amp):
                    loss, parts = cls.compute_loss(model, batch, cfg)
                if not torch.isfinite(loss):
                    raise FusionError(f"the loss became {loss.item()} at step {step}; lower optim.lr or run "
                                      f"--self-check to see which part diverges")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.optim.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                for key, value in parts.items():
                    running[key] = running.get(key, 0.0) + value
                seen += 1
                done = step + 1
                if done % cfg.train.log_every == 0 or done == cfg.train.steps:
                    means = {k: v / seen for k, v in running.items()}
                    record = {"step": done, "lr": cfg.optim.lr * lr_factor, **means,
                              "seconds": round(time.time() - started, 1)}
                    with open(log_path, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(record) + "\n")
                    if writer is not None:
                        for key, value in means.items():
                            writer.add_scalar(f"loss/{key}", value, done)
                        writer.add_scalar("lr", record["lr"], done)
                    progress.set_postfix(loss=f"{means.get('loss', 0.0):.4f}")
                    running, seen = {}, 0
                if writer is not None and done % cfg.train.image_every == 0:
                    _log_images(writer, model, batch, done)
                if done % cfg.train.save_every == 0 or done == cfg.train.steps:
                    model.save_pretrained(out)
                    save_training_state(checkpoint, model, optimizer, scaler, done)
        finally:
            progress.close()
            if writer is not None:
                writer.close()
        print(f"{cls.name}: weights in {out} (config.json + model.safetensors); "
              f"use them with `fusion teacher synth-ir --generator {cls.name} --weights {out} ...`", file=sys.stderr)
        return 0

    # -------------------------------------------------------------------------------------------- self-check
    @classmethod
    def self_check(cls, cfg, data, steps: int = 50, device: str = "cpu", seed: int = 0) -> int:
        """Print a diagnosis of one forward/backward pass and of overfitting a single batch; 0 when healthy."""
        torch = _torch()
        model = cls.build_model(cfg).to(device).train()
        batch = to_tensors(data.batch(seed, 0), device)
        problems: list[str] = []
        print(f"self-check of {cls.name}: {model.num_parameters() / 1e6:.2f} M parameters, batch "
              f"{tuple(batch['rgb'].shape)} on {device}")
        for key, value in batch.items():
            v = value.float()
            print(f"  input {key:<10} {str(tuple(value.shape)):<22} min {v.min():.3f} max {v.max():.3f} "
                  f"mean {v.mean():.3f} std {v.std():.3f}")
        ir_std = batch["ir"].float().std().item()
        if ir_std < 1e-3:
            problems.append("the IR targets of the batch are constant: check the data folder and the crop size")
        loss, parts = cls.compute_loss(model, batch, cfg)
        print("  loss parts at init: " + ", ".join(f"{k} {v:.4f}" for k, v in parts.items()))
        if not torch.isfinite(loss):
            problems.append("the initial loss is not finite")
        with torch.no_grad():
            prediction = model(batch["rgb"])
            prediction = prediction[0] if isinstance(prediction, tuple) else prediction
            prediction = prediction.float()
        saturated = ((prediction < 0.01) | (prediction > 0.99)).float().mean().item()
        print(f"  prediction: shape {tuple(prediction.shape)} mean {prediction.mean():.3f} std {prediction.std():.4f} "
              f"saturated (<0.01 or >0.99) {saturated:.1%}")
        if tuple(prediction.shape) != tuple(batch["ir"].shape):
            problems.append(f"the prediction is {tuple(prediction.shape)} but the target is {tuple(batch['ir'].shape)}")
        if saturated > 0.5:
            problems.append("more than half the output sits on the flat ends of the sigmoid: gradients vanish there")
        model.zero_grad(set_to_none=True)
        loss.backward()
        dead, norms = [], {}
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            if param.grad is None or not torch.isfinite(param.grad).all() or param.grad.abs().max() == 0:
                dead.append(name)
                continue
            top = name.split(".")[0]
            norms[top] = norms.get(top, 0.0) + param.grad.float().pow(2).sum().item()
        print("  gradient norm by module: " + ", ".join(f"{k} {math.sqrt(v):.2e}" for k, v in norms.items()))
        if steps > 0:
            optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=0.0)
            losses = []
            for _ in range(steps):
                loss, _ = cls.compute_loss(model, batch, cfg)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                # Zero-initialised residual branches get their first gradient only after a step: a tensor counts
                # as unreached when no step of the check gave it one.
                dead = [n for n in dead if (p := dict(model.named_parameters())[n]).grad is None
                        or p.grad.abs().max() == 0]
                optimizer.step()
                losses.append(loss.item())
            first, last = losses[0], float(np.mean(losses[-max(1, steps // 10):]))
            print(f"  overfitting one batch for {steps} steps at lr {cfg.optim.lr:g}: loss {first:.4f} -> {last:.4f} "
                  f"({(1 - last / first) if first else 0:.0%} lower)")
            if not np.isfinite(losses).all():
                problems.append("the loss diverged while overfitting one batch: lower optim.lr")
            elif last > 0.9 * first:
                problems.append("the model cannot overfit a single batch: raise optim.lr, check the targets, or make "
                                "the model larger")
        if dead:
            print(f"  parameters that never got a gradient ({len(dead)}): {', '.join(dead[:8])}"
                  + (" ..." if len(dead) > 8 else ""))
            problems.append(f"{len(dead)} parameter tensor(s) get no gradient (first: {dead[0]}): they are not "
                            f"connected to the loss" + ("" if steps else " (or start zero-initialised; pass "
                                                                   "--self-check STEPS to look after a few steps)"))
        if problems:
            print("PROBLEMS:\n" + "\n".join(f"  - {p}" for p in problems))
            return 1
        print("OK: finite loss, gradients reach every module, and one batch can be overfitted")
        return 0

    # ---------------------------------------------------------------------------------------------- inference
    @classmethod
    def from_pretrained(cls, folder, device: str = "cpu", args: argparse.Namespace | None = None):
        return cls(cls.network_class().from_pretrained(folder, device=device), device=device)

    def _forward(self, rgb: np.ndarray):
        """rgb (H,W,3) float [0,1] -> (network input tensor (1,3,h,w), raw model output) at the model's scale."""
        torch = _torch()
        from teacher.irgen.data import resize_by
        scaled = resize_by(np.asarray(rgb, dtype=np.float32), self.model.config.input_scale)
        x = torch.from_numpy(np.ascontiguousarray(scaled.transpose(2, 0, 1)))[None].to(self.device)
        with torch.no_grad(), torch.autocast(device_type="cuda", enabled=str(self.device).startswith("cuda")):
            return x, self.model(x)

    def generate(self, rgb: np.ndarray | None, seed: int = 0, prompt: str | None = None) -> np.ndarray:
        if rgb is None:
            raise FusionError(f"the '{self.name}' generator needs an RGB image")
        import cv2
        _, out = self._forward(rgb)
        ir = (out[0] if isinstance(out, tuple) else out)[0, 0].float().cpu().numpy()
        if ir.shape != rgb.shape[:2]:
            ir = cv2.resize(ir, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
        return np.clip(ir, 0.0, 1.0)

    def settings(self) -> dict[str, Any]:
        from runtime.config import config_to_dict
        return {"generator": self.name, "model": config_to_dict(self.model.config),
                "parameters": self.model.num_parameters()}


# -------------------------------------------------------------------------------------------------- helpers
def to_tensors(batch: dict[str, np.ndarray], device: str) -> dict:
    torch = _torch()
    return {k: torch.from_numpy(v).to(device) for k, v in batch.items()}


def _summary_writer(folder: Path, purge_step: int | None = None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("note: tensorboard is not installed; losses go to train_log.jsonl only", file=sys.stderr)
        return None
    return SummaryWriter(str(folder), purge_step=purge_step)


def trim_log(log_path: Path, last_step: int) -> None:
    """Keep only the records of `train_log.jsonl` up to `last_step` (the checkpoint a run resumes from), so the log
    of a resumed run has each step once, as if it had never been interrupted. Rewritten atomically."""
    if not log_path.is_file():
        return
    lines = log_path.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= last_step]
    if len(kept) == len(lines):
        return
    from runtime.imageio import write_text
    write_text(log_path, "".join(line + "\n" for line in kept))


def _log_images(writer, model, batch, step: int) -> None:
    torch = _torch()
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(batch["rgb"][:4])
        pred = (out[0] if isinstance(out, tuple) else out).float()
    model.train(was_training)
    grid = torch.cat((batch["rgb"][:4].float().mean(1, keepdim=True), batch["ir"][:4].float(), pred), dim=3)
    writer.add_images("rgb_gray | ir | prediction", grid.clamp(0, 1), step)


def save_training_state(folder: Path, model, optimizer, scaler, step: int) -> None:
    """The resumable checkpoint (teacher.training_utils): the network as a `save_pretrained` folder, the optimizer,
    the grad scaler."""
    save_checkpoint(folder, step, optimizer=optimizer,
                    state={"scaler": scaler.state_dict() if scaler.is_enabled() else None},
                    write_model=model.save_pretrained)


def load_training_state(checkpoint: Checkpoint, model, optimizer, scaler, device: str) -> int:
    """Restore what `save_training_state` wrote; the step to continue from."""
    trained = type(model).from_pretrained(checkpoint.folder, device=device)
    model.load_state_dict(trained.state_dict())
    checkpoint.restore_optimizer(optimizer)
    if checkpoint.state.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(checkpoint.state["scaler"])
    return checkpoint.step
