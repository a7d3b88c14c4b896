"""Distillation and fusion losses (pure torch, differentiable, shapes in the docstrings; SSIM and Sobel from kornia).

All images are float tensors in [0, 1] of shape (N, C, H, W); every loss returns a scalar (mean over the batch).

Teacher terms pull the student towards the teacher's fusion: `l1`, `ssim_loss`, `gradient_loss` (Sobel),
`PerceptualLoss` (VGG-16 features from a local weights file) and `FeatureDistillationLoss` (intermediate features,
when the teacher exposes them). Source terms let the student go beyond its teacher: `intensity_loss` pulls towards
max(IR, VIS) (salient thermal targets stay bright), `source_gradient_loss` towards the stronger of the two source
gradients at each pixel (the texture of whichever modality has more), `source_ssim_loss` keeps the structure of
both (so no teacher's bias towards one camera can be learned unopposed). `FusionLoss` weighs them from the config and
runs an L1-only warm-up first.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


# -------------------------------------------------------------------------------------------------------- primitives
def ssim_map(x: torch.Tensor, y: torch.Tensor, window_size: int = 11, data_range: float = 1.0) -> torch.Tensor:
    """Per-pixel SSIM (Wang et al. 2004: Gaussian window of sigma 1.5, 'valid' filtering), as kornia.metrics.ssim
    computes it (to float32 rounding, gradients too: tests/test_losses.py).

    x, y: (N, C, H, W) -> (N, C, H - window_size + 1, W - window_size + 1). Matches scikit-image's
    structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False) on the same region.

    The five local moments (x, y, x^2, y^2, xy) go through kornia's Gaussian filter as the channels of one
    tensor: kornia.metrics.ssim filters them one by one, and the one-channel convolutions that makes run 5.6x
    slower on the CPU (forward + backward, 8 x 256^2, one thread: 490 against 88 ms). Training spent 80% of each
    step there.
    """
    import kornia
    channels = x.shape[1]
    kernel = kornia.filters.get_gaussian_kernel2d((window_size, window_size), (1.5, 1.5), device=x.device,
                                                  dtype=x.dtype)
    moments = kornia.filters.filter2d(torch.cat([x, y, x * x, y * y, x * y], dim=1), kernel, padding="valid")
    mu_x, mu_y, xx, yy, xy = moments.split(channels, dim=1)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_xy, mu_xx, mu_yy = mu_x * mu_y, mu_x * mu_x, mu_y * mu_y
    numerator = (2 * mu_xy + c1) * (2 * (xy - mu_xy) + c2)
    return numerator / ((mu_xx + mu_yy + c1) * ((xx - mu_xx) + (yy - mu_yy) + c2) + 1e-12)


def ssim(x: torch.Tensor, y: torch.Tensor, window_size: int = 11) -> torch.Tensor:
    """Mean SSIM, (N, C, H, W) x 2 -> scalar."""
    return ssim_map(x, y, window_size).mean()


def ssim_loss(x: torch.Tensor, y: torch.Tensor, window_size: int = 11) -> torch.Tensor:
    """1 - SSIM: 0 for identical images, (N, C, H, W) x 2 -> scalar."""
    return 1.0 - ssim(x, y, window_size)


def sobel(x: torch.Tensor) -> torch.Tensor:
    """Normalised Sobel derivatives (kornia, edge-replicated borders): (N, C, H, W) -> (N, C, 2, H, W), [d/dx, d/dy].

    Normalised by 8, so a ramp rising by `a` per pixel along x has d/dx = a.
    """
    import kornia
    return kornia.filters.spatial_gradient(x, mode="sobel", order=1, normalized=True)


def gradient_magnitude(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """|Sobel gradient|, (N, C, H, W) -> (N, C, H, W). `eps` keeps the square root differentiable at 0 (its
    derivative g / sqrt(g^2 + eps) stays bounded by 1); computed in float32 so it survives mixed precision."""
    g = sobel(x.float())
    return torch.sqrt(g[:, :, 0] ** 2 + g[:, :, 1] ** 2 + eps)


def l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference, (N, C, H, W) x 2 -> scalar."""
    return (x - y).abs().mean()


