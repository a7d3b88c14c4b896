"""MobileNetV3 building blocks (Howard et al., ICCV 2019): conv-BN-activation, squeeze-excitation, inverted residual.

Every op here exports to ONNX opset 17 and is supported by TensorRT: Conv, BatchNormalization (folded into the conv
by ONNX Runtime and TensorRT), HardSwish, HardSigmoid, Relu, ReduceMean over H and W (global pooling only), Mul, Add.
Shapes: all blocks take and return (N, C, H, W).
"""
from __future__ import annotations

import torch
from torch import nn


def make_divisible(value: float, divisor: int = 4, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of `divisor` without dropping more than 10% (as MobileNet does)."""
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def activation(name: str) -> nn.Module:
    if name == "hswish":
        return nn.Hardswish()
    if name == "relu":
        return nn.ReLU()
    if name == "none":
        return nn.Identity()
    raise ValueError(f"unknown activation '{name}' (use hswish, relu or none)")


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> activation. 'same' padding for odd kernels."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
                 act: str = "hswish"):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            activation(act),
        )


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation with MobileNetV3's hard-sigmoid gate: x * hsigmoid(W2 relu(W1 mean_hw(x)))."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        hidden = make_divisible(channels / reduction, 4)
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.expand = nn.Conv2d(hidden, channels, 1)
        self.relu = nn.ReLU()
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # mean over H, W (ReduceMean) rather than adaptive pooling: one op, any input size, TensorRT-friendly.
        scale = x.mean(dim=(2, 3), keepdim=True)
        scale = self.gate(self.expand(self.relu(self.reduce(scale))))
        return x * scale


class InvertedResidual(nn.Module):
    """MobileNetV3 bneck: 1x1 expand -> kxk depthwise (stride) -> [SE] -> 1x1 linear projection, residual when the
    shape is kept. (N, C_in, H, W) -> (N, C_out, ceil(H / stride), ceil(W / stride))."""

    def __init__(self, in_channels: int, expanded: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 use_se: bool = False, act: str = "hswish"):
        super().__init__()
        layers: list[nn.Module] = []
        if expanded != in_channels:
            layers.append(ConvBNAct(in_channels, expanded, 1, act=act))
        layers.append(ConvBNAct(expanded, expanded, kernel_size, stride, groups=expanded, act=act))
        if use_se:
            layers.append(SqueezeExcite(expanded))
        layers.append(ConvBNAct(expanded, out_channels, 1, act="none"))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out
