"""The student: a dual-branch MobileNetV3 encoder (IR and VIS), cross-modal fusion at every scale, a U-Net decoder.

    ir  (N, 1, H, W) ─ IR encoder ──┐ 1/2, 1/4, 1/8, 1/16 features
                                    ├─ CrossModalFusion per scale (cross-attention at the deepest) ─ U-Net decoder
    vis (N, C, H, W) ─ VIS encoder ─┘                                                      (back to 1/2 resolution)
                                                              head: per-pixel coefficients (a_ir, a_vis, b) at 1/2
    fused = clip(a_ir * ir + a_vis * vis + b, 0, 1)    coefficients upsampled x2 (bilinear) to full resolution

The last step is a local affine model of the sources (as in HDRNet's guided upsampling): the network decides, at
every pixel, how much of each source's intensity and detail to keep and what offset to add, while the full-
resolution detail itself comes straight from the sources. It lets the network run at 1/2 resolution and below, and
the full-resolution work is a bilinear upsampling of three channels and a few multiply-adds: the speed budget (640x480
in at most 30 ms on two CPU cores; the nano default measures about 22 ms in ONNX Runtime, docs/distill.md) has no room
for full-resolution convolutions, and the output cannot show checkerboard patterns from learned upsampling.

v2 options (StudentConfig): the body on the sources pooled 2x (`input_scale`), gains per pyramid level
(`pyramid_levels`), a guided step (`guide_channels`), and `detail_bands`: the finest band-pass levels fused at their own
resolution by the pyramid teacher's energy rule, each with a gain map from the head, the affine model below them
(compose_bands; the default model since 7 Dec 2026, evening, uses 3), and `coarse_levels`: below the bands, the
teacher's whole rule (binomial bands and a soft-max residual) with the affine model as a correction to it
(coarse_rule; the default since that night uses 2).

Any H, W: the input is padded (edge replication) to the network's multiple and the output cropped back; padding
amounts are computed from the input shape, so ONNX exports keep dynamic H and W.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from distill.models.blocks import ConvBNAct, InvertedResidual
from distill.models.fusion import CrossModalFusion


@dataclass
class BlockSpec:
    """One MobileNetV3 bneck: kernel, expanded width, output width, squeeze-excitation, stride, activation."""

    kernel: int = 3
    expanded: int = 16
    out: int = 16
    se: bool = False
    stride: int = 1
    act: str = "hswish"


@dataclass
class StudentConfig:
    """Everything that defines a student's architecture; saved as config.json beside the weights."""

    variant: str = "nano"
    vis_channels: int = 1          # 1: luminance in and out (default); 3: RGB in, RGB out
    stem_channels: int = 8         # stride-2 stem, one per branch
    stages: List[List[BlockSpec]] = field(default_factory=list)  # each stage starts with a stride-2 block
    decoder_channels: List[int] = field(default_factory=list)    # one per decoder step, deepest first
    head_channels: int = 8         # width of the coefficient head at 1/2 resolution
    attention_heads: int = 2
    kv_pool: int = 2               # keys/values of the cross-attention are pooled by this factor
    pad_mode: str = "replicate"    # how inputs are padded to the multiple ("replicate", "reflect" or "constant")
    # v2 (the defaults keep v1 exactly): the body runs on the sources average-pooled by `input_scale` (1, 2 or 4),
    # and `pyramid_levels` coarser levels of each source's box pyramid get gains of their own, so a source's fine
    # detail no longer has to share the gain of its intensity (see DualBranchFusionNet.compose).
    input_scale: int = 1
    pyramid_levels: int = 0
    # > 0 (with input_scale > 1): one more decoder step back to the body's input resolution, its skip the pooled
    # sources themselves (guided upsampling: the coefficients follow the sources' edges at 1 / input_scale)
    guide_channels: int = 0
    # > 0: the `detail_bands` finest band-pass levels of the sources are fused at their own resolution by the pyramid
    # teacher's rule (each source weighted by its share of the local band energy, w = min(1, 2 * share)), each band
    # scaled by a gain map from the head; the network's affine model fuses what is left, the sources pooled
    # 2^detail_bands times (see DualBranchFusionNet.compose_bands). 0 keeps v1/v2 exactly.
    detail_bands: int = 0
    energy_sigma: float = 2.0      # the band-energy Gaussian of the detail bands, in each band's own pixels
    # > 0 (with detail_bands): below the bands, the pyramid teacher's whole rule on the sources pooled
    # 2^detail_bands times: `coarse_levels` binomial band-pass levels fused by the energy rule (x `coarse_gain`) and
    # the residual by the soft maximum of the two sources (`coarse_softness` wide); the network's affine model is
    # added to that as a correction (0 at initialisation) instead of fusing the coarse content alone
    # (DualBranchFusionNet.coarse_rule). 0 keeps earlier models exactly.
    coarse_levels: int = 0
    coarse_gain: float = 1.0
    coarse_softness: float = 0.05
    # false (with detail_bands and coarse_levels): no network at all, zero weights: the fixed rules alone, each band
    # x `fixed_band_gain` (DualBranchFusionNet.compose_fixed; the `rule` variant). True keeps every learned student.
    network: bool = True
    fixed_band_gain: float = 1.0

    @property
    def out_channels(self) -> int:
        return self.vis_channels

    @property
    def multiple(self) -> int:
        body = 2 ** (len(self.stages) + 1) * max(1, self.kv_pool) * max(1, self.input_scale)
        # the coarse rule halves the bands' coarsest level coarse_levels more times, exactly
        return max(body, 2 ** (self.detail_bands + self.coarse_levels)) if self.coarse_levels else body

    @property
    def coefficient_level(self) -> int:
        """log2 of the factor from the coefficients' resolution up to the input's."""
        body = self.input_scale.bit_length() - 1
        return body if self.guide_channels > 0 else body + 1

    @property
    def coefficient_channels(self) -> int:
        """Head outputs per output channel: gain on IR, gain on VIS, offset, then an IR and a VIS gain per pyramid
        level (finest first), then a gain per detail band (finest first)."""
        return 3 + 2 * self.pyramid_levels + self.detail_bands

    def to_dict(self) -> dict:
        from dataclasses import asdict
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "StudentConfig":
        data = dict(data)
        stages = [[BlockSpec(**b) if isinstance(b, dict) else b for b in stage] for stage in data.pop("stages", [])]
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown student config key(s): {', '.join(unknown)}")
        return cls(stages=stages, **data)


