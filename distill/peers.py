"""Published IR/VIS fusion networks, re-implemented from their papers as latency baselines.

Every speed claim of this project is a ratio measured side by side with these peers in the same run, on the same
machine, with the same runtime: absolute milliseconds on a shared CPU mean little, ratios travel.
They live in `distill` beside the student because `fusion distill profile` and `fusion distill eval` report the
student's speed-up over SeAFusion; `benchmarks` imports them from here.

    from distill.peers import create_peer, list_peers
    peer = create_peer("seafusion").eval()       # random weights: latency and cost only, never quality
    fused = peer(ir, vis)                        # ir, vis (N, 1, H, W) float32 [0, 1] -> (N, 1, H, W) in [0, 1]

The weights are random on purpose (no download is possible or wanted); the architectures follow the papers:

- ``seafusion``: Tang, Yuan, Ma, "Image fusion in the loop of high-level vision tasks: A semantic-aware real-time
  infrared and visible image fusion network", Information Fusion 82 (2022). Two encoders (IR, VIS) of a 3x3 conv to
  16 channels and two residual gradient dense blocks (RGRB: a 2-layer dense block + 1x1 conv on the main path, a
  depthwise Sobel magnitude + 1x1 conv on the residual path) to 32 and 48 channels, all at full resolution; the 96
  concatenated channels are decoded by 3x3 convs 96 -> 64 -> 32 -> 16 -> 1 with a tanh output. About 0.17 M params.
  The reference code declares BatchNorm layers in the decoder but never applies them, so they are omitted here
  (at inference BatchNorm folds into the conv anyway and costs nothing).
- ``densefuse``: Li, Wu, "DenseFuse: A Fusion Approach to Infrared and Visible Images", IEEE TIP 28(5) (2019).
  A shared encoder (3x3 conv 1 -> 16, then a dense block of three 3x3 convs of 16 channels each -> 64 channels),
  the addition fusion strategy on the 64-channel features, and a decoder of four 3x3 convs 64 -> 64 -> 32 -> 16 -> 1.
  About 0.074 M params. The encoder runs once per modality (a batch of two), as in the paper.
"""
from __future__ import annotations

from typing import Callable, Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["create_peer", "list_peers", "PEER_PAPERS", "SeAFusionNet", "DenseFuseNet"]

PEER_PAPERS: Dict[str, str] = {
    "seafusion": "Tang et al., SeAFusion, Information Fusion 2022",
    "densefuse": "Li & Wu, DenseFuse, IEEE TIP 2019",
}


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


def _check_pair(ir: torch.Tensor, vis: torch.Tensor) -> None:
    if ir.ndim != 4 or ir.shape[1] != 1 or vis.shape != ir.shape:
        raise ValueError(f"expected ir and vis of the same shape (N, 1, H, W), got {tuple(ir.shape)} and "
                         f"{tuple(vis.shape)}; pass the visible luminance, not RGB")


# --------------------------------------------------------------------------------------------------- SeAFusion
class SobelMagnitude(nn.Module):
    """|Sobel_x * x| + |Sobel_y * x| per channel: (N, C, H, W) -> (N, C, H, W). Fixed filters (buffers, not params)."""

    def __init__(self, channels: int):
        super().__init__()
        kx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        # One grouped conv computes both directions: channel 2c is d/dx of input c, 2c+1 is d/dy.
        kernel = torch.stack([kx, kx.t()]).unsqueeze(1).repeat(channels, 1, 1, 1)
        self.register_buffer("kernel", kernel, persistent=False)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = F.conv2d(x, self.kernel, padding=1, groups=self.channels)
        n, _, h, w = g.shape
        return g.abs().view(n, self.channels, 2, h, w).sum(dim=2)


