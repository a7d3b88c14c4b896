"""Distillation training: the student learns the teacher's fusions (plus source-driven terms) on augmented crops.

    fusion distill train --config configs/distill/default.yaml [key=value ...]
    torchrun --nproc_per_node 2 -m distill.train --config ...       # DDP (gloo on CPU, NCCL on GPUs)

A run folder holds: config.yaml (the resolved config), last/ (model + EMA + optimizer + trainer state, for resuming),
best/ (the EMA weights with the best validation score, a student folder for `load_student`), tb/ (TensorBoard
scalars and IR | VIS | teacher | student grids) and train_log.jsonl. Training is step-based; every epoch's data
order and augmentation draws follow from (seed, rank, epoch), so a resumed run continues exactly where an
uninterrupted one would have been.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from distill.data import AugmentConfig
from distill.losses import LossWeights
from runtime.errors import FusionError


# ------------------------------------------------------------------------------------------------------------ config
@dataclass
class DataSetSpec:
    """One training set of several (data.sets): its pairs, targets, and how often each pair is drawn an epoch."""
    root: str = ""
    names: str = "train.txt"
    teacher_dir: str = ""                        # "" : root/TEACHER_FUSED (unused with data.online_teacher)
    repeat: int = 1                              # draws per pair per epoch (balances a small set)


@dataclass
class DataSection:
    root: str = "../shared/data/roadscene"       # dataset folder with ir/ and vi/
    names: str = "train.txt"                     # split file; relative paths are looked up in `root` first
    teacher_dir: str = "build/teacher/roadscene/TEACHER_FUSED"  # teacher targets; "" means root/TEACHER_FUSED
    val_fraction: float = 0.1                    # validation pairs carved out of `names` (never from test.txt)
    batch_size: int = 8                          # per process
    workers: int = 0
    # where crops are augmented: cpu (albumentations, per crop, in `workers`), gpu (the set held on the training
    # device, batches augmented there by kornia: distill/gpu_augment.py), auto (gpu when training on CUDA)
    augment_device: str = "auto"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    sets: List[DataSetSpec] = field(default_factory=list)  # several training sets; empty: root/names/teacher_dir
    online_teacher: str = ""                     # a fast registered teacher that makes the targets from each
                                                 # augmented batch ("" : read targets from teacher_dir)
    online_teacher_options: Dict[str, float] = field(default_factory=dict)  # its settings, e.g. {detail_gain: 1.1}
    max_side: int = 0                            # downscale larger frames once at load (0: keep)


@dataclass
class ModelSection:
    variant: str = "nano"
    vis_channels: int = 1                        # 3: RGB in / RGB out


@dataclass
class OptimSection:
    lr: float = 3e-3
    weight_decay: float = 1e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.99])
    warmup_steps: int = 100                      # linear learning-rate warm-up, then cosine decay
    min_lr_ratio: float = 0.02                   # final learning rate as a fraction of lr
    grad_clip: float = 1.0                       # max gradient norm (0: off)
    ema_decay: float = 0.998
    amp: bool = True                             # mixed precision on CUDA (ignored on CPU)


@dataclass
class LossSection(LossWeights):
    vgg_weights: str = ""                        # local VGG-16 weights for the perceptual term ("" : term off)
    teacher_features: str = ""                   # a registered teacher run online for feature distillation


@dataclass
class TrainConfig:
    run_dir: str = "runs/distill/default"
    seed: int = 0
    steps: int = 3000
    val_every: int = 250
    save_every: int = 250
    log_every: int = 25
    image_every: int = 500                       # 0: no preview images (val/save/log_every 0: only at the end)
    device: str = "auto"                         # auto, cpu, cuda, cuda:1
    threads: int = 0                             # torch CPU threads (0: torch's default)
    resume: bool = True                          # continue from run_dir/last when it exists
    max_minutes: float = 0.0                     # stop (saving last/) after this much wall time; 0: no limit
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimSection = field(default_factory=OptimSection)
    loss: LossSection = field(default_factory=LossSection)


def load_train_config(path: Optional[str], overrides=()) -> TrainConfig:
    from runtime.config import load_config
    return load_config(TrainConfig, path, overrides, sections=("distill",))


# ------------------------------------------------------------------------------------------------------ distributed
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; without them this is a single process."""
    import torch
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and not device_name.startswith("cpu")
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(name: str, dist_info: Dist):
    import torch
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise FusionError("device 'cuda' was asked for but no CUDA GPU is available; use device=cpu")
        if name == "cuda":
            # set_device needs an index: this process's GPU under torchrun, else the current one
            name = f"cuda:{dist_info.local_rank if dist_info.world > 1 else torch.cuda.current_device()}"
        torch.cuda.set_device(torch.device(name))
    return torch.device(name)


