"""A faithful re-implementation of the guided-diffusion UNet (Dhariwal & Nichol, 2021), so the public
`256x256_diffusion_uncond.pt` prior that DDFM uses loads with `strict=True`: same module tree, same parameter names
and shapes, same forward arithmetic (scale-shift norm, resblock up/down sampling, legacy QKV attention with
64-channel heads at 32/16/8 px, learned-sigma output of 2x the input channels).

    model = GuidedUNet(GuidedUNetConfig.uncond_256())     # the checkpoint's architecture
    model = load_guided_unet("256x256_diffusion_uncond.pt")  # checkpoint + matching config (or a folder with both)

Weights load with `torch.load(..., weights_only=True)` (tensors only, no code from the pickle) or from safetensors.
A folder may hold `guided_config.json` (fields of GuidedUNetConfig) next to its checkpoint, which is how tests build
tiny checkpoints in this layout; without it the 256x256 unconditional configuration is assumed.

Shapes: forward(x (N, C, H, W), timesteps (N,) in [0, 1000)) -> (N, out_channels, H, W); H and W must be multiples
of `multiple` (2 ** (len(channel_mult) - 1)).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from runtime.errors import FusionError

CONFIG_NAME = "guided_config.json"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")


@dataclass
class GuidedUNetConfig:
    image_size: int = 256
    in_channels: int = 3
    model_channels: int = 256
    out_channels: int = 6  # learned sigma: eps (3) and the variance interpolation (3)
    num_res_blocks: int = 2
    attention_resolutions: tuple = (32, 16, 8)  # in pixels at image_size
    channel_mult: tuple = (1, 1, 2, 2, 4, 4)
    num_head_channels: int = 64
    num_heads: int = 4  # used only when num_head_channels == -1
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    conv_resample: bool = True
    dropout: float = 0.0
    norm_groups: int = 32

    @classmethod
    def uncond_256(cls) -> "GuidedUNetConfig":
        """The architecture of guided-diffusion's `256x256_diffusion_uncond.pt` (learn_sigma, linear schedule)."""
        return cls()

    @property
    def multiple(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def attention_downsample_rates(self) -> set[int]:
        return {self.image_size // int(res) for res in self.attention_resolutions}

    @classmethod
    def from_dict(cls, data: dict) -> "GuidedUNetConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise FusionError(f"unknown guided-diffusion UNet setting(s) {sorted(unknown)}; known: {sorted(known)}")
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**data)


# ------------------------------------------------------------------------------------------------------ components
class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (as guided-diffusion does for fp16 safety)."""

    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


def timestep_embedding(timesteps, dim: int, max_period: int = 10000):
    """Sinusoidal embedding [cos, sin] of (N,) timesteps -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class Upsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, x):
        return self.op(x)


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int, groups: int,
                 use_scale_shift_norm: bool, up: bool = False, down: bool = False):
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(GroupNorm32(groups, channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm
                                                             else out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(groups, out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x, emb):
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.h_upd(h)
            x = self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over all positions with guided-diffusion's legacy head layout (heads split before q/k/v)."""

    def __init__(self, channels: int, num_heads: int, num_head_channels: int, groups: int):
        super().__init__()
        self.num_heads = num_heads if num_head_channels == -1 else channels // num_head_channels
        self.norm = GroupNorm32(groups, channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x, emb=None):
        batch, channels, *spatial = x.shape
        flat = x.reshape(batch, channels, -1)
        qkv = self.qkv(self.norm(flat))
        length = qkv.shape[-1]
        head_channels = channels // self.num_heads
        q, k, v = qkv.reshape(batch * self.num_heads, head_channels * 3, length).split(head_channels, dim=1)
        # (b*heads, length, ch) layout for scaled_dot_product_attention; same math as the einsum original.
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        out = out.transpose(1, 2).reshape(batch, channels, length)
        return (flat + self.proj_out(out)).reshape(batch, channels, *spatial)


class TimestepEmbedSequential(nn.Sequential):
    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, (ResBlock, AttentionBlock)) else layer(x)
        return x


class GuidedUNet(nn.Module):
    """guided-diffusion's UNetModel (unconditional), parameter-for-parameter."""

    def __init__(self, config: GuidedUNetConfig | None = None):
        super().__init__()
        self.config = cfg = config or GuidedUNetConfig()
        mc, groups = cfg.model_channels, cfg.norm_groups
        emb_dim = mc * 4
        attention_at = cfg.attention_downsample_rates

        def res(ch_in, ch_out, **kw):
            return ResBlock(ch_in, emb_dim, cfg.dropout, ch_out, groups, cfg.use_scale_shift_norm, **kw)

        def attn(ch):
            return AttentionBlock(ch, cfg.num_heads, cfg.num_head_channels, groups)

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        ch = int(cfg.channel_mult[0] * mc)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))])
        skip_channels, ds = [ch], 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [res(ch, int(mult * mc))]
                ch = int(mult * mc)
                if ds in attention_at:
                    layers.append(attn(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(
                    res(ch, ch, down=True) if cfg.resblock_updown else Downsample(ch, cfg.conv_resample)))
                skip_channels.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(res(ch, ch), attn(ch), res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), int(mc * mult))]
                ch = int(mc * mult)
                if ds in attention_at:
                    layers.append(attn(ch))
                if level and i == cfg.num_res_blocks:
                    layers.append(res(ch, ch, up=True) if cfg.resblock_updown else Upsample(ch, cfg.conv_resample))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(groups, ch), nn.SiLU(),
                                 nn.Conv2d(int(cfg.channel_mult[0] * mc), cfg.out_channels, 3, padding=1))

    @property
    def multiple(self) -> int:
        return self.config.multiple

    def forward(self, x, timesteps):
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(x.dtype))
        skips, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


