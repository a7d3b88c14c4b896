"""Published multi-scale / saliency fusion methods: zero-weights teachers that fuse day and night scenes alike.

- `gff`: guided-filtering fusion (Li, Kang and Hu, "Image fusion with guided filtering", IEEE TIP 2013).
  Two-scale decomposition (31x31 mean filter), saliency = Gaussian-smoothed |Laplacian|, binary "most salient source"
  maps refined by a guided filter with each source as guide: a wide, smooth one (r 45, eps 0.3) for the base layers
  and a tight, edge-following one (r 7, eps 1e-6) for the detail layers.
- `vsmwls`: visual-saliency-map + weighted-least-squares fusion (Ma, Zhou, Wang and Zong, Infrared Physics &
  Technology 82, 2017). Four-level decomposition with rolling guidance filters (sigma_s 2, 4, 8; sigma_r 0.05; 4
  iterations) and a final Gaussian; the base layers are weighted by each image's visual saliency map (a pixel is
  salient when its grey value differs from most of the image's pixels: V(p) = sum_j hist(j) |I(p) - j|), the
  finest detail layer by max-abs, the coarser detail layers by a smoothed max-abs choice followed by the WLS step,
  which pulls the fused detail towards the visible detail wherever the IR detail is weak (so IR sensor noise and
  thermal blur are not amplified). The WLS energy is diagonal, so it has a closed-form per-pixel solution.

Both run in pure torch through kornia's filters on (N, 1, H, W) batches in [0, 1], CPU or GPU. The parameters are
the authors'; where this code deviates from their MATLAB release it says so beside the line.
"""
from __future__ import annotations

from typing import Any

from teacher.base import FusionTeacher