# --------------------------------------------------------------------------------------------------------------- EMA
class ModelEMA:
    """Exponential moving average of a model's parameters (buffers copied), with the usual warm-up of the decay."""

    def __init__(self, model, decay: float):
        import copy
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    def update(self, model) -> None:
        import torch
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            ema_state = self.module.state_dict()
            for name, value in model.state_dict().items():
                target = ema_state[name]
                if value.dtype.is_floating_point:
                    target.mul_(decay).add_(value.detach(), alpha=1 - decay)
                else:
                    target.copy_(value)


# ------------------------------------------------------------------------------------------------------ checkpoints
def _optimizer_to_flat(optimizer) -> tuple[dict, dict]:
    """An optimizer state dict as (tensors for safetensors, JSON-able rest): no pickles."""
    import torch
    state = optimizer.state_dict()
    tensors, meta = {}, {"param_groups": state["param_groups"], "state": {}}
    for index, entry in state["state"].items():
        meta["state"][str(index)] = []
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
                meta["state"][str(index)].append(key)
            else:
                meta["state"][str(index)].append({key: value})
    return tensors, meta


def _optimizer_from_flat(tensors: dict, meta: dict) -> dict:
    state = {}
    for index, keys in meta["state"].items():
        entry = {}
        for key in keys:
            if isinstance(key, dict):
                entry.update(key)
            else:
                entry[key] = tensors[f"{index}.{key}"]
        state[int(index)] = entry
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(folder: Path, model, ema: ModelEMA, optimizer, scheduler, scaler, step: int, best: float,
                    metadata: dict) -> None:
    """Write run/last atomically: build last.partial/, then swap it in."""
    from safetensors.torch import save_file

    from distill.models import save_student
    from runtime.imageio import write_json
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    save_student(model, partial, metadata=metadata)
    save_file({k: v.detach().cpu().contiguous() for k, v in ema.module.state_dict().items()},
              str(partial / "ema.safetensors"))
    tensors, meta = _optimizer_to_flat(optimizer)
    save_file(tensors, str(partial / "optimizer.safetensors"))
    write_json(partial / "trainer_state.json", {
        "step": step, "best_score": best, "ema_updates": ema.updates, "optimizer": meta,
        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None})
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    partial.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(run_dir: Path) -> Optional[Path]:
    for name in ("last", "last.old"):  # last.old survives a crash in the middle of the swap
        if (run_dir / name / "trainer_state.json").is_file():
            return run_dir / name
    return None


def load_checkpoint(folder: Path, model, ema: ModelEMA, optimizer, scheduler, scaler) -> tuple[int, float]:
    from safetensors.torch import load_file

    from distill.models import check_state_dict
    state = load_file(str(folder / "model.safetensors"))
    check_state_dict(model, state, str(folder))
    model.load_state_dict(state)
    ema.module.load_state_dict(load_file(str(folder / "ema.safetensors")))
    trainer = json.loads((folder / "trainer_state.json").read_text())
    optimizer.load_state_dict(_optimizer_from_flat(load_file(str(folder / "optimizer.safetensors")),
                                                   trainer["optimizer"]))
    scheduler.load_state_dict(trainer["scheduler"])
    if scaler is not None and trainer.get("scaler"):
        scaler.load_state_dict(trainer["scaler"])
    ema.updates = trainer["ema_updates"]
    return int(trainer["step"]), float(trainer["best_score"])


# -------------------------------------------------------------------------------------------------------------- data
def resolve_names(root: Path, names: str) -> Path:
    path = Path(names)
    if not path.is_absolute() and (root / path).is_file():
        return root / path
    if path.is_file():
        return path
    raise FusionError(f"split file not found: {names} (looked in {root} and the current folder)")


def training_sets(cfg: TrainConfig) -> List[DataSetSpec]:
    if cfg.data.sets:
        return list(cfg.data.sets)
    return [DataSetSpec(root=cfg.data.root, names=cfg.data.names, teacher_dir=cfg.data.teacher_dir)]


