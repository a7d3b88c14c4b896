"""The physics-inspired multi-task decomposition network, RGB -> (intensity, material, context) -> IR.

    image (N,3,H,W) --ResNet + pixel decoder--> shared features (N,E,H,W) at full resolution
        intensity head -> T (N,1,H,W) in (0,1)            "how warm", trained on the per-image normalised IR
        material head  -> logits (N,M,H,W)                trained on k-means / quantised material pseudo-labels
        context head   -> C (N,8,H,W) in (0,1)            trained on RGB-derived context maps
    PhysicsFusion(T, softmax(logits), C) -> IR (N,1,H,W)

PhysicsFusion borrows the *form* of thermal emission, not its physics: a learnable exponent p (initialised at 4, as
in the Stefan-Boltzmann T^4 law), an emissivity-like value per material class eps = sum_k P(k) sigmoid(e_k), and an
environment term from the context channels (reflected surroundings, weighted by 1 - eps):

    radiance = eps * T^p + (1 - eps) * env^p,   apparent = radiance^(1/p)
    IR = sigmoid(gain * logit(alpha * apparent + (1 - alpha) * T) + bias)      alpha, gain, bias learnable

An 8-bit RGB frame does not determine temperature, emissivity and surroundings (one equation, three unknowns): the
maps are learned representations that resemble those quantities because of the pseudo-labels, nothing more.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from teacher.irgen.decomp import DecompConfig
from teacher.irgen.layers import PixelDecoder, conv_norm_act
from teacher.irgen.modeling import ConfigModel
from teacher.irgen.resnet import IMAGENET_MEAN, IMAGENET_STD, ResNet, load_imagenet_weights


def _head(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(conv_norm_act(in_ch, in_ch), nn.Conv2d(in_ch, out_ch, 1))


class PhysicsFusion(nn.Module):
    """(T (N,1,H,W), material probabilities (N,M,H,W), context (N,C,H,W)) -> IR (N,1,H,W) plus the emissivity
    and environment maps, see the module docstring."""

    def __init__(self, num_materials: int, context_channels: int, initial_exponent: float = 4.0):
        super().__init__()
        # p = 1 + softplus(raw) keeps the exponent above 1; raw chosen so p starts at `initial_exponent`.
        self.exponent_raw = nn.Parameter(torch.tensor(math.log(math.expm1(initial_exponent - 1.0))))
        self.emissivity_logits = nn.Parameter(torch.full((num_materials,), 2.0))  # eps ~ 0.88 at start
        self.environment = nn.Conv2d(context_channels, 1, 1)
        self.mix_logit = nn.Parameter(torch.tensor(0.0))
        self.gain = nn.Parameter(torch.tensor(1.0))
        self.bias = nn.Parameter(torch.tensor(0.0))

    @property
    def exponent(self) -> torch.Tensor:
        return 1.0 + F.softplus(self.exponent_raw)

    def forward(self, temperature, material_probs, context):
        eps = 1e-4
        p = self.exponent
        emissivity = torch.einsum("nmhw,m->nhw", material_probs, torch.sigmoid(self.emissivity_logits))[:, None]
        environment = torch.sigmoid(self.environment(context))
        t = temperature.clamp(eps, 1.0)
        radiance = emissivity * t ** p + (1 - emissivity) * environment.clamp(eps, 1.0) ** p
        apparent = radiance.clamp_min(eps) ** (1.0 / p)
        alpha = torch.sigmoid(self.mix_logit)
        mixed = (alpha * apparent + (1 - alpha) * temperature).clamp(eps, 1 - eps)
        ir = torch.sigmoid(self.gain * torch.logit(mixed) + self.bias)
        return ir, emissivity, environment


class DecompositionNet(ConfigModel):
    config_class = DecompConfig

    def __init__(self, config: DecompConfig):
        super().__init__(config)
        c = config
        self.backbone = ResNet(c.backbone_depth, c.backbone_width)
        self.pretrained_tensors = 0
        if c.backbone_weights:
            self.pretrained_tensors = load_imagenet_weights(self.backbone, c.backbone_weights)
        self.pixel_decoder = PixelDecoder(self.backbone.channels, c.hidden_dim, c.embed_dim, c.full_res_channels)
        self.intensity_head = _head(c.embed_dim, 1)
        self.material_head = _head(c.embed_dim, c.num_materials)
        self.context_head = _head(c.embed_dim, c.context_channels)
        self.fusion = PhysicsFusion(c.num_materials, c.context_channels)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, rgb: torch.Tensor, return_all: bool = False):
        """rgb (N,3,H,W) [0,1] -> IR (N,1,H,W) [0,1]; with return_all, (IR, dict of every intermediate map)."""
        x = (rgb - self.mean) / self.std
        _, features = self.pixel_decoder(x, self.backbone(x))
        intensity = torch.sigmoid(self.intensity_head(features))
        material_logits = self.material_head(features)
        context = torch.sigmoid(self.context_head(features))
        # The power law runs in float32 even under AMP: t ** 4 of a half-precision t underflows.
        with torch.autocast(device_type=rgb.device.type, enabled=False):
            ir, emissivity, environment = self.fusion(intensity.float(), material_logits.float().softmax(1),
                                                      context.float())
        if not return_all:
            return ir
        return ir, {"intensity": intensity, "material_logits": material_logits, "context": context,
                    "emissivity": emissivity, "environment": environment}
