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
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from distill.data import AugmentConfig
from distill.losses import LossWeights
from runtime.errors import FusionError
from teacher.training_utils import Checkpoint, ModelEMA, find_checkpoint, save_checkpoint, warmup_cosine


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
    options: Dict[str, int] = field(default_factory=dict)  # StudentConfig fields over the variant's, e.g.
                                                           # {guide_channels: 8, pyramid_levels: 1} (ablations)


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


# ------------------------------------------------------------------------------------------------------ checkpoints
# run/last is a checkpoint folder of teacher.training_utils that is also a student folder (config.json +
# model.safetensors, loadable by `load_student`), with ema.safetensors beside it.
def save_last(folder: Path, model, ema: ModelEMA, optimizer, scheduler, scaler, step: int, best: float,
              metadata: dict) -> None:
    from distill.models import save_student
    save_checkpoint(folder, step, tensors={"ema": ema.module.state_dict()}, optimizer=optimizer,
                    state={"best_score": best, "ema_updates": ema.updates, "scheduler": scheduler.state_dict(),
                           "scaler": scaler.state_dict() if scaler is not None else None},
                    write_model=lambda path: save_student(model, path, metadata=metadata))


def resume_last(checkpoint: Checkpoint, model, ema: ModelEMA, optimizer, scheduler, scaler) -> tuple[int, float]:
    """Restore everything `save_last` wrote; (step, best validation score)."""
    from distill.models import check_state_dict
    state = checkpoint.tensors("model")
    check_state_dict(model, state, str(checkpoint.folder))
    model.load_state_dict(state)
    ema.module.load_state_dict(checkpoint.tensors("ema"))
    checkpoint.restore_optimizer(optimizer)
    scheduler.load_state_dict(checkpoint.state["scheduler"])
    if scaler is not None and checkpoint.state.get("scaler"):
        scaler.load_state_dict(checkpoint.state["scaler"])
    ema.updates = checkpoint.state["ema_updates"]
    return checkpoint.step, float(checkpoint.state["best_score"])


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


@dataclass
class Precision:
    """Mixed precision on CUDA: bf16 where the GPU has it (no grad scaling), else fp16 with a grad scaler."""
    enabled: bool
    dtype: object
    scaler: object = None

    @classmethod
    def for_device(cls, amp: bool, device) -> "Precision":
        import torch
        enabled = amp and device.type == "cuda"
        dtype = torch.bfloat16 if enabled and torch.cuda.is_bf16_supported() else torch.float16
        return cls(enabled, dtype, torch.amp.GradScaler("cuda") if enabled and dtype == torch.float16 else None)


@dataclass
class StudentTraining:
    """What one optimisation step touches."""
    cfg: TrainConfig
    device: object
    model: object                                # the student
    ema: ModelEMA
    criterion: object
    optimizer: object = None
    scheduler: object = None
    precision: Optional[Precision] = None
    params: list = field(default_factory=list)   # what the optimizer steps (student + feature adapters)
    train_model: object = None                   # the student returning its features, DDP-wrapped when distributed
    feature_teacher: object = None               # set only when feature distillation is on
    target_teacher: object = None                # makes the targets online (data.online_teacher)


def start_run(cfg: TrainConfig):
    """(Dist, device, run folder): the process group, the device, seeds and threads; the resolved config saved."""
    import torch

    from runtime.config import save_config
    dist_info = init_distributed(cfg.device)
    device = pick_device(cfg.device, dist_info)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    run_dir = Path(cfg.run_dir)
    if dist_info.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    return dist_info, device, run_dir


def training_data(cfg: TrainConfig, device, dist_info: Dist):
    """(training set, validation set or None, DeviceBatches when crops are augmented on the device else None)."""
    from distill.gpu_augment import resolve_augment_device
    train_set, val_set = build_datasets(cfg)
    _log(f"data: {len(train_set)} training pairs, {len(val_set) if val_set else 0} validation pairs "
         f"(carved from {cfg.data.names}), {dist_info.world} process(es) on {device}", dist_info)
    device_batches = None
    if resolve_augment_device(cfg.data.augment_device, device) == "gpu":
        from distill.gpu_augment import DeviceBatches
        device_batches = DeviceBatches(train_set, cfg.data.augment, device, seed=cfg.seed, rank=dist_info.rank,
                                       batch_size=cfg.data.batch_size, log=lambda msg: _log(msg, dist_info))
        _log(f"augmentation: on {device} (kornia), batch {cfg.data.batch_size}", dist_info)
    return train_set, val_set, device_batches