def build_datasets(cfg: TrainConfig):
    """The training set (every set of data.sets, each pair repeated as its set says) and the validation set (the
    val_fraction carved out of each set's names; never a test or validation list)."""
    from distill.data import FusionPairs, PairAugment, split_train_val
    from runtime.imageio import discover_pairs, read_names
    online = bool(cfg.data.online_teacher)
    if online and cfg.model.vis_channels != 1:
        raise FusionError("data.online_teacher makes luminance targets; it needs model.vis_channels=1")
    train_pairs, repeats, val_pairs = [], [], []
    for spec in training_sets(cfg):
        root = Path(spec.root)
        names_file = resolve_names(root, spec.names)
        if names_file.name in ("test.txt", "val.txt"):
            raise FusionError(f"refusing to train on {names_file}: {names_file.name} is for evaluation only; "
                              f"use a train.txt")
        names = read_names(names_file)
        train_names, val_names = split_train_val(names, cfg.data.val_fraction, cfg.seed)
        teacher_dir = None if online else (spec.teacher_dir or None)
        if teacher_dir is not None and not Path(teacher_dir).is_dir():
            raise FusionError(f"teacher targets not found at {teacher_dir}; build them with `make targets` "
                              f"(fusion teacher fuse --teacher em ...) or set data.teacher_dir")
        pairs = discover_pairs(root, names=names, teacher_dir=teacher_dir, require_target=not online)
        by_name = {p.name: p for p in pairs}
        train_pairs += [by_name[n] for n in train_names]
        repeats += [spec.repeat] * len(train_names)
        val_pairs += [by_name[n] for n in val_names]
    train_set = FusionPairs(train_pairs, PairAugment(cfg.data.augment, seed=cfg.seed),
                            vis_channels=cfg.model.vis_channels, targets=not online, max_side=cfg.data.max_side,
                            repeats=repeats)
    val_set = FusionPairs(val_pairs, None, vis_channels=cfg.model.vis_channels, targets=not online,
                          max_side=cfg.data.max_side) if val_pairs else None
    return train_set, val_set


def online_targets(teacher, ir, vis):
    """The teacher's fusion of a (possibly augmented) batch: (N, 1, H, W) x 2 -> (N, 1, H, W), no gradient."""
    import torch
    with torch.no_grad():
        return teacher.fuse_batch(ir.float(), vis.float()).clamp(0, 1)


def epoch_loader(train_set, cfg: TrainConfig, dist_info: Dist, epoch: int):
    """The DataLoader of one epoch: its order and augmentation draws depend only on (seed, rank, epoch)."""
    import torch
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

    from distill.data import worker_init
    generator = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
    if dist_info.world > 1:
        sampler = DistributedSampler(train_set, num_replicas=dist_info.world, rank=dist_info.rank, shuffle=True,
                                     seed=cfg.seed, drop_last=True)
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(train_set, generator=generator)
    if cfg.data.workers == 0:
        train_set.augment.reseed(cfg.seed * 7919 + dist_info.rank * 1009 + epoch * 31)
    return DataLoader(train_set, batch_size=cfg.data.batch_size, sampler=sampler, drop_last=True,
                      num_workers=cfg.data.workers, worker_init_fn=worker_init, generator=generator,
                      persistent_workers=False)


def batches_per_epoch(train_set, cfg: TrainConfig, dist_info: Dist) -> int:
    per_rank = len(train_set) // dist_info.world
    count = per_rank // cfg.data.batch_size
    if count == 0:
        raise FusionError(f"batch size {cfg.data.batch_size} is larger than the {per_rank} training pairs per process;"
                          f" lower data.batch_size")
    return count


# -------------------------------------------------------------------------------------------------------- validation
def validate(model, val_set, device, teacher=None) -> dict:
    """Full-size validation images, one at a time: L1, SSIM and PSNR to the teacher; score = SSIM - L1.
    With `teacher` (online targets) the target is the teacher's fusion of the whole frame."""
    import torch

    from distill.losses import l1, ssim
    model.eval()
    totals = {"l1": 0.0, "ssim": 0.0, "psnr": 0.0}
    with torch.no_grad():
        for item in val_set:
            ir, vis = item["ir"][None].to(device), item["vis"][None].to(device)
            target = online_targets(teacher, ir, vis) if teacher is not None else item["target"][None].to(device)
            fused = model(ir, vis)
            mse = float(((fused - target) ** 2).mean())
            totals["l1"] += float(l1(fused, target))
            totals["ssim"] += float(ssim(fused, target))
            totals["psnr"] += 10 * math.log10(1.0 / max(mse, 1e-10))
    out = {k: v / len(val_set) for k, v in totals.items()}
    out["score"] = out["ssim"] - out["l1"]
    return out