class Encoder(nn.Module):
    """Stride-2 stem then stages of bnecks. (N, C_in, H, W) -> [features at 1/2, 1/4, ... of H, W]."""

    def __init__(self, in_channels: int, stem_channels: int, stages: List[List[BlockSpec]]):
        super().__init__()
        self.stem = ConvBNAct(in_channels, stem_channels, 3, stride=2, act="hswish")
        self.stages = nn.ModuleList()
        channels = stem_channels
        self.channels = [stem_channels]
        for stage in stages:
            blocks = []
            for spec in stage:
                blocks.append(InvertedResidual(channels, spec.expanded, spec.out, spec.kernel, spec.stride, spec.se,
                                               spec.act))
                channels = spec.out
            self.stages.append(nn.Sequential(*blocks))
            self.channels.append(channels)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        features = [self.stem(x)]
        for stage in self.stages:
            features.append(stage(features[-1]))
        return features


class DecoderBlock(nn.Module):
    """Upsample x2 (bilinear), concatenate the skip, 1x1 merge, depthwise 3x3 refinement with a residual.

    x (N, C_in, h, w), skip (N, C_skip, 2h, 2w) -> (N, C_out, 2h, 2w).
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.merge = ConvBNAct(in_channels + skip_channels, out_channels, 1, act="hswish")
        self.refine = nn.Sequential(ConvBNAct(out_channels, out_channels, 3, groups=out_channels, act="hswish"),
                                    ConvBNAct(out_channels, out_channels, 1, act="none"))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        x = self.merge(torch.cat([x, skip], dim=1))
        return x + self.refine(x)


class DualBranchFusionNet(nn.Module):
    """The student network. forward(ir (N, 1, H, W), vis (N, C, H, W)) -> fused (N, C, H, W), all float in [0, 1]."""

    def __init__(self, config: StudentConfig):
        super().__init__()
        if not config.stages:
            raise ValueError("a student needs at least one encoder stage")
        if len(config.decoder_channels) != len(config.stages):
            raise ValueError(f"decoder_channels needs one entry per stage ({len(config.stages)}), "
                             f"got {len(config.decoder_channels)}")
        if config.vis_channels not in (1, 3):
            raise ValueError(f"vis_channels must be 1 (luminance) or 3 (RGB), got {config.vis_channels}")
        if config.input_scale not in (1, 2, 4):
            raise ValueError(f"input_scale must be 1, 2 or 4, got {config.input_scale}")
        if config.guide_channels > 0 and config.input_scale == 1:
            raise ValueError("guide_channels needs input_scale 2 or 4 (the guided step returns to the body's input)")
        coefficient_level = config.coefficient_level
        if not 0 <= config.pyramid_levels <= coefficient_level:
            raise ValueError(f"pyramid_levels must be 0 to {coefficient_level} (the coefficients' level at "
                             f"input_scale {config.input_scale}), got {config.pyramid_levels}")
        if config.detail_bands:
            if config.pyramid_levels or config.guide_channels:
                raise ValueError("detail_bands replaces pyramid_levels and guide_channels: set those to 0")
            if not 0 < config.detail_bands <= coefficient_level + 2:
                raise ValueError(f"detail_bands must be 0 to {coefficient_level + 2} (the coefficients' level at "
                                 f"input_scale {config.input_scale}, plus 2), got {config.detail_bands}")
        if config.coarse_levels:
            if not config.detail_bands:
                raise ValueError("coarse_levels needs detail_bands > 0 (the rule fuses what lies below the bands)")
            if not 0 < config.coarse_levels <= 4:
                raise ValueError(f"coarse_levels must be 0 to 4, got {config.coarse_levels}")
            if config.coarse_softness <= 0:
                raise ValueError(f"coarse_softness must be > 0, got {config.coarse_softness}")
        if not config.network and not (config.detail_bands and config.coarse_levels):
            raise ValueError("network: false needs detail_bands and coarse_levels (the fixed rules are then the whole "
                             "fusion)")
        self.config = config
        if config.detail_bands:
            # the band-energy Gaussian, separable, for IR and each VIS channel at once (fixed: not a weight)
            radius = max(1, int(round(2 * config.energy_sigma)))
            taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / config.energy_sigma) ** 2)
            taps = (taps / taps.sum()).repeat(1 + config.vis_channels, 1, 1, 1)
            self.register_buffer("energy_taps", taps, persistent=False)
        if config.coarse_levels:
            # the binomial 1-4-6-4-1 filter of the teacher's Laplacian pyramid, separable (fixed: not a weight)
            binomial = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
            self.register_buffer("binomial_taps", binomial.repeat(1 + config.vis_channels, 1, 1, 1), persistent=False)
        if config.network:
            self._build_network(config)
        else:
            self.encoder_ir = self.encoder_vis = self.guide = self.head = None
            self.fusions, self.decoder = nn.ModuleList(), nn.ModuleList()

    def _build_network(self, config: StudentConfig) -> None:
        """The learned part: both encoders, the cross-modal fusions, the decoder, the guided step and the head."""
        self.encoder_ir = Encoder(1, config.stem_channels, config.stages)
        self.encoder_vis = Encoder(config.vis_channels, config.stem_channels, config.stages)
        channels = self.encoder_ir.channels
        deepest = len(channels) - 1
        self.fusions = nn.ModuleList(
            # 3x3 gate at 1/2 resolution: a 7x7 conv to one channel is slow there in ONNX Runtime's blocked layout
            CrossModalFusion(c, cross_attention=(i == deepest), heads=config.attention_heads, kv_pool=config.kv_pool,
                             gate_kernel=3 if i == 0 else 7)
            for i, c in enumerate(channels))
        self.decoder = nn.ModuleList()
        x_channels = channels[-1]
        for skip_channels, out_channels in zip(reversed(channels[:-1]), config.decoder_channels):
            self.decoder.append(DecoderBlock(x_channels, skip_channels, out_channels))
            x_channels = out_channels
        self.guide = None
        if config.guide_channels > 0:
            self.guide = DecoderBlock(x_channels, 1 + config.vis_channels, config.guide_channels)
            x_channels = config.guide_channels
        # coefficients per output channel: gain on IR, gain on VIS, offset
        self.head = nn.Sequential(
            ConvBNAct(x_channels, config.head_channels, 3, act="hswish"),
            nn.Conv2d(config.head_channels, config.coefficient_channels * config.out_channels, 1))
        # Start as the plain average of the sources (a_ir = a_vis = 0.5, b = 0, no extra detail): training refines a
        # sensible fusion.
        nn.init.zeros_(self.head[-1].weight)
        with torch.no_grad():
            # (with the coarse rule, the affine part is a correction to the rule: 0)
            affine = [0.0, 0.0] if config.coarse_levels else [0.5, 0.5]
            start = affine + [0.0] * (1 + 2 * config.pyramid_levels) + [1.0] * config.detail_bands
            self.head[-1].bias.copy_(torch.tensor(start).repeat_interleave(config.out_channels))

    @property
    def multiple(self) -> int:
        return self.config.multiple

    def _check_inputs(self, ir: torch.Tensor, vis: torch.Tensor) -> None:
        if ir.dim() != 4 or ir.shape[1] != 1:
            raise ValueError(f"ir must be (N, 1, H, W), got {tuple(ir.shape)}")
        if vis.dim() != 4 or vis.shape[1] != self.config.vis_channels:
            raise ValueError(f"vis must be (N, {self.config.vis_channels}, H, W) for this student, "
                             f"got {tuple(vis.shape)}")
        if ir.shape[0] != vis.shape[0] or ir.shape[-2:] != vis.shape[-2:]:
            raise ValueError(f"ir {tuple(ir.shape)} and vis {tuple(vis.shape)} differ in batch or size")

    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(ir, vis)[0]

    def forward_with_features(self, ir: torch.Tensor, vis: torch.Tensor):
        """(fused (N, C, H, W), [fused features at 1/2, 1/4, ... resolution]) - the features feed feature
        distillation when a teacher exposes its own."""
        if not torch.jit.is_tracing():
            self._check_inputs(ir, vis)
        height, width = ir.shape[-2], ir.shape[-1]
        pad_h = (self.multiple - height % self.multiple) % self.multiple
        pad_w = (self.multiple - width % self.multiple) % self.multiple
        levels = max(self.config.pyramid_levels, self.config.detail_bands, self.config.input_scale.bit_length() - 1)
        body = self.config.input_scale.bit_length() - 1
        if self.config.detail_bands:
            # one pyramid of both sources as channels [IR, VIS...]: the bands need them side by side at every level,
            # and concatenating once at the input saves a full-resolution copy per band
            sources = self.joint_pyramid(ir, vis, levels)
            ir_body, vis_body = sources[body][:, :1], sources[body][:, 1:]
        else:
            pyramid_ir = [F.pad(ir, (0, pad_w, 0, pad_h), mode=self.config.pad_mode)]
            pyramid_vis = [F.pad(vis, (0, pad_w, 0, pad_h), mode=self.config.pad_mode)]
            for _ in range(levels):
                pyramid_ir.append(F.avg_pool2d(pyramid_ir[-1], 2))
                pyramid_vis.append(F.avg_pool2d(pyramid_vis[-1], 2))
            ir_body, vis_body = pyramid_ir[body], pyramid_vis[body]
        if not self.config.network:
            return self.compose_fixed(sources)[:, :, :height, :width].clamp(0.0, 1.0), []
        fused = [fuse(a, b) for fuse, a, b in zip(self.fusions, self.encoder_ir(ir_body), self.encoder_vis(vis_body))]
        x = fused[-1]
        for block, skip in zip(self.decoder, reversed(fused[:-1])):
            x = block(x, skip)
        if self.guide is not None:
            x = self.guide(x, torch.cat([ir_body, vis_body], dim=1))
        if self.config.detail_bands:
            fused_image = self.compose_bands(self.head(x), sources)
        else:
            fused_image = self.compose(self.head(x), pyramid_ir, pyramid_vis)
        return fused_image[:, :, :height, :width].clamp(0.0, 1.0), fused

    def joint_pyramid(self, ir: torch.Tensor, vis: torch.Tensor, levels: int) -> List[torch.Tensor]:
        """The box pyramid of both sources as channels [IR, VIS...], padded to the network's multiple: `levels` + 1
        tensors, full resolution first (what the detail bands and the coarse rule work on)."""
        pad_h = (self.multiple - ir.shape[-2] % self.multiple) % self.multiple
        pad_w = (self.multiple - ir.shape[-1] % self.multiple) % self.multiple
        sources = [F.pad(torch.cat([ir, vis], dim=1), (0, pad_w, 0, pad_h), mode=self.config.pad_mode)]
        for _ in range(levels):
            sources.append(F.avg_pool2d(sources[-1], 2))
        return sources

    def compose(self, coefficients: torch.Tensor, pyramid_ir: List[torch.Tensor],
                pyramid_vis: List[torch.Tensor]) -> torch.Tensor:
        """The fused image from the head's coefficients (N, K * C, h, w), at level J = config.coefficient_level
        (log2(2 * input_scale); log2(input_scale) with the guided step) of the sources' box pyramids [x, pool2(x), pool4(x), ...] (N, 1 or C, H / 2^j, W / 2^j):

            fused = a_ir * ir + a_vis * vis + up(b + sum_{j=1..L} up_j(g_ir_j * ir_j + g_vis_j * vis_j))

        with every coefficient upsampled bilinearly to the level it multiplies. With L = pyramid_levels = 0 this is
        v1's local affine model. With levels, a source's fine detail (x - up(pool2(x))) can be kept in full (a = 1,
        g_1 = -1) while its coarse intensity is weighted down, which is what the pyramid teacher does where both
        sources carry structure and one gain per source cannot. The sums over coarser levels are folded into the
        offset on the way up, so the full-resolution work stays one 3-channel upsampling and four multiply-adds.
        """
        c = self.config.out_channels
        top = self.config.coefficient_level
        if self.config.pyramid_levels == 0:
            x = F.interpolate(coefficients, scale_factor=float(2 ** top), mode="bilinear", align_corners=False)
        else:
            x = coefficients
            for level in range(top, 0, -1):
                if level <= self.config.pyramid_levels:
                    gains = x[:, (1 + 2 * level) * c:(3 + 2 * level) * c]
                    offset = x[:, 2 * c:3 * c] + gains[:, :c] * pyramid_ir[level] + gains[:, c:] * pyramid_vis[level]
                    x = torch.cat([x[:, :2 * c], offset, x[:, 3 * c:(1 + 2 * level) * c]], dim=1)
                x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return x[:, :c] * pyramid_ir[0] + x[:, c:2 * c] * pyramid_vis[0] + x[:, 2 * c:3 * c]

    def compose_bands(self, coefficients: torch.Tensor, sources: List[torch.Tensor]) -> torch.Tensor:
        """The fused image with K = config.detail_bands: the network's affine model on the sources' level K, then the
        K finest band-pass levels added back, finest last, as a Laplacian pyramid is collapsed:

            x_K = a_ir * ir_K + a_vis * vis_K + b [+ coarse_rule(ir_K, vis_K)],
            x_j = up(x_{j+1}) + g_j * band_j,    fused = x_0

        band_j fuses the two sources' detail at level j (x_j - up(x_{j+1}) of the box pyramid) by the pyramid
        teacher's rule: each weighted by min(1, 2 * its share of the Gaussian-smoothed band energy), so where both
        carry structure both are kept in full and where one dominates the other fades out. The rule is fixed; the
        network sets each band's gain g_j per region (1 at initialisation: the rule as it is) and everything coarser.
        Detail at full resolution therefore never passes through a low-resolution gain, which is what kept v1/v2
        softer than their teacher. Full-resolution work: one 2-source bilinear upsampling, the energy (square,
        separable 9-tap blur), the weights, one upsampling of the coarser result and of the band gain.
        """
        c = self.config.out_channels
        bands = self.config.detail_bands
        top = self.config.coefficient_level
        x = coefficients
        if top >= bands:
            if top > bands:
                x = F.interpolate(x, scale_factor=float(2 ** (top - bands)), mode="bilinear", align_corners=False)
            affine, gains, gains_level = x[:, :3 * c], x[:, 3 * c:], bands
        else:   # bands below the coefficients' level: the affine part is averaged down to level K, the gains stay
            affine, gains, gains_level = F.avg_pool2d(x[:, :3 * c], 2 ** (bands - top)), x[:, 3 * c:], top
        coarsest = sources[bands]
        fused = affine[:, :c] * coarsest[:, :1] + affine[:, c:2 * c] * coarsest[:, 1:] + affine[:, 2 * c:]
        if self.config.coarse_levels:
            fused = fused + self.coarse_rule(coarsest)
        for level in range(bands - 1, -1, -1):
            band = self.fused_band(sources[level], sources[level + 1])
            gain = gains[:, level * c:(level + 1) * c]
            if gains_level > level:
                gain = F.interpolate(gain, scale_factor=float(2 ** (gains_level - level)), mode="bilinear",
                                     align_corners=False)
            elif gains_level < level:
                gain = F.avg_pool2d(gain, 2 ** (level - gains_level))
            fused = F.interpolate(fused, scale_factor=2.0, mode="bilinear", align_corners=False) + gain * band
        return fused

    def compose_fixed(self, sources: List[torch.Tensor]) -> torch.Tensor:
        """Without a network (config.network false): the coarse rule at level K, then each band added back x
        config.fixed_band_gain, as compose_bands does with constant coefficients (affine part 0, every band gain the
        same) but without building and upsampling constant coefficient maps."""
        bands = self.config.detail_bands
        fused = self.coarse_rule(sources[bands])
        for level in range(bands - 1, -1, -1):
            fused = F.interpolate(fused, scale_factor=2.0, mode="bilinear", align_corners=False) \
                + self.config.fixed_band_gain * self.fused_band(sources[level], sources[level + 1])
        return fused

    def fused_band(self, sources: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """One band-pass level of both sources fused by their shares of the local band energy (the `pyramid`
        teacher's rule, teacher/multiscale.py). sources (N, 1 + C, h, w): IR then VIS; coarse: the next level."""
        detail = sources - F.interpolate(coarse, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.energy_fuse(detail)

    def energy_fuse(self, detail: torch.Tensor) -> torch.Tensor:
        """Band-pass coefficients (N, 1 + C, h, w) [IR, VIS...] fused by their shares of the local band energy:
        w = min(1, 2 * share), (N, C, h, w)."""
        # x16 before squaring keeps the energies of faint detail above float16's smallest normals (TensorRT FP16);
        # the shares do not change
        scaled = 16.0 * detail
        energy = scaled * scaled
        taps = self.energy_taps
        radius = taps.shape[-1] // 2
        energy = F.conv2d(energy, taps, padding=(0, radius), groups=taps.shape[0])
        energy = F.conv2d(energy, taps.transpose(2, 3), padding=(radius, 0), groups=taps.shape[0])
        # (split, not two slices: one node each in ONNX; channel sums as ReduceSum were slower in ONNX Runtime)
        energy_ir, energy_vis = energy.split([1, energy.shape[1] - 1], dim=1)
        detail_ir, detail_vis = detail.split([1, detail.shape[1] - 1], dim=1)
        share_ir = energy_ir / (energy_ir + energy_vis + 1e-6)
        weight_ir = (2.0 * share_ir).clamp(max=1.0)
        weight_vis = (2.0 - 2.0 * share_ir).clamp(max=1.0)
        return weight_ir * detail_ir + weight_vis * detail_vis

    def _binomial(self, x: torch.Tensor, dim: int, stride: int = 1, transpose: bool = False) -> torch.Tensor:
        """The 5-tap binomial filter along dim (3: width, 2: height), one per channel; stride 2 samples every
        second pixel. transpose: x2 by inserting zeros between pixels first (the taps x2 keep the mean along that
        axis), of an input with one replicated pixel on each side along dim, cropped to exactly 2x the unpadded
        size (padding 4, output_padding 1: no slicing by shape in the graph)."""
        channels = int(x.shape[1])          # a constant when traced: the graph keeps no shape arithmetic
        taps = self.binomial_taps[:channels]
        if dim == 2:
            taps = taps.transpose(2, 3)
        steps = (1, stride) if dim == 3 else (stride, 1)
        if transpose:
            crop, extra = ((0, 4), (0, 1)) if dim == 3 else ((4, 0), (1, 0))
            return F.conv_transpose2d(x, 2.0 * taps, stride=steps, padding=crop, output_padding=extra,
                                      groups=channels)
        return F.conv2d(x, taps, stride=steps, groups=channels)

    def _pyramid_down(self, x: torch.Tensor) -> torch.Tensor:
        """Binomial blur (reflected borders) and every second pixel: the teacher's pyramid_down. (Levels of 2 pixels
        or fewer, from inputs of a few dozen pixels, replicate their borders instead; an ONNX export keeps the mode
        of its example input, so export at a realistic size.)"""
        mode = "reflect" if min(int(x.shape[-2]), int(x.shape[-1])) > 2 else "replicate"
        x = F.pad(x, (2, 2, 2, 2), mode=mode)
        return self._binomial(self._binomial(x, 3, 2), 2, 2)

    def _pyramid_up(self, x: torch.Tensor) -> torch.Tensor:
        """x2 by zero insertion and the binomial filter x4 (the teacher's pyramid_up), the borders replicated by one
        pixel first so the edge rows keep their level; (h, w) -> (2h, 2w)."""
        x = F.pad(x, (1, 1, 1, 1), mode="replicate")
        return self._binomial(self._binomial(x, 3, 2, transpose=True), 2, 2, transpose=True)

    def coarse_rule(self, sources: torch.Tensor) -> torch.Tensor:
        """The pyramid teacher's fusion (teacher/multiscale.py, SaliencyPyramidFusion) of sources (N, 1 + C, h, w)
        [IR, VIS...] at the detail bands' coarsest level: config.coarse_levels binomial band-pass levels, each fused
        by the energy rule (w = min(1, 2 * share)) x config.coarse_gain, and the low-pass residual by a soft maximum
        (a logistic weight of IR - VIS, config.coarse_softness wide), collapsed back to (N, C, h, w). At 1/8
        resolution and below, so cheap; the network adds its affine correction to it."""
        levels, bands = [sources], []
        for _ in range(self.config.coarse_levels):
            levels.append(self._pyramid_down(levels[-1]))
            bands.append(levels[-2] - self._pyramid_up(levels[-1]))
        residual_ir, residual_vis = levels[-1].split([1, levels[-1].shape[1] - 1], dim=1)
        weight_ir = torch.sigmoid((residual_ir - residual_vis) * (1.0 / self.config.coarse_softness))
        fused = weight_ir * residual_ir + (1.0 - weight_ir) * residual_vis
        for band in reversed(bands):
            fused = self._pyramid_up(fused) + self.config.coarse_gain * self.energy_fuse(band)
        return fused

    @property
    def feature_channels(self) -> List[int]:
        """Channels of the fused features returned by forward_with_features (none without a network)."""
        return list(self.encoder_ir.channels) if self.encoder_ir is not None else []
