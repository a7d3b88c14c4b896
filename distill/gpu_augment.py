"""Training batches made on the device: the decoded training set held in (GPU) memory, augmented there in batches.

    batches = DeviceBatches(train_set, AugmentConfig(crop=128), device="cuda", seed=0)
    batch = batches.batch(step)          # {"ir": (B, 1, c, c), "vis": (B, C, c, c), "target": (B, C, c, c)}

The CPU path (distill/data.py PairAugment, albumentations, one crop at a time in DataLoader workers) cannot feed a
GPU: the issue measured 88 crops/s on an H100 with 6 workers. Here the same three stages run on whole batches:

1. geometry, identical for IR, VIS and the target: a random resized crop (albumentations' sampling: area fraction in
   [scale_min, scale_max], aspect ratio log-uniform in [3/4, 4/3], ten tries then a centre crop) read from the
   ragged set by `torchvision.ops.roi_align`, whose adaptive sampling averages the source pixels of each output
   pixel (what cv2.INTER_AREA does when shrinking, bilinear when enlarging) and which crops every image of the batch
   from its own size in one call; then `kornia.augmentation.RandomHorizontalFlip` on the stacked channels;
2. VIS only: `kornia.augmentation.ColorJitter` (torchvision's formulas, random order, like albumentations');
3. IR only: the misalignment `kornia.augmentation.RandomAffine` (shift, rotation, scale; reflected border), then
   Gaussian sensor noise with a per-image standard deviation uniform in [0, ir_noise_std].

kornia's own RandomResizedCrop needs equal-sized inputs and aliases when it shrinks, hence roi_align for step 1.
Every batch depends only on (seed, rank, step), so a resumed run draws what an uninterrupted one would have; the
draws are not the CPU path's (different generators), their distributions are (tests/test_gpu_augment.py).

AugmentConfig is read field by field: a field this module does not implement (a newer augmentation of the CPU path)
is reported once and ignored; use data.augment_device=cpu to train with it.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from runtime.errors import FusionError, require

AUGMENT_DEVICES = ("auto", "cpu", "gpu")

# The AugmentConfig fields this module implements, with the value used when a config lacks one.
IMPLEMENTED = {
    "crop": 192, "scale_min": 0.2, "scale_max": 1.0, "hflip": 0.5,
    "color_jitter": 0.5, "brightness": 0.15, "contrast": 0.15, "saturation": 0.2, "hue": 0.02,
    "ir_noise": 0.3, "ir_noise_std": 0.02,
    "misalign_prob": 0.3, "misalign_shift": 0.015, "misalign_rotate": 1.5, "misalign_scale": 0.02,
}
CROP_RATIO = (0.75, 1.333)    # as PairAugment
_WARNED: set = set()


def resolve_augment_device(choice: str, device) -> str:
    """'cpu' or 'gpu' for data.augment_device (auto: gpu when training on CUDA)."""
    if choice not in AUGMENT_DEVICES:
        raise FusionError(f"data.augment_device must be one of {', '.join(AUGMENT_DEVICES)}, got '{choice}'")
    if choice == "auto":
        return "gpu" if getattr(device, "type", str(device)).startswith("cuda") else "cpu"
    return choice


# the capture-condition stage (distill.data.ConditionAugment): not on the device yet; its fields only matter when one
# of its probabilities is on
CONDITION_PROBABILITIES = ("ir_agc", "vis_dark", "vis_glare", "vis_exposure")
CONDITION_PARAMETERS = ("ir_contrast_min", "ir_offset", "vis_dark_gain_min", "vis_noise_std")


def unimplemented_fields(config) -> list[str]:
    """The AugmentConfig fields the device path ignores (the condition stage's only when it is switched on)."""
    names = [f.name for f in dataclasses.fields(config)] if dataclasses.is_dataclass(config) else list(vars(config))
    conditions_on = any(getattr(config, name, 0) for name in CONDITION_PROBABILITIES)
    silent = () if conditions_on else CONDITION_PROBABILITIES + CONDITION_PARAMETERS
    return [name for name in names if name not in IMPLEMENTED and name not in silent]


def warn_unimplemented(config, log=None) -> list[str]:
    """Say once per field that the device path ignores it. Returns the fields ignored."""
    ignored = unimplemented_fields(config)
    new = [name for name in ignored if name not in _WARNED]
    if new:
        _WARNED.update(new)
        message = (f"augmentation on the device: {', '.join(new)} not implemented there and ignored "
                   f"(data.augment_device=cpu applies them)")
        (log or (lambda text: print(text, file=sys.stderr, flush=True)))(message)
    return ignored


class DeviceAugment:
    """Batched PairAugment on torch tensors of any device. Call with a crop box per sample (see `sample_boxes`)."""

    def __init__(self, config, log=None):
        kornia = require("kornia", "augmentation on the device")
        K = kornia.augmentation
        warn_unimplemented(config, log)
        value = {name: getattr(config, name, default) for name, default in IMPLEMENTED.items()}
        self.settings = value
        self.crop = int(value["crop"])
        self.scale = (float(value["scale_min"]), float(value["scale_max"]))
        self.flip = K.RandomHorizontalFlip(p=value["hflip"])
        self.jitter = K.ColorJitter(brightness=value["brightness"], contrast=value["contrast"],
                                    saturation=value["saturation"], hue=value["hue"], p=value["color_jitter"])
        shift = value["misalign_shift"]
        self.misalign = K.RandomAffine(degrees=value["misalign_rotate"], translate=(shift, shift),
                                       scale=(1 - value["misalign_scale"], 1 + value["misalign_scale"]),
                                       padding_mode="reflection", p=value["misalign_prob"])
        self.noise_p, self.noise_std = float(value["ir_noise"]), float(value["ir_noise_std"])

    def sample_boxes(self, heights, widths):
        """Random resized crop boxes (B, 4) as x1, y1, x2, y2 in pixels, for images of the given sizes (B,) tensors;
        albumentations' draw: ten tries of (area, log-ratio), the first that fits, else a centre crop."""
        import torch
        device = heights.device
        b, tries = heights.shape[0], 10
        h, w = heights.float()[:, None], widths.float()[:, None]
        area = h * w * torch.empty(b, tries, device=device).uniform_(*self.scale)
        log_ratio = torch.empty(b, tries, device=device).uniform_(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
        ratio = torch.exp(log_ratio)
        cw, ch = torch.round(torch.sqrt(area * ratio)), torch.round(torch.sqrt(area / ratio))
        fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
        first = torch.argmax(fits.int(), dim=1)           # the first try that fits (0 when none does)
        found = fits.any(dim=1)
        pick = lambda t: t.gather(1, first[:, None])[:, 0]  # noqa: E731
        cw, ch = pick(cw), pick(ch)
        # fallback: the centre crop with the ratio clamped to the allowed range
        in_ratio = w[:, 0] / h[:, 0]
        fw = torch.where(in_ratio < CROP_RATIO[0], w[:, 0],
                         torch.where(in_ratio > CROP_RATIO[1], torch.round(h[:, 0] * CROP_RATIO[1]), w[:, 0]))
        fh = torch.where(in_ratio < CROP_RATIO[0], torch.round(w[:, 0] / CROP_RATIO[0]), h[:, 0])
        cw, ch = torch.where(found, cw, fw), torch.where(found, ch, fh)
        top = torch.where(found, torch.floor(torch.rand(b, device=device) * (h[:, 0] - ch + 1)),
                          torch.floor((h[:, 0] - ch) / 2))
        left = torch.where(found, torch.floor(torch.rand(b, device=device) * (w[:, 0] - cw + 1)),
                           torch.floor((w[:, 0] - cw) / 2))
        return torch.stack((left, top, left + cw, top + ch), dim=1)

    def __call__(self, stack, index, boxes, channels: tuple[int, int, int], vis_rgb=None):
        """Crops of `stack` (N, 1 + Cv + Ct, H, W), images `index` (B,), `boxes` (B, 4) -> ir, vis, target.

        `vis_rgb` (B,) bool: which samples have a colour VIS (only those get the colour jitter)."""
        import torch
        from torchvision.ops import roi_align
        ir_c, vis_c, _ = channels
        rois = torch.cat((index.to(boxes.dtype)[:, None], boxes), dim=1).to(stack.dtype)
        crops = roi_align(stack, rois, output_size=(self.crop, self.crop), spatial_scale=1.0, sampling_ratio=-1,
                          aligned=True).float()
        crops = self.flip(crops)
        ir, vis, target = torch.split(crops, [ir_c, vis_c, crops.shape[1] - ir_c - vis_c], dim=1)
        if vis_c == 3:
            jittered = self.jitter(vis.clamp(0, 1))
            vis = jittered if vis_rgb is None else torch.where(vis_rgb[:, None, None, None], jittered, vis)
        ir = self.misalign(ir)
        if self.noise_p > 0 and self.noise_std > 0:
            b = ir.shape[0]
            std = torch.rand(b, device=ir.device) * self.noise_std
            std = torch.where(torch.rand(b, device=ir.device) < self.noise_p, std, torch.zeros_like(std))
            ir = ir + torch.randn_like(ir) * std[:, None, None, None]
        return ir.clamp(0, 1), vis.clamp(0, 1), target.clamp(0, 1)


class DeviceBatches:
    """A FusionPairs training set decoded once onto `device` (padded to one tensor by edge replication, so crops
    near an image's border never read padding) and served as augmented batches.

    Items per batch come from a stream of per-epoch permutations of the set (as a shuffled DataLoader), so the
    batch size may exceed the set size. vis_channels 1: VIS becomes luminance after the colour jitter, as on the
    CPU path.
    """

    def __init__(self, train_set, config, device, seed: int = 0, rank: int = 0, batch_size: int = 8, log=None):
        import numpy as np
        import torch
        import torch.nn.functional as F
        if not len(train_set.items):
            raise FusionError("no training pairs to put on the device")
        self.device = torch.device(device)
        self.seed, self.rank, self.batch_size = int(seed), int(rank), int(batch_size)
        self.vis_channels = int(train_set.vis_channels)
        self.augment = DeviceAugment(config, log=log)
        # float32: roi_align takes its boxes in the image's dtype, and fp16 would round box corners beyond 512 px to
        # half pixels. 171 RoadScene pairs (IR + RGB + target) take about 1 GB of GPU memory.
        dtype = torch.float32
        heights = [item[0].shape[0] for item in train_set.items]
        widths = [item[0].shape[1] for item in train_set.items]
        self.height, self.width = max(heights), max(widths)
        vis_c = 3 if any(item[1].ndim == 3 for item in train_set.items) else 1
        # targets made online (data.online_teacher) are absent: no target planes, batches without "target"
        online = any(item[2] is None for item in train_set.items)
        target_c = 0 if online else 3 if any(item[2].ndim == 3 for item in train_set.items) else 1
        self.channels = (1, vis_c, target_c)
        # an epoch draws each item as often as the set's repeats say (FusionPairs.index), like the CPU loader
        self.order = torch.tensor(getattr(train_set, "index", range(len(train_set.items))), dtype=torch.long)

        def planes(a: np.ndarray, c: int) -> "torch.Tensor":
            t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
            t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
            return t.expand(c, -1, -1) if t.shape[0] != c else t

        stack = torch.empty(len(train_set.items), sum(self.channels), self.height, self.width, dtype=dtype,
                            device=self.device)
        for k, (ir, vis, target) in enumerate(train_set.items):
            parts = (planes(ir, 1), planes(vis, vis_c)) + ((planes(target, target_c),) if target_c else ())
            item = torch.cat(parts, dim=0)[None]
            pad = (0, self.width - item.shape[3], 0, self.height - item.shape[2])
            stack[k] = F.pad(item, pad, mode="replicate")[0].to(self.device, dtype)
        self.stack = stack
        self.heights = torch.tensor(heights, device=self.device)
        self.widths = torch.tensor(widths, device=self.device)
        self.vis_rgb = torch.tensor([item[1].ndim == 3 for item in train_set.items], device=self.device)

    def __len__(self) -> int:
        return len(self.order)

    def indices(self, step: int):
        """The set indices of batch `step`: positions step*B .. step*B+B-1 of the endless shuffled stream."""
        import torch
        n, b = len(self), self.batch_size
        first, last = step * b, step * b + b
        epochs = range(first // n, (last - 1) // n + 1)
        stream = torch.cat([torch.randperm(n, generator=torch.Generator().manual_seed(
            self.seed * 1_000_003 + self.rank * 7919 + e)) for e in epochs])
        start = first - epochs[0] * n
        return self.order[stream[start:start + b]].to(self.device)

    def batch(self, step: int) -> dict:
        """The augmented batch of `step` (depends only on seed, rank and step)."""
        import torch

        from runtime.color import luminance
        index = self.indices(step)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed * 2_000_003 + self.rank * 104_729 + step)
            boxes = self.augment.sample_boxes(self.heights[index], self.widths[index])
            ir, vis, target = self.augment(self.stack, index, boxes, self.channels, self.vis_rgb[index])
        if self.vis_channels == 1 and vis.shape[1] == 3:
            vis = luminance(vis, channel_axis=1)
            vis = vis[:, None] if vis.ndim == 3 else vis
        if not self.channels[2]:
            return {"ir": ir.contiguous(), "vis": vis.contiguous()}
        if self.vis_channels == 1 and target.shape[1] == 3:
            target = luminance(target, channel_axis=1)
            target = target[:, None] if target.ndim == 3 else target
        return {"ir": ir.contiguous(), "vis": vis.contiguous(), "target": target.contiguous()}

    def epoch(self, epoch: int, per_epoch: int, skip: int = 0):
        """The batches of one epoch for the training loop (None for the skipped ones, which are never built)."""
        for index in range(per_epoch):
            yield None if index < skip else self.batch(epoch * per_epoch + index)


def batches_per_epoch(set_size: int, batch_size: int, world: int) -> int:
    """Steps per epoch on the device path: the batch may be larger than the set (then one step is one epoch)."""
    return max(1, (set_size // max(1, world)) // batch_size)


def crops_per_second(batches: DeviceBatches, steps: int = 20, warmup: int = 3) -> float:
    """Throughput of `batches.batch` (crops/s), synchronising the device around the timed steps."""
    import time

    import torch
    sync = torch.cuda.synchronize if batches.device.type == "cuda" else (lambda: None)
    for step in range(warmup):
        batches.batch(step)
    sync()
    start = time.perf_counter()
    for step in range(warmup, warmup + steps):
        batches.batch(step)
    sync()
    return steps * batches.batch_size / (time.perf_counter() - start)


__all__ = ["AUGMENT_DEVICES", "DeviceAugment", "DeviceBatches", "IMPLEMENTED", "batches_per_epoch",
           "crops_per_second", "resolve_augment_device", "unimplemented_fields", "warn_unimplemented"]