def build_criterion(cfg: TrainConfig, model, device, feature_teacher, log):
    """(FusionLoss, the feature teacher or None). Loss terms that need something the run lacks say so once, then
    stay off."""
    import torch

    from distill.losses import FeatureDistillationLoss, FusionLoss, PerceptualLoss
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
        else:
            probe = torch.zeros(1, 1, 64, 64, device=device)
            teacher_channels = [f.shape[1] for f in feature_teacher.features(probe, probe)]
            feature_loss = FeatureDistillationLoss(model.feature_channels[:len(teacher_channels)],
                                                   teacher_channels).to(device)
    return FusionLoss(cfg.loss, perceptual=perceptual, feature=feature_loss), \
        (feature_teacher if feature_loss is not None else None)


def build_online_teacher(cfg: TrainConfig, device, log):
    """The registered teacher that makes each batch's targets (data.online_teacher), or None."""
    if not cfg.data.online_teacher:
        return None
    from teacher.registry import load_teacher_class
    teacher_class = load_teacher_class(cfg.data.online_teacher, ("fusion", "baseline"))
    try:
        target_teacher = teacher_class(device=str(device), **cfg.data.online_teacher_options)
    except TypeError as exc:
        raise FusionError(f"data.online_teacher_options {cfg.data.online_teacher_options} do not fit the "
                          f"'{cfg.data.online_teacher}' teacher ({exc})") from None
    settings = f" with {cfg.data.online_teacher_options}" if cfg.data.online_teacher_options else ""
    log(f"targets: made online by the '{cfg.data.online_teacher}' teacher{settings} from each augmented batch")
    return target_teacher


def build_optimizer(run: StudentTraining) -> None:
    """AdamW on the student (and the feature adapters), warm-up + cosine, mixed precision on CUDA."""
    import torch
    cfg = run.cfg
    feature = run.criterion.feature  # the feature-distillation adapters, when that term is on
    run.params = list(run.model.parameters()) + (list(feature.parameters()) if feature is not None else [])
    run.optimizer = torch.optim.AdamW(run.params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                      betas=tuple(cfg.optim.betas))
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(
        run.optimizer, warmup_cosine(cfg.optim.warmup_steps, cfg.steps, cfg.optim.min_lr_ratio))
    run.precision = Precision.for_device(cfg.optim.amp, run.device)


def wrap_for_training(model, dist_info: Dist, device):
    """The student returning its features too, DDP-wrapped when distributed (so feature distillation keeps the
    gradient sync)."""
    train_model = _WithFeatures(model)
    if dist_info.world > 1:
        from torch.nn.parallel import DistributedDataParallel
        train_model = DistributedDataParallel(train_model,
                                              device_ids=[device.index] if device.type == "cuda" else None)
    return train_model


