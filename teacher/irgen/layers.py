"""Building blocks shared by the generators: sine position encodings and a pixel decoder that turns ResNet
features into multi-scale maps (for attention) and full-resolution per-pixel embeddings (for the output).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sine_position_encoding(height: int, width: int, dim: int, device=None, dtype=torch.float32,
                           temperature: float = 10000.0) -> torch.Tensor:
    """DETR's normalised 2-D sine encoding: (dim, height, width), half the channels for y, half for x."""
    if dim % 4:
        raise ValueError(f"position-encoding dim must be a multiple of 4, got {dim}")
    half = dim // 2
    eps, scale = 1e-6, 2 * math.pi
    y = (torch.arange(1, height + 1, device=device, dtype=torch.float32) / (height + eps) * scale)
    x = (torch.arange(1, width + 1, device=device, dtype=torch.float32) / (width + eps) * scale)
    dim_t = temperature ** (2 * (torch.arange(half, device=device, dtype=torch.float32) // 2) / half)
    pos_y = y[:, None] / dim_t  # (H, half)
    pos_x = x[:, None] / dim_t  # (W, half)
    pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
    pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
    pos = torch.cat((pos_y[:, None, :].expand(height, width, half), pos_x[None, :, :].expand(height, width, half)),
                    dim=2)
    return pos.permute(2, 0, 1).to(dtype)


def conv_norm_act(in_ch: int, out_ch: int, kernel: int = 3) -> nn.Sequential:
    groups = math.gcd(out_ch, 8)
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False),
                         nn.GroupNorm(groups, out_ch), nn.ReLU(inplace=True))


class PixelDecoder(nn.Module):
    """FPN over res2..res5, then two upsampling steps with skips to full resolution.

    forward(image (N,3,H,W), feats) -> (multi_scale [1/32, 1/16, 1/8] each (N, hidden, h, w),
                                        pixel_embedding (N, embed_dim, H, W))
    """

    def __init__(self, in_channels: dict[str, int], hidden_dim: int, embed_dim: int, full_res_channels: int):
        super().__init__()
        self.lateral = nn.ModuleDict({name: nn.Conv2d(ch, hidden_dim, 1) for name, ch in in_channels.items()})
        self.smooth = nn.ModuleDict({name: conv_norm_act(hidden_dim, hidden_dim)
                                     for name in ("res4", "res3", "res2")})
        half_res = max(full_res_channels, embed_dim // 2)
        # Full-resolution detail comes from the image itself: a shallow conv stack at 1/2 and 1/1.
        self.image_half = nn.Sequential(conv_norm_act(3, full_res_channels), nn.Conv2d(
            full_res_channels, full_res_channels, 3, stride=2, padding=1), nn.ReLU(inplace=True))
        self.image_full = conv_norm_act(3, full_res_channels)
        self.up_half = conv_norm_act(hidden_dim + full_res_channels, half_res)
        self.up_full = conv_norm_act(half_res + full_res_channels, embed_dim)
        self.embed = nn.Conv2d(embed_dim, embed_dim, 1)

    def forward(self, image: torch.Tensor, feats: dict[str, torch.Tensor]):
        top = self.lateral["res5"](feats["res5"])
        outs = {"res5": top}
        for name in ("res4", "res3", "res2"):
            lateral = self.lateral[name](feats[name])
            top = self.smooth[name](lateral + F.interpolate(top, size=lateral.shape[-2:], mode="nearest"))
            outs[name] = top
        height, width = image.shape[-2:]
        half = self.image_half(image)
        x = F.interpolate(outs["res2"], size=half.shape[-2:], mode="bilinear", align_corners=False)
        x = self.up_half(torch.cat((x, half), dim=1))
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
        x = self.up_full(torch.cat((x, self.image_full(image)), dim=1))
        return [outs["res5"], outs["res4"], outs["res3"]], self.embed(x)