class GradientResidualDenseBlock(nn.Module):
    """SeAFusion's RGRB: (N, C, H, W) -> (N, C_out, H, W), same resolution.

    Main path: dense block (two 3x3 conv + LeakyReLU(0.2) layers of C channels, concatenated -> 3C) then 1x1 -> C_out.
    Residual path: Sobel gradient magnitude of the input then 1x1 -> C_out, which keeps fine texture alive.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.dense1 = _conv3x3(in_channels, in_channels)
        self.dense2 = _conv3x3(2 * in_channels, in_channels)
        self.squeeze = nn.Conv2d(3 * in_channels, out_channels, kernel_size=1)
        self.gradient = SobelMagnitude(in_channels)
        self.gradient_proj = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = torch.cat([x, F.leaky_relu(self.dense1(x), 0.2)], dim=1)
        d = torch.cat([d, F.leaky_relu(self.dense2(d), 0.2)], dim=1)
        main = self.squeeze(d)
        residual = self.gradient_proj(self.gradient(x))
        return F.leaky_relu(main + residual, 0.1)


class SeAFusionEncoder(nn.Module):
    """(N, 1, H, W) -> (N, channels[-1], H, W): stem conv then one RGRB per channel step, no downsampling."""

    def __init__(self, channels: List[int]):
        super().__init__()
        self.stem = _conv3x3(1, channels[0])
        self.blocks = nn.ModuleList(GradientResidualDenseBlock(a, b) for a, b in zip(channels[:-1], channels[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.stem(x), 0.2)
        for block in self.blocks:
            x = block(x)
        return x


class SeAFusionNet(nn.Module):
    """SeAFusion fusion network (Tang et al. 2022), random weights. forward(ir, vis) -> fused, all (N, 1, H, W)."""

    def __init__(self, channels: List[int] = (16, 32, 48)):
        super().__init__()
        channels = list(channels)
        self.ir_encoder = SeAFusionEncoder(channels)
        self.vis_encoder = SeAFusionEncoder(channels)
        c0, c1, c2 = channels[0], channels[1], channels[2]
        # Decoder widths as published: 2*c2 -> 2*c1 -> 2*c0 -> c0 -> 1.
        self.decoder = nn.ModuleList([_conv3x3(2 * c2, 2 * c1), _conv3x3(2 * c1, 2 * c0), _conv3x3(2 * c0, c0)])
        self.head = _conv3x3(c0, 1)

    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        _check_pair(ir, vis)
        x = torch.cat([self.vis_encoder(vis), self.ir_encoder(ir)], dim=1)
        for conv in self.decoder:
            x = F.leaky_relu(conv(x), 0.2)
        return torch.tanh(self.head(x)) * 0.5 + 0.5


# --------------------------------------------------------------------------------------------------- DenseFuse
class DenseFuseEncoder(nn.Module):
    """(N, 1, H, W) -> (N, 64, H, W): 3x3 conv to 16 channels and a 3-layer dense block (growth 16), ReLU."""

    def __init__(self, stem_channels: int = 16, growth: int = 16, layers: int = 3):
        super().__init__()
        self.stem = _conv3x3(1, stem_channels)
        self.dense = nn.ModuleList(_conv3x3(stem_channels + i * growth, growth) for i in range(layers))
        self.out_channels = stem_channels + layers * growth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        for conv in self.dense:
            x = torch.cat([x, F.relu(conv(x))], dim=1)
        return x


class DenseFuseNet(nn.Module):
    """DenseFuse (Li & Wu 2019) with addition fusion, random weights. forward(ir, vis) -> fused, (N, 1, H, W)."""

    def __init__(self, decoder_channels: List[int] = (64, 32, 16)):
        super().__init__()
        self.encoder = DenseFuseEncoder()
        widths = [self.encoder.out_channels, *decoder_channels]
        self.decoder = nn.ModuleList(_conv3x3(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.head = _conv3x3(widths[-1], 1)

    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        _check_pair(ir, vis)
        n = ir.shape[0]
        features = self.encoder(torch.cat([ir, vis], dim=0))   # one shared encoder, both modalities in one batch
        x = features[:n] + features[n:]                          # the paper's addition strategy
        for conv in self.decoder:
            x = F.relu(conv(x))
        # The paper's decoder output is linear; clamping keeps this module's contract ([0, 1]) at no real cost.
        return self.head(x).clamp(0.0, 1.0)


_PEERS: Dict[str, Callable[[], nn.Module]] = {
    "seafusion": SeAFusionNet,
    "densefuse": DenseFuseNet,
}


def list_peers() -> List[str]:
    """Names accepted by create_peer."""
    return sorted(_PEERS)


def create_peer(name: str, seed: int = 0) -> nn.Module:
    """A peer network with deterministic random weights (eval mode). Latency baseline only: its output means nothing."""
    key = name.lower()
    if key not in _PEERS:
        raise KeyError(f"unknown peer '{name}'; choose one of {', '.join(list_peers())}")
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = _PEERS[key]()
    finally:
        torch.random.set_rng_state(generator_state)   # do not disturb the caller's random stream
    return model.eval()