def _kernel(radius: int, height: int, width: int) -> int:
    """A box/guided-filter window of radius `radius`, shrunk so reflect padding stays valid on small images."""
    return 2 * max(1, min(radius, (min(height, width) - 1) // 2)) + 1


def guided_filter(guide, source, radius: int, eps: float):
    """He et al.'s guided filter (kornia), window 2r+1: (N, 1, H, W) x 2 -> (N, 1, H, W)."""
    import kornia
    k = _kernel(radius, *guide.shape[-2:])
    return kornia.filters.guided_blur(guide, source, k, eps, border_type="reflect", separable=True)


def gaussian_filter(img, sigma: float):
    """Gaussian blur with a 2*ceil(3 sigma)+1 window (MATLAB's fspecial convention), (N, 1, H, W)."""
    import kornia
    k = _kernel(int(3 * sigma + 0.999), *img.shape[-2:])
    return kornia.filters.gaussian_blur2d(img, (k, k), (sigma, sigma), border_type="reflect")


class GuidedFilterFusion(FusionTeacher):
    """`gff`: Li, Kang and Hu 2013. Parameters as published (r1 45, eps1 0.3, r2 7, eps2 1e-6, 31x31 mean filter,
    Laplacian saliency smoothed by an 11x11 Gaussian of sigma 5)."""

    name = "gff"

    def __init__(self, device: str = "cpu", base_radius: int = 45, base_eps: float = 0.3, detail_radius: int = 7,
                 detail_eps: float = 1e-6, mean_size: int = 31):
        super().__init__(device)
        self.base_radius, self.base_eps = base_radius, base_eps
        self.detail_radius, self.detail_eps = detail_radius, detail_eps
        self.mean_size = mean_size

    def fuse_batch(self, ir, vis_y):
        import kornia
        import torch
        h, w = ir.shape[-2:]
        sources = torch.cat([ir, vis_y], dim=1).float()                              # (N, 2, H, W)
        mean_k = _kernel(self.mean_size // 2, h, w)
        base = kornia.filters.box_blur(sources, (mean_k, mean_k), border_type="reflect")
        detail = sources - base
        saliency = kornia.filters.laplacian(sources, 3, border_type="reflect", normalized=False).abs()
        sal_k = _kernel(5, h, w)
        saliency = kornia.filters.gaussian_blur2d(saliency, (sal_k, sal_k), (5.0, 5.0), border_type="reflect")
        # ties (flat regions, equal saliency) go to neither source alone: both get 1/2
        winner = (saliency[:, :1] > saliency[:, 1:]).float() + 0.5 * (saliency[:, :1] == saliency[:, 1:]).float()
        masks = torch.cat([winner, 1.0 - winner], dim=1)
        w_base = torch.cat([guided_filter(sources[:, i:i + 1], masks[:, i:i + 1], self.base_radius, self.base_eps)
                            for i in range(2)], dim=1)
        w_detail = torch.cat([guided_filter(sources[:, i:i + 1], masks[:, i:i + 1], self.detail_radius,
                                            self.detail_eps) for i in range(2)], dim=1)
        # the guided filter can overshoot slightly outside [0, 1]; normalise as the authors do, with a floor
        w_base = w_base.clamp_min(0) + 1e-6
        w_detail = w_detail.clamp_min(0) + 1e-6
        w_base = w_base / w_base.sum(dim=1, keepdim=True)
        w_detail = w_detail / w_detail.sum(dim=1, keepdim=True)
        fused = (w_base * base).sum(dim=1, keepdim=True) + (w_detail * detail).sum(dim=1, keepdim=True)
        return fused.clamp(0, 1).to(ir.dtype)

    def settings(self) -> dict[str, Any]:
        return {"teacher": self.name, "base_radius": self.base_radius, "base_eps": self.base_eps,
                "detail_radius": self.detail_radius, "detail_eps": self.detail_eps, "mean_size": self.mean_size}


def visual_saliency_map(img):
    """Ma et al.'s VSM of (N, 1, H, W) in [0, 1]: V(p) = sum_j hist(j) |I(p) - j| over 256 grey levels, scaled to
    [0, 1] per image (MATLAB's mat2gray)."""
    import torch
    levels = torch.arange(256, device=img.device, dtype=torch.float32)
    quantised = (img.float() * 255).round().clamp(0, 255).long()                  # (N, 1, H, W)
    out = torch.empty_like(img, dtype=torch.float32)
    for n in range(img.shape[0]):
        hist = torch.bincount(quantised[n].flatten(), minlength=256).float()
        table = (hist[None, :] * (levels[:, None] - levels[None, :]).abs()).sum(dim=1)  # saliency of each level
        v = table[quantised[n]]
        lo, hi = v.min(), v.max()
        out[n] = (v - lo) / (hi - lo) if hi > lo else torch.zeros_like(v)
    return out


def rolling_guidance_filter(img, sigma_s: float, sigma_r: float, iterations: int = 4):
    """Zhang et al.'s rolling guidance filter in the guided-filter form of the VSM-WLS release: a Gaussian removes
    structures smaller than sigma_s, then each iteration recovers the large edges by guided filtering the input
    with the previous result as guide (radius sigma_s, eps sigma_r^2)."""
    result = gaussian_filter(img, sigma_s)
    for _ in range(iterations):
        result = guided_filter(result, img, int(round(sigma_s)), sigma_r ** 2)
    return result


class VSMWLSFusion(FusionTeacher):
    """`vsmwls`: Ma et al. 2017. Four levels (RGF sigma_s 2, 4, 8 then a Gaussian of sigma 2), sigma_r 0.05,
    4 RGF iterations, WLS lambda 0.01 with a 7x7 window, as in the authors' release."""

    name = "vsmwls"

    def __init__(self, device: str = "cpu", levels: int = 4, sigma_s: float = 2.0, sigma_r: float = 0.05,
                 iterations: int = 4, wls_lambda: float = 0.01):
        super().__init__(device)
        self.levels, self.sigma_s, self.sigma_r = levels, sigma_s, sigma_r
        self.iterations, self.wls_lambda = iterations, wls_lambda

    def decompose(self, img) -> list:
        """[detail_1 (finest), ..., detail_levels, base]."""
        layers, current, sigma = [], img, self.sigma_s
        for _ in range(self.levels - 1):
            smoother = rolling_guidance_filter(current, sigma, self.sigma_r, self.iterations)
            layers.append(current - smoother)
            current, sigma = smoother, 2 * sigma
        base = gaussian_filter(current, self.sigma_s)
        layers.append(current - base)
        layers.append(base)
        return layers

    def fuse_batch(self, ir, vis_y):
        import kornia
        import torch
        vis, ir = vis_y.float(), ir.float()          # the release's I1 is the visible image, I2 the infrared
        vis_layers, ir_layers = self.decompose(vis), self.decompose(ir)
        v_vis, v_ir = visual_saliency_map(vis), visual_saliency_map(ir)
        fused = (0.5 + 0.5 * (v_vis - v_ir)) * vis_layers[-1] + (0.5 + 0.5 * (v_ir - v_vis)) * ir_layers[-1]
        finest_vis, finest_ir = vis_layers[0], ir_layers[0]
        fused = fused + torch.where(finest_ir.abs() > finest_vis.abs(), finest_ir, finest_vis)
        win = _kernel(3, *ir.shape[-2:])
        for d_vis, d_ir in zip(vis_layers[1:-1], ir_layers[1:-1]):
            choose_vis = gaussian_filter((d_ir.abs() < d_vis.abs()).float(), 2.0)
            merged = choose_vis * d_vis + (1 - choose_vis) * d_ir
            # WLS: argmin (D - merged)^2 + lambda * a * (D - d_vis)^2 with a = 1 / (|mean_7x7 d_ir| + 1e-6),
            # a diagonal system, so D = (merged + lambda a d_vis) / (1 + lambda a)
            a = 1.0 / (kornia.filters.box_blur(d_ir, (win, win), border_type="replicate").abs() + 1e-6)
            la = self.wls_lambda * a
            fused = fused + (merged + la * d_vis) / (1 + la)
        return fused.clamp(0, 1).to(ir.dtype)

    def settings(self) -> dict[str, Any]:
        return {"teacher": self.name, "levels": self.levels, "sigma_s": self.sigma_s, "sigma_r": self.sigma_r,
                "iterations": self.iterations, "wls_lambda": self.wls_lambda}


class SaliencyPyramidFusion(FusionTeacher):
    """`pyramid`: Laplacian-pyramid fusion whose every band keeps what is salient in either source, day and night.

    The classical `laplacian` baseline averages the low-pass residual, which halves the contrast of whatever is bright
    in only one camera (a hot pedestrian in IR, a street light or the daytime sky in the visible frame), and picks
    each band-pass coefficient from one source by magnitude alone, which lets isolated noisy coefficients (dark,
    noisy visible frames; IR fixed-pattern noise) flip single pixels ("salt") and drops the weaker source's texture
    even where it is real. Here:
    - the residual takes a soft maximum of the two sources (a logistic weight of their difference, `base_softness`
      wide), so a region keeps the brightness of the source in which it stands out;
    - each band weighs each source by its share of the local band energy (squared coefficients smoothed by a
      Gaussian of `energy_sigma` at that level): w = min(1, 2 * share). Where both sources carry comparable
      structure both are kept in full (their details add); where one dominates, the other fades out smoothly, so
      weak noise is not added to strong structure and there are no seams where the choice changes;
    - `detail_gain` scales the fused band-pass levels (1: none); `detail_levels` limits it to the finest levels.
    The weights are smooth, so a fusion network that predicts per-pixel source gains at low resolution (the student)
    can follow this teacher closely.
    """

    name = "pyramid"

    def __init__(self, device: str = "cpu", levels: int = 5, base_softness: float = 0.05,
                 energy_sigma: float = 2.0, detail_gain: float = 1.0, detail_levels: int = 0):
        super().__init__(device)
        self.levels, self.base_softness, self.energy_sigma = levels, base_softness, energy_sigma
        self.detail_gain, self.detail_levels = float(detail_gain), int(detail_levels)

    def fuse_batch(self, ir, vis_y):
        import torch

        from teacher.baselines import binomial_kernel, collapse_pyramid, laplacian_pyramid, pyramid_depth
        ir, vis = ir.float(), vis_y.float()
        kernel = binomial_kernel(ir.device, ir.dtype)
        levels = pyramid_depth(ir.shape[-2:], self.levels)
        bands_ir, bands_vis = laplacian_pyramid(ir, levels, kernel), laplacian_pyramid(vis, levels, kernel)
        fused = []
        for a, b in zip(bands_ir[:-1], bands_vis[:-1]):
            energy = torch.cat([a, b], dim=1) ** 2
            if min(a.shape[-2:]) > 4:
                energy = gaussian_filter(energy, self.energy_sigma)
            share_ir = energy[:, :1] / (energy.sum(dim=1, keepdim=True) + 1e-8)
            band = (2 * share_ir).clamp(max=1) * a + (2 * (1 - share_ir)).clamp(max=1) * b
            if self.detail_gain != 1.0 and (self.detail_levels <= 0 or len(fused) < self.detail_levels):
                band = band * self.detail_gain
            fused.append(band)
        base_ir, base_vis = bands_ir[-1], bands_vis[-1]
        weight_ir = torch.sigmoid((base_ir - base_vis) / self.base_softness)
        fused.append(weight_ir * base_ir + (1 - weight_ir) * base_vis)
        return collapse_pyramid(fused, kernel).clamp(0, 1).to(ir.dtype)

    def settings(self) -> dict[str, Any]:
        return {"teacher": self.name, "levels": self.levels, "base_softness": self.base_softness,
                "energy_sigma": self.energy_sigma, "detail_gain": self.detail_gain,
                "detail_levels": self.detail_levels}


class SharpPyramidFusion(SaliencyPyramidFusion):
    """`pyramid-sharp`: `pyramid` with every fused band-pass level x1.1, the teacher of the v2 students (nano2).

    The plain pyramid keeps both sources' detail where both carry it but no more, and on daytime frames it stays
    below the max-abs Laplacian rule on spatial frequency and average gradient, the sharpness metrics. Ten percent
    more band-pass signal lifts those by about 9% on the training lists (RoadScene train SF 14.1 -> 15.4, LLVIP train
    11.8 -> 12.9), lifts VIF slightly (0.683 -> 0.690, 1.131 -> 1.157) and costs about 0.01 of Qabf (edge
    overshoot); 1.3 cost 0.03-0.04 of Qabf, and a finest-level-only boost lowered VIF (docs/distill.md).
    """

    name = "pyramid-sharp"

    def __init__(self, device: str = "cpu", levels: int = 5, base_softness: float = 0.05,
                 energy_sigma: float = 2.0, detail_gain: float = 1.1, detail_levels: int = 0):
        super().__init__(device, levels, base_softness, energy_sigma, detail_gain, detail_levels)