def open_monitors(run_dir: Path, cfg: TrainConfig, start_step: int, dist_info: Dist, log):
    """(TensorBoard writer or None, tqdm bar or None): rank 0 only."""
    if not dist_info.main:
        return None, None
    writer = None
    try:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_step)
    except ImportError:
        log("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
    from tqdm import tqdm
    return writer, tqdm(total=cfg.steps, initial=start_step, desc="distill", unit="step", dynamic_ncols=True,
                        file=sys.stderr)


def train_step(run: StudentTraining, batch: dict, step: int):
    """One optimisation step on one batch: (loss, {term: value}, gradient norm)."""
    import torch
    device, precision, optimizer = run.device, run.precision, run.optimizer
    ir, vis = batch["ir"].to(device, non_blocking=True), batch["vis"].to(device, non_blocking=True)
    target = online_targets(run.target_teacher, ir, vis) if run.target_teacher is not None else \
        batch["target"].to(device, non_blocking=True)
    with torch.autocast(device_type=device.type, dtype=precision.dtype, enabled=precision.enabled):
        fused, student_features = run.train_model(ir, vis)
        teacher_features = run.feature_teacher.features(ir, vis) if run.feature_teacher is not None else None
    loss, terms = run.criterion(fused.float(), target, ir, vis, step, student_features, teacher_features)
    if not torch.isfinite(loss):
        raise FusionError(f"the loss became {float(loss)} at step {step}; lower optim.lr or check the data")
    optimizer.zero_grad(set_to_none=True)
    if precision.scaler is not None:
        precision.scaler.scale(loss).backward()
        precision.scaler.unscale_(optimizer)
    else:
        loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(run.params, run.cfg.optim.grad_clip) if run.cfg.optim.grad_clip > 0 \
        else torch.tensor(0.0)
    if precision.scaler is not None:
        precision.scaler.step(optimizer)
        precision.scaler.update()
    else:
        optimizer.step()
    run.scheduler.step()
    run.ema.update(run.model)
    return loss, terms, grad_norm


def log_training(running: dict, step: int, lr: float, grad_norm, progress, writer, log_file: Path,
                 started: float) -> None:
    """The means of the terms since the last log: to the bar, TensorBoard and train_log.jsonl."""
    means = {k: v / running["_n"] for k, v in running.items() if k != "_n"}
    progress.set_postfix(loss=f"{means['loss']:.4f}", lr=f"{lr:.2e}")
    if writer is not None:
        for k, v in means.items():
            writer.add_scalar(f"train/{k}", v, step)
        writer.add_scalar("train/lr", lr, step)
        writer.add_scalar("train/grad_norm", float(grad_norm), step)
    with open(log_file, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"step": step, "lr": lr, "elapsed_s": round(time.time() - started, 1),
                             **{k: round(v, 6) for k, v in means.items()}}) + "\n")


def out_of_time(cfg: TrainConfig, started: float, dist_info: Dist, device) -> bool:
    """max_minutes has passed (on any rank: they all stop together)."""
    import torch
    late = cfg.max_minutes > 0 and (time.time() - started) > cfg.max_minutes * 60
    if dist_info.world > 1:
        flag = torch.tensor([1.0 if late else 0.0], device=device)
        torch.distributed.all_reduce(flag)
        late = bool(flag.item() > 0)
    return late


def validate_and_save(run: StudentTraining, val_set, step: int, finished: bool, best_score: float, last_val: dict,
                      run_dir: Path, metadata: dict, writer, dist_info: Dist) -> tuple[dict, float]:
    """Rank 0's periodic work: validate the EMA (best/ when it improves), preview images, save last/.
    Returns (last validation, best score)."""
    from distill.models import save_student
    cfg, ema = run.cfg, run.ema
    if val_set is not None and (every(step, cfg.val_every) or finished):
        last_val = validate(ema.module, val_set, run.device, run.target_teacher)
        if writer is not None:
            for k, v in last_val.items():
                writer.add_scalar(f"val/{k}", v, step)
        if last_val["score"] > best_score:
            best_score = last_val["score"]
            save_student(ema.module, run_dir / "best", metadata={**metadata, "step": step, "val": last_val})
        with open(run_dir / "train_log.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": step, "val": last_val, "best_score": best_score}) + "\n")
        _log(f"step {step}: val L1 {last_val['l1']:.4f} SSIM {last_val['ssim']:.4f} "
             f"PSNR {last_val['psnr']:.2f} (best score {best_score:.4f})", dist_info)
    if writer is not None and val_set is not None and cfg.image_every > 0 and (every(step, cfg.image_every) or finished):
        writer.add_image("val/ir_vis_teacher_student", preview_grid(ema.module, val_set[0], run.device,
                                                                     run.target_teacher), step)
    if val_set is None and finished:
        save_student(ema.module, run_dir / "best", metadata={**metadata, "step": step})
    if every(step, cfg.save_every) or finished:
        save_last(run_dir / "last", run.model, ema, run.optimizer, run.scheduler, run.precision.scaler, step,
                  best_score, metadata={**metadata, "step": step})
    run.model.train()
    return last_val, best_score


