"""ResNet-18/34/50 backbones written in the project (no torchvision), returning multi-scale features.

Parameter names follow torchvision's ResNet (`conv1`, `bn1`, `layer1.0.conv1`, ...), so an ImageNet checkpoint the
user already has on disk (torchvision `resnet18-*.pth`, or a timm/HF `model.safetensors` of `resnet18`/`resnet50`)
loads directly with `load_imagenet_weights`. Nothing is ever downloaded: without a local file the backbone starts
from random initialisation and the generator trains from scratch.

Shapes: input (N, 3, H, W) normalised RGB; `forward` returns {"res2": 1/4, "res3": 1/8, "res4": 1/16, "res5": 1/32}
with `channels[name]` channels each.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from runtime.errors import FusionError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# depth -> (block type, blocks per stage)
ARCHITECTURES = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3))}


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int = 1):
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1):
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        # Stride on the 3x3 convolution (torchvision's "ResNet v1.5").
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet trunk without the classifier. `base_width` 64 is the ImageNet model; smaller widths make tiny models
    for tests and CPU training (they cannot take ImageNet weights)."""

    def __init__(self, depth: int = 18, base_width: int = 64):
        super().__init__()
        if depth not in ARCHITECTURES:
            raise FusionError(f"backbone depth must be one of {sorted(ARCHITECTURES)}, got {depth}")
        kind, blocks = ARCHITECTURES[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.depth, self.base_width = depth, base_width
        self.conv1 = nn.Conv2d(3, base_width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_ch = base_width
        self.channels: dict[str, int] = {}
        for stage, count in enumerate(blocks):
            width = base_width * 2 ** stage
            layers = []
            for i in range(count):
                layers.append(block(in_ch, width, stride=2 if (i == 0 and stage > 0) else 1))
                in_ch = width * block.expansion
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layers))
            self.channels[f"res{stage + 2}"] = in_ch
        self.stem_channels = base_width
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # Zero-init the last norm of each residual branch: every block starts as identity, which trains faster
        # from scratch (Goyal et al. 2017).
        for module in self.modules():
            if isinstance(module, (BasicBlock, Bottleneck)):
                nn.init.zeros_((module.bn3 if isinstance(module, Bottleneck) else module.bn2).weight)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = {}
        for stage in range(4):
            x = getattr(self, f"layer{stage + 1}")(x)
            feats[f"res{stage + 2}"] = x
        return feats


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    # torchvision ships .pth files; weights_only=True unpickles tensors only (no code runs).
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    return state


def load_imagenet_weights(backbone: ResNet, path: str | os.PathLike) -> int:
    """Load ImageNet weights from a local file into `backbone`; returns how many tensors were loaded.

    Accepts torchvision/timm key names (optionally prefixed by `backbone.`, `model.` or `module.`); the classifier
    (`fc.*`) is ignored. FusionError when the file is missing or belongs to another depth or width.
    """
    path = Path(path)
    if not path.is_file():
        raise FusionError(f"backbone weights file not found: {path} (give a local ImageNet ResNet checkpoint, or "
                          f"leave `backbone_weights` empty to train from scratch)")
    state = _read_state_dict(path)
    own = backbone.state_dict()
    cleaned = {}
    for key, value in state.items():
        for prefix in ("module.", "model.", "backbone.", "encoder."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        if key.startswith("fc.") or key not in own:
            continue
        if own[key].shape != value.shape:
            raise FusionError(f"backbone weights {path} do not fit a ResNet-{backbone.depth} of width "
                              f"{backbone.base_width}: '{key}' is {tuple(value.shape)}, expected "
                              f"{tuple(own[key].shape)} (ImageNet weights need base_width 64 and the same depth)")
        cleaned[key] = value
    missing = [k for k in own if k not in cleaned and not k.endswith("num_batches_tracked")]
    if missing:
        raise FusionError(f"backbone weights {path} lack {len(missing)} tensor(s) of a ResNet-{backbone.depth} "
                          f"(first: {missing[0]}); is it a ResNet-{backbone.depth} checkpoint?")
    backbone.load_state_dict(cleaned, strict=False)
    return len(cleaned)


def default_backbone_file(depth: int) -> Path | None:
    """A local ImageNet checkpoint for this depth in $FUSION_BACKBONE_DIR or ~/.cache/irvis-fusion, if present."""
    folders = [os.environ.get("FUSION_BACKBONE_DIR"), Path.home() / ".cache" / "irvis-fusion"]
    for folder in folders:
        if not folder:
            continue
        for name in (f"resnet{depth}.safetensors", f"resnet{depth}.pth"):
            if (Path(folder) / name).is_file():
                return Path(folder) / name
    return None


def with_backbone_weights(model_cfg):
    """`model_cfg` (a dataclass with backbone_weights/backbone_width/backbone_depth) with a local ImageNet checkpoint
    filled in when none is set and one is found for a standard-width backbone; and a phrase saying where the
    backbone starts from, for the training log."""
    import dataclasses
    if not model_cfg.backbone_weights and model_cfg.backbone_width == 64:
        found = default_backbone_file(model_cfg.backbone_depth)
        if found is not None:
            model_cfg = dataclasses.replace(model_cfg, backbone_weights=str(found))
    source = f"ImageNet weights from {model_cfg.backbone_weights}" if model_cfg.backbone_weights else "scratch"
    return model_cfg, source