def gradient_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L1 between the Sobel derivatives (both directions) of x and y, (N, C, H, W) x 2 -> scalar."""
    return (sobel(x) - sobel(y)).abs().mean()


def intensity_loss(fused: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
    """L1 to the per-pixel max(IR, VIS) (SeAFusion's intensity term): keeps hot targets and bright regions."""
    return (fused - torch.maximum(ir, vis)).abs().mean()


def source_ssim_loss(fused: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
    """1 - (SSIM(F, IR) + SSIM(F, VIS)) / 2 (U2Fusion/SwinFusion's structural term): the fusion must keep the local
    structure of both sources, so neither camera can be dropped, (N, 1, H, W) x 3 -> scalar."""
    # One filtering pass for both pairs (the sources as channels): the mean over them is the mean of the two SSIMs.
    return 1.0 - ssim(torch.cat([fused, fused], dim=1), torch.cat([ir, vis], dim=1))


def source_gradient_loss(fused: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
    """L1 between |grad fused| and max(|grad IR|, |grad VIS|) (SeAFusion's texture term), scalar."""
    target = torch.maximum(gradient_magnitude(ir), gradient_magnitude(vis))
    return (gradient_magnitude(fused) - target).abs().mean()


# ------------------------------------------------------------------------------------------------------- perceptual
VGG16_SLICES = (4, 9, 16)   # ends of relu1_2, relu2_2, relu3_3 in torchvision's vgg16().features
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PerceptualLoss(nn.Module):
    """L1 between VGG-16 features (relu1_2, relu2_2, relu3_3) of two images, (N, 1 or 3, H, W) x 2 -> scalar.

    Weights come from a local file only (no download): a torchvision vgg16 state dict ("features.N.weight" keys,
    e.g. vgg16-397923af.pth converted to safetensors, or the .pth itself) or one holding only those feature layers.
    Use `PerceptualLoss.from_path(path)`, which returns None with a one-line report when the file is absent.
    """

    def __init__(self, state_dict: Dict[str, torch.Tensor]):
        super().__init__()
        torchvision = __import__("torchvision")
        features = torchvision.models.vgg16(weights=None).features[: VGG16_SLICES[-1]]
        prefix = "features." if any(k.startswith("features.") for k in state_dict) else ""
        wanted = {k: state_dict[prefix + k] for k in features.state_dict() if prefix + k in state_dict}
        missing = set(features.state_dict()) - set(wanted)
        if missing:
            raise ValueError(f"VGG-16 weights lack {len(missing)} feature tensors (e.g. {sorted(missing)[0]})")
        features.load_state_dict(wanted)
        self.slices = nn.ModuleList()
        start = 0
        for end in VGG16_SLICES:
            self.slices.append(features[start:end])
            start = end
        self.requires_grad_(False)
        self.eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    @classmethod
    def from_path(cls, path: Optional[str | os.PathLike], log=None) -> Optional["PerceptualLoss"]:
        log = log or (lambda msg: print(msg, file=sys.stderr))
        if not path:
            log("perceptual loss: off (no VGG-16 weights given; set loss.vgg_weights to a local vgg16 file)")
            return None
        path = Path(path)
        if not path.is_file():
            log(f"perceptual loss: off (VGG-16 weights not found at {path})")
            return None
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)  # tensors only, no pickled code
        return cls(state)

    def train(self, mode: bool = True):  # frozen feature extractor: always in eval mode
        return super().train(False)

    def _features(self, x: torch.Tensor) -> List[torch.Tensor]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        out = []
        for block in self.slices:
            x = block(x)
            out.append(x)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return sum((a - b).abs().mean() for a, b in zip(self._features(x), self._features(y)))


# ---------------------------------------------------------------------------------------------- feature distillation
class FeatureDistillationLoss(nn.Module):
    """Match student features to teacher features through learned 1x1 adapters (FitNets-style).

    student_features: list of (N, C_s[i], h_i, w_i); teacher_features: list of (N, C_t[i], H_i, W_i). Teacher maps are
    resized (bilinear) to the student's resolution; both are normalised per channel over space so the term measures
    structure rather than the teacher's feature scale. Returns a scalar (mean MSE over the pairs).
    """

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int]):
        super().__init__()
        if len(student_channels) != len(teacher_channels):
            raise ValueError("one teacher feature map per student feature map is needed")
        self.adapters = nn.ModuleList(nn.Conv2d(s, t, 1) for s, t in zip(student_channels, teacher_channels))

    @staticmethod
    def _normalise(f: torch.Tensor) -> torch.Tensor:
        f = f - f.mean(dim=(2, 3), keepdim=True)
        return f / (f.pow(2).mean(dim=(2, 3), keepdim=True).sqrt() + 1e-6)

    def forward(self, student_features: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor]) -> torch.Tensor:
        losses = []
        for adapter, s, t in zip(self.adapters, student_features, teacher_features):
            if t.shape[-2:] != s.shape[-2:]:
                t = F.interpolate(t, size=s.shape[-2:], mode="bilinear", align_corners=False)
            losses.append(F.mse_loss(self._normalise(adapter(s)), self._normalise(t.detach())))
        return torch.stack(losses).mean()


