"""Cross-modal fusion of IR and VIS feature maps at one scale.

`CrossModalFusion` combines two (N, C, H, W) feature maps into one (N, C, H, W):
1. channel attention: a gate per channel and modality from the global statistics of both maps, so a channel that is
   informative in IR at night can outweigh its VIS partner and vice versa;
2. optional spatial cross-attention (`CrossModalAttention`): each modality's positions query the other modality's
   positions (keys and values pooled 2x to bound the cost), so a hot object in IR can pull in the VIS texture around it;
3. a spatial modality gate: per-pixel softmax weights of the two modalities from a 7x7 conv over their channel-mean
   and channel-max maps (CBAM-style, but computed across modalities);
4. 1x1 merge and squeeze-excitation.
Ops: Conv, ReduceMean/ReduceMax over channels or H, W, MatMul, Softmax, Reshape, AveragePool 2x2: ONNX opset 17 and
TensorRT. Reshapes take H and W from the input at run time, so any input size exports with dynamic axes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.models.blocks import ConvBNAct, SqueezeExcite, make_divisible


class ChannelAttention(nn.Module):
    """Per-channel, per-modality gates from the pooled statistics of both modalities.

    (N, C, H, W) x 2 -> (N, C, H, W) x 2 (each input scaled by its gate in [0, 1]).
    """

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        hidden = make_divisible(2 * channels / reduction, 4)
        self.mlp = nn.Sequential(nn.Conv2d(2 * channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, 2 * channels, 1),
                                 nn.Hardsigmoid())
        self.channels = channels

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stats = torch.cat([a, b], dim=1).mean(dim=(2, 3), keepdim=True)
        gates = self.mlp(stats)
        return a * gates[:, : self.channels], b * gates[:, self.channels:]


class CrossModalAttention(nn.Module):
    """Multi-head attention of `query` positions over `context` positions (the other modality), residual.

    query: (N, C, H, W), context: (N, C, H', W') with H' >= 2 and W' >= 2 when `kv_pool` is 2 -> (N, C, H, W).
    """

    def __init__(self, channels: int, heads: int = 2, kv_pool: int = 2):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.heads = heads
        self.head_dim = channels // heads
        self.kv_pool = kv_pool
        self.q = nn.Conv2d(channels, channels, 1)
        self.kv = nn.Conv2d(channels, 2 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        # Start as the identity so the attention path fades in during training instead of scrambling early features.
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        n, c, h, w = query.shape
        if self.kv_pool > 1:
            context = F.avg_pool2d(context, self.kv_pool, self.kv_pool)
        q = self.q(query).reshape(n, self.heads, self.head_dim, -1)             # (N, h, d, HWq)
        k, v = self.kv(context).reshape(n, 2, self.heads, self.head_dim, -1).unbind(1)  # (N, h, d, HWk) each
        scores = torch.matmul(q.transpose(2, 3), k) * (self.head_dim ** -0.5)   # (N, h, HWq, HWk)
        attn = scores.softmax(dim=-1)
        out = torch.matmul(v, attn.transpose(2, 3))                             # (N, h, d, HWq)
        return query + self.proj(out.reshape(n, c, h, w))


class SpatialModalityGate(nn.Module):
    """Per-pixel weights of the two modalities (w and 1 - w) from their channel-mean and channel-max maps.

    (N, C, H, W) x 2 -> (N, C, H, W) x 2. A sigmoid of one logit is the two-way softmax, without a softmax over the
    channel axis (slow in ONNX Runtime's blocked layout).
    """

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(4, 1, kernel_size, padding=kernel_size // 2)
        nn.init.zeros_(self.conv.weight)  # equal weights at the start
        nn.init.zeros_(self.conv.bias)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        descriptors = torch.cat([a.mean(1, keepdim=True), a.amax(1, keepdim=True),
                                 b.mean(1, keepdim=True), b.amax(1, keepdim=True)], dim=1)
        weight = torch.sigmoid(self.conv(descriptors))
        # x2 keeps the scale of a sum when the weights are 0.5/0.5
        return a * (2 * weight), b * (2 - 2 * weight)


class CrossModalFusion(nn.Module):
    """Fuse IR and VIS features of one scale: (N, C, H, W) x 2 -> (N, C_out, H, W)."""

    def __init__(self, channels: int, out_channels: int | None = None, cross_attention: bool = False, heads: int = 2,
                 kv_pool: int = 2, gate_kernel: int = 7):
        super().__init__()
        out_channels = out_channels or channels
        self.channel_attention = ChannelAttention(channels)
        self.attend_ir = CrossModalAttention(channels, heads, kv_pool) if cross_attention else None
        self.attend_vis = CrossModalAttention(channels, heads, kv_pool) if cross_attention else None
        self.spatial_gate = SpatialModalityGate(gate_kernel)
        self.merge = ConvBNAct(2 * channels, out_channels, 1, act="hswish")
        self.se = SqueezeExcite(out_channels)

    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        ir, vis = self.channel_attention(ir, vis)
        if self.attend_ir is not None:
            ir, vis = self.attend_ir(ir, vis), self.attend_vis(vis, ir)
        ir, vis = self.spatial_gate(ir, vis)
        return self.se(self.merge(torch.cat([ir, vis], dim=1)))