# --------------------------------------------------------------------------------------------------------- loading
def find_guided_checkpoint(path: str | Path) -> tuple[Path, Path | None]:
    """(checkpoint file, config file or None) for a checkpoint path or a folder holding one."""
    path = Path(path)
    if path.is_file():
        config = path.parent / CONFIG_NAME
        return path, config if config.is_file() else None
    candidates = sorted(p for p in path.iterdir() if p.suffix in CHECKPOINT_SUFFIXES) if path.is_dir() else []
    if len(candidates) != 1:
        raise FusionError(f"{path} should hold exactly one guided-diffusion checkpoint (*.pt or *.safetensors, e.g. "
                          f"256x256_diffusion_uncond.pt); found {len(candidates)}")
    config = path / CONFIG_NAME
    return candidates[0], config if config.is_file() else None


def read_state_dict(checkpoint: Path) -> dict:
    try:
        if checkpoint.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(checkpoint))
        state = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, or a pickle with code in it
        raise FusionError(f"cannot read the checkpoint {checkpoint}: {type(exc).__name__}: {exc}"[:400]) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FusionError(f"{checkpoint} is not a state dict of tensors (a guided-diffusion UNet checkpoint)")
    return state


def load_guided_unet(path: str | Path, config: GuidedUNetConfig | None = None) -> tuple[GuidedUNet, Path]:
    """Build the network its config describes and load the checkpoint strictly; FusionError naming the file when the
    checkpoint belongs to another architecture."""
    checkpoint, config_file = find_guided_checkpoint(path)
    if config is None:
        config = (GuidedUNetConfig.from_dict(json.loads(config_file.read_text(encoding="utf-8")))
                  if config_file else GuidedUNetConfig.uncond_256())
    state = read_state_dict(checkpoint)
    with torch.device("meta"):
        model = GuidedUNet(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        detail = "; ".join(part for part in (
            f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
            f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
            f"{len(wrong)} of another shape (e.g. {wrong[0]}: {tuple(state[wrong[0]].shape)} != {expected[wrong[0]]})"
            if wrong else "") if part)
        raise FusionError(f"{checkpoint} does not match the guided-diffusion UNet {'of ' + config_file.name if config_file else '256x256 unconditional'}"
                          f" ({detail}); use 256x256_diffusion_uncond.pt or put a matching {CONFIG_NAME} beside it")
    model = GuidedUNet(config)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval(), checkpoint


def save_guided_config(config: GuidedUNetConfig, folder: str | Path) -> Path:
    from runtime.imageio import write_json
    return write_json(Path(folder) / CONFIG_NAME, {k: list(v) if isinstance(v, tuple) else v
                                                     for k, v in asdict(config).items()})