# ------------------------------------------------------------------------------------------------------ the mixture
@dataclass
class LossWeights:
    l1: float = 1.0
    ssim: float = 1.0
    gradient: float = 0.5
    perceptual: float = 0.1
    feature: float = 0.5
    intensity: float = 0.0   # source-driven: towards max(IR, VIS)
    source_gradient: float = 0.0  # source-driven: towards the stronger source gradient
    source_ssim: float = 0.0  # source-driven: structural similarity to both sources
    warmup_l1_steps: int = 0  # only the L1 term before this step


class FusionLoss(nn.Module):
    """The weighted mixture. forward(fused, teacher, ir, vis, step) -> (total scalar, {term: float value}).

    fused/teacher: (N, C, H, W); ir: (N, 1, H, W); vis: (N, C, H, W). Source terms compare luminance: with C = 3 the
    fused and VIS images are reduced to their luminance first.
    """

    def __init__(self, weights: LossWeights, perceptual: Optional[PerceptualLoss] = None,
                 feature: Optional[FeatureDistillationLoss] = None):
        super().__init__()
        self.weights = weights
        self.perceptual = perceptual if weights.perceptual > 0 else None
        self.feature = feature if weights.feature > 0 else None

    def active_terms(self, step: int) -> List[str]:
        w = self.weights
        if step < w.warmup_l1_steps:
            return ["l1"]
        terms = [name for name in ("l1", "ssim", "gradient", "intensity", "source_gradient", "source_ssim")
                 if getattr(w, name) > 0]
        if self.perceptual is not None:
            terms.append("perceptual")
        if self.feature is not None:
            terms.append("feature")
        return terms

    def forward(self, fused: torch.Tensor, teacher: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor,
                step: int = 0, student_features=None, teacher_features=None):
        values: Dict[str, torch.Tensor] = {}
        terms = self.active_terms(step)
        if "l1" in terms:
            values["l1"] = l1(fused, teacher)
        if "ssim" in terms:
            values["ssim"] = ssim_loss(fused, teacher)
        if "gradient" in terms:
            values["gradient"] = gradient_loss(fused, teacher)
        if "perceptual" in terms:
            values["perceptual"] = self.perceptual(fused, teacher)
        if "feature" in terms and student_features is not None and teacher_features is not None:
            values["feature"] = self.feature(student_features, teacher_features)
        if {"intensity", "source_gradient", "source_ssim"} & set(terms):
            from runtime.color import luminance
            fused_y = luminance(fused, channel_axis=1).unsqueeze(1) if fused.shape[1] == 3 else fused
            vis_y = luminance(vis, channel_axis=1).unsqueeze(1) if vis.shape[1] == 3 else vis
            if "intensity" in terms:
                values["intensity"] = intensity_loss(fused_y, ir, vis_y)
            if "source_gradient" in terms:
                values["source_gradient"] = source_gradient_loss(fused_y, ir, vis_y)
            if "source_ssim" in terms:
                values["source_ssim"] = source_ssim_loss(fused_y, ir, vis_y)
        total = sum(getattr(self.weights, name) * value for name, value in values.items())
        return total, {name: float(value.detach()) for name, value in values.items()}