def ranks_in_sync(model, device, dist_info: Dist) -> bool:
    """Every rank ends with the same weights (DDP averages the gradients): compare a checksum across ranks."""
    import torch
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1).to(device)
    gathered = [torch.zeros_like(checksum) for _ in range(dist_info.world)]
    torch.distributed.all_gather(gathered, checksum)
    values = [float(g) for g in gathered]
    torch.distributed.barrier()
    return max(values) - min(values) < 1e-6 * max(1.0, abs(values[0]))


def train(cfg: TrainConfig, feature_teacher=None) -> dict:
    """Run (or resume) training as `cfg` says. Returns a summary dict (rank 0's view).

    feature_teacher: an object with `features(ir, vis) -> [tensors]` (torch batches), for feature distillation;
    by default it is looked up from cfg.loss.teacher_features.
    """
    from distill.models import create_student, student_config
    from runtime.config import config_hash

    if not student_config(cfg.model.variant, vis_channels=cfg.model.vis_channels, **cfg.model.options).network:
        raise FusionError(f"student '{cfg.model.variant}' has no network (model.options network: false): nothing to "
                          f"train; `make weights-rule` writes such a model as it is")
    dist_info, device, run_dir = start_run(cfg)
    train_set, val_set, device_batches = training_data(cfg, device, dist_info)
    model = create_student(cfg.model.variant, vis_channels=cfg.model.vis_channels, **cfg.model.options).to(device)
    ema = ModelEMA(model, cfg.optim.ema_decay)
    log = (lambda msg: _log(msg, dist_info))
    criterion, feature_teacher = build_criterion(cfg, model, device, feature_teacher, log)
    run = StudentTraining(cfg, device, model, ema, criterion, feature_teacher=feature_teacher,
                          target_teacher=build_online_teacher(cfg, device, log))
    build_optimizer(run)

    start_step, best_score = 0, -math.inf
    checkpoint = find_checkpoint(run_dir / "last") if cfg.resume else None
    if checkpoint is not None:
        start_step, best_score = resume_last(checkpoint, model, ema, run.optimizer, run.scheduler,
                                             run.precision.scaler)
        log(f"resumed from {checkpoint.folder} at step {start_step}")
    if start_step >= cfg.steps:
        log(f"nothing to do: the run is at step {start_step} of {cfg.steps} (raise steps= to train longer)")
        return {"step": start_step, "best_score": best_score, "run_dir": str(run_dir)}

    run.train_model = wrap_for_training(model, dist_info, device)
    writer, progress = open_monitors(run_dir, cfg, start_step, dist_info, log)
    if device_batches is not None:
        from distill.gpu_augment import batches_per_epoch as device_batches_per_epoch
        per_epoch = device_batches_per_epoch(len(train_set), cfg.data.batch_size, dist_info.world)
    else:
        per_epoch = batches_per_epoch(train_set, cfg, dist_info)
    metadata = {"config_hash": config_hash(cfg), "names": [f"{s.root}/{s.names}" for s in training_sets(cfg)],
                "teacher": cfg.data.online_teacher or [s.teacher_dir for s in training_sets(cfg)]}
    step, epoch, skip = start_step, start_step // per_epoch, start_step % per_epoch
    started = time.time()
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
            loss, terms, grad_norm = train_step(run, batch, step)
            step += 1
            for name, value in {"loss": float(loss.detach()), **terms}.items():
                running[name] = running.get(name, 0.0) + value
            running["_n"] = running.get("_n", 0) + 1
            if progress is not None:
                progress.update(1)
            if every(step, cfg.log_every) and dist_info.main:
                log_training(running, step, run.scheduler.get_last_lr()[0], grad_norm, progress, writer,
                             run_dir / "train_log.jsonl", started)
                running = {}
            late = out_of_time(cfg, started, dist_info, device)
            finished = step >= cfg.steps or late
            if dist_info.main:
                last_val, best_score = validate_and_save(run, val_set, step, finished, best_score, last_val, run_dir,
                                                         metadata, writer, dist_info)
            if finished:
                if late and step < cfg.steps:
                    log(f"stopping at step {step}: max_minutes={cfg.max_minutes} reached; run the same command "
                        f"again to resume")
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
        summary["ranks_in_sync"] = ranks_in_sync(model, device, dist_info)
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