def preview_grid(model, item, device, teacher=None):
    """IR | VIS | teacher | student side by side, (3, H, 4W) in [0, 1] (luminance shown as gray)."""
    import torch
    ir, vis = item["ir"][None].to(device), item["vis"][None].to(device)
    with torch.no_grad():
        fused = model(ir, vis)[0].cpu()
    target = online_targets(teacher, ir, vis)[0].cpu() if teacher is not None else item["target"]
    tiles = [item["ir"], item["vis"], target, fused]
    tiles = [t.expand(3, -1, -1) if t.shape[0] == 1 else t for t in tiles]
    return torch.cat(tiles, dim=2).clamp(0, 1)


# ----------------------------------------------------------------------------------------------------------- trainer
def lr_lambda(cfg: TrainConfig):
    warmup, total, floor = cfg.optim.warmup_steps, cfg.steps, cfg.optim.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def _with_features_class():
    import torch

    class WithFeatures(torch.nn.Module):
        def __init__(self, student):
            super().__init__()
            self.student = student

        def forward(self, ir, vis):
            return self.student.forward_with_features(ir, vis)
    return WithFeatures


def _WithFeatures(student):  # noqa: N802 - built lazily so importing this module does not import torch
    return _with_features_class()(student)


def every(step: int, period: int) -> bool:
    """True on the steps a periodic action is due; a period of 0 (or less) turns the action off."""
    return period > 0 and step % period == 0


def _log(message: str, dist_info: Dist) -> None:
    if dist_info.main:
        print(message, file=sys.stderr, flush=True)


def train(cfg: TrainConfig, feature_teacher=None) -> dict:
    """Run (or resume) training as `cfg` says. Returns a summary dict (rank 0's view).

    feature_teacher: an object with `features(ir, vis) -> [tensors]` (torch batches), for feature distillation;
    by default it is looked up from cfg.loss.teacher_features.
    """
    import torch

    from distill.losses import FeatureDistillationLoss, FusionLoss, PerceptualLoss
    from distill.models import create_student, save_student
    from runtime.config import config_hash, save_config

    dist_info = init_distributed(cfg.device)
    device = pick_device(cfg.device, dist_info)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    run_dir = Path(cfg.run_dir)
    if dist_info.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")

    train_set, val_set = build_datasets(cfg)
    _log(f"data: {len(train_set)} training pairs, {len(val_set) if val_set else 0} validation pairs "
         f"(carved from {cfg.data.names}), {dist_info.world} process(es) on {device}", dist_info)

    device_batches = None
    from distill.gpu_augment import resolve_augment_device
    if resolve_augment_device(cfg.data.augment_device, device) == "gpu":
        from distill.gpu_augment import DeviceBatches
        device_batches = DeviceBatches(train_set, cfg.data.augment, device, seed=cfg.seed, rank=dist_info.rank,
                                       batch_size=cfg.data.batch_size, log=lambda msg: _log(msg, dist_info))
        _log(f"augmentation: on {device} (kornia), batch {cfg.data.batch_size}", dist_info)

    model = create_student(cfg.model.variant, vis_channels=cfg.model.vis_channels).to(device)
    ema = ModelEMA(model, cfg.optim.ema_decay)

    # loss terms that need something the run may not have say so once, then stay off
    log = (lambda msg: _log(msg, dist_info))
    perceptual = PerceptualLoss.from_path(cfg.loss.vgg_weights, log=log) if cfg.loss.perceptual > 0 else None
    if perceptual is not None:
        perceptual = perceptual.to(device)
    feature_loss = None
    if cfg.loss.feature > 0:
        if feature_teacher is None and cfg.loss.teacher_features:
            from teacher.registry import load_teacher_class
            feature_teacher = load_teacher_class(cfg.loss.teacher_features, "fusion")()
        if feature_teacher is None or not hasattr(feature_teacher, "features"):
            name = cfg.loss.teacher_features or "the teacher behind the targets"
            log(f"feature distillation: off ({name} exposes no intermediate features; the targets are images only)")
            feature_teacher = None
        else:
            probe = torch.zeros(1, 1, 64, 64, device=device)
            teacher_channels = [f.shape[1] for f in feature_teacher.features(probe, probe)]
            feature_loss = FeatureDistillationLoss(model.feature_channels[:len(teacher_channels)],
                                                   teacher_channels).to(device)
    criterion = FusionLoss(cfg.loss, perceptual=perceptual, feature=feature_loss)
    target_teacher = None
    if cfg.data.online_teacher:
        from teacher.registry import load_teacher_class
        teacher_class = load_teacher_class(cfg.data.online_teacher, ("fusion", "baseline"))
        try:
            target_teacher = teacher_class(device=str(device), **cfg.data.online_teacher_options)
        except TypeError as exc:
            raise FusionError(f"data.online_teacher_options {cfg.data.online_teacher_options} do not fit the "
                              f"'{cfg.data.online_teacher}' teacher ({exc})") from None
        settings = f" with {cfg.data.online_teacher_options}" if cfg.data.online_teacher_options else ""
        log(f"targets: made online by the '{cfg.data.online_teacher}' teacher{settings} from each augmented batch")

    params = list(model.parameters()) + (list(feature_loss.parameters()) if feature_loss is not None else [])
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                  betas=tuple(cfg.optim.betas))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    use_amp = cfg.optim.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if use_amp and amp_dtype == torch.float16 else None

    start_step, best_score = 0, -math.inf
    checkpoint = find_checkpoint(run_dir) if cfg.resume else None
    if checkpoint is not None:
        start_step, best_score = load_checkpoint(checkpoint, model, ema, optimizer, scheduler, scaler)
        _log(f"resumed from {checkpoint} at step {start_step}", dist_info)
    if start_step >= cfg.steps:
        _log(f"nothing to do: the run is at step {start_step} of {cfg.steps} (raise steps= to train longer)",
             dist_info)
        return {"step": start_step, "best_score": best_score, "run_dir": str(run_dir)}

    # DDP wraps a module whose forward also returns the features, so feature distillation keeps gradient sync
    train_model = _WithFeatures(model)
    if dist_info.world > 1:
        from torch.nn.parallel import DistributedDataParallel
        train_model = DistributedDataParallel(train_model,
                                              device_ids=[device.index] if device.type == "cuda" else None)

    writer = None
    if dist_info.main:
        try:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_step)
        except ImportError:
            log("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
    progress = None
    if dist_info.main:
        from tqdm import tqdm
        progress = tqdm(total=cfg.steps, initial=start_step, desc="distill", unit="step", dynamic_ncols=True,
                        file=sys.stderr)

    if device_batches is not None:
        from distill.gpu_augment import batches_per_epoch as device_batches_per_epoch
        per_epoch = device_batches_per_epoch(len(train_set), cfg.data.batch_size, dist_info.world)
    else:
        per_epoch = batches_per_epoch(train_set, cfg, dist_info)
    metadata = {"config_hash": config_hash(cfg), "names": [f"{s.root}/{s.names}" for s in training_sets(cfg)],
                "teacher": cfg.data.online_teacher or [s.teacher_dir for s in training_sets(cfg)]}
    step, epoch = start_step, start_step // per_epoch
    skip = start_step % per_epoch
    started = time.time()
    log_file = run_dir / "train_log.jsonl"
    last_val: dict = {}
    running: dict = {}
    stop = False
    model.train()
    while step < cfg.steps and not stop:
        batches = device_batches.epoch(epoch, per_epoch, skip) if device_batches is not None else \
            epoch_loader(train_set, cfg, dist_info, epoch)
        for batch_index, batch in enumerate(batches):
            if batch_index < skip:
                continue
            ir, vis = batch["ir"].to(device, non_blocking=True), batch["vis"].to(device, non_blocking=True)
            target = online_targets(target_teacher, ir, vis) if target_teacher is not None else \
                batch["target"].to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp):
                fused, student_features = train_model(ir, vis)
                teacher_features = feature_teacher.features(ir, vis) if feature_loss is not None else None
            loss, terms = criterion(fused.float(), target, ir, vis, step, student_features, teacher_features)
            if not torch.isfinite(loss):
                raise FusionError(f"the loss became {float(loss)} at step {step}; lower optim.lr or check the data")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip) if cfg.optim.grad_clip > 0 \
                else torch.tensor(0.0)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            ema.update(model)
            step += 1

            for name, value in {"loss": float(loss.detach()), **terms}.items():
                running[name] = running.get(name, 0.0) + value
            running["_n"] = running.get("_n", 0) + 1
            if progress is not None:
                progress.update(1)
            if every(step, cfg.log_every) and dist_info.main:
                means = {k: v / running["_n"] for k, v in running.items() if k != "_n"}
                running = {}
                lr = scheduler.get_last_lr()[0]
                progress.set_postfix(loss=f"{means['loss']:.4f}", lr=f"{lr:.2e}")
                if writer is not None:
                    for k, v in means.items():
                        writer.add_scalar(f"train/{k}", v, step)
                    writer.add_scalar("train/lr", lr, step)
                    writer.add_scalar("train/grad_norm", float(grad_norm), step)
                with open(log_file, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"step": step, "lr": lr, "elapsed_s": round(time.time() - started, 1),
                                         **{k: round(v, 6) for k, v in means.items()}}) + "\n")

            out_of_time = cfg.max_minutes > 0 and (time.time() - started) > cfg.max_minutes * 60
            if dist_info.world > 1:
                flag = torch.tensor([1.0 if out_of_time else 0.0], device=device)
                torch.distributed.all_reduce(flag)
                out_of_time = bool(flag.item() > 0)
            finished = step >= cfg.steps or out_of_time
            if dist_info.main:
                if val_set is not None and (every(step, cfg.val_every) or finished):
                    last_val = validate(ema.module, val_set, device, target_teacher)
                    if writer is not None:
                        for k, v in last_val.items():
                            writer.add_scalar(f"val/{k}", v, step)
                    if last_val["score"] > best_score:
                        best_score = last_val["score"]
                        save_student(ema.module, run_dir / "best",
                                     metadata={**metadata, "step": step, "val": last_val})
                    with open(log_file, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps({"step": step, "val": last_val, "best_score": best_score}) + "\n")
                    _log(f"step {step}: val L1 {last_val['l1']:.4f} SSIM {last_val['ssim']:.4f} "
                         f"PSNR {last_val['psnr']:.2f} (best score {best_score:.4f})", dist_info)
                if writer is not None and val_set is not None and cfg.image_every > 0 and \
                        (every(step, cfg.image_every) or finished):
                    writer.add_image("val/ir_vis_teacher_student", preview_grid(ema.module, val_set[0], device,
                                                                                 target_teacher), step)
                if val_set is None and finished:
                    save_student(ema.module, run_dir / "best", metadata={**metadata, "step": step})
                if every(step, cfg.save_every) or finished:
                    save_checkpoint(run_dir / "last", model, ema, optimizer, scheduler, scaler, step, best_score,
                                    metadata={**metadata, "step": step})
                model.train()
            if finished:
                if out_of_time and step < cfg.steps:
                    _log(f"stopping at step {step}: max_minutes={cfg.max_minutes} reached; run the same command "
                         f"again to resume", dist_info)
                stop = True
                break
        skip = 0
        epoch += 1

    if progress is not None:
        progress.close()
    if writer is not None:
        writer.close()
    summary = {"step": step, "best_score": best_score, "val": last_val, "run_dir": str(run_dir),
               "train_minutes": round((time.time() - started) / 60, 2), "world_size": dist_info.world}
    if dist_info.world > 1:
        # every rank must end with the same weights (DDP averages the gradients); record that it did
        checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1).to(device)
        gathered = [torch.zeros_like(checksum) for _ in range(dist_info.world)]
        torch.distributed.all_gather(gathered, checksum)
        values = [float(g) for g in gathered]
        summary["ranks_in_sync"] = max(values) - min(values) < 1e-6 * max(1.0, abs(values[0]))
        torch.distributed.barrier()
    if dist_info.main:
        from runtime.imageio import write_json
        write_json(run_dir / "summary.json", summary)
    return summary


def main(argv=None) -> int:
    """Entry point for torchrun: python -m distill.train --config FILE [key=value ...]."""
    import argparse
    parser = argparse.ArgumentParser(prog="distill.train")
    parser.add_argument("--config", default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    try:
        train(load_train_config(args.config, args.overrides))
    except FusionError as exc:
        print(f"distill.train: error: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        try:
            import torch.distributed as dist
            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
        except ImportError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
