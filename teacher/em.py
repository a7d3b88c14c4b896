"""EM fusion: the hierarchical Bayesian fusion model that DDFM uses as its likelihood step, run to convergence alone.

Model (Zhao et al., "Bayesian fusion for infrared and visible images", Signal Processing 2020; DDFM, ICCV 2023,
Sec. 3.2 and Algorithm 1 lines 6-13). With i the IR image, v the visible luminance and f the fused image, let

    x = f - v,   y = i - v.

The fused image should keep the IR intensities (f - i sparse: y - x Laplace) and the visible structure (f - v
smooth up to sparse jumps: a Laplace prior on the gradient of x). Both Laplace laws are Gaussian scale mixtures with
exponential mixing densities, which gives the hierarchy EM works on:

    y_j | x_j, m_j ~ N(x_j, m_j),   m_j ~ Exp(mean gamma)          (data term, latent m)
    u_j | n_j      ~ N(0, n_j),     n_j ~ Exp(mean rho)            (prior on u = grad k, latent n)
    k ~ x, u ~ grad k tied by the half-quadratic penalty  (eta / 2) (|x - k|^2 + |grad k - u|^2)

One EM iteration (DDFM Algorithm 1 lines 6-13, same order as the authors' EM_onestep):
    E-step     m_bar = E[1/m] = sqrt(2/gamma) / |y - x|,   n_bar = E[1/n] = sqrt(2/rho) / |u|
    gamma, rho = mean(E[m]), mean(E[n])  with E[m] = 1/m_bar + gamma/2 (posterior of m is inverse Gaussian)
    k-step     (I + grad^T grad) k = x + grad^T u                  solved exactly by FFT (periodic differences)
    u-step     u = eta grad k / (w n_bar + eta)                      pointwise
    x-step     x = (m_bar y + eta k) / (m_bar + eta)                 pointwise;  f = x + v

Each step minimises the EM surrogate in its own block, so the negative log posterior `objective()` never increases
(a generalised EM); `EMFusion.run` iterates until the fused image stops changing. |r| is smoothed as
sqrt(r^2 + eps^2) so the weights stay finite and the surrogate is still a true majoriser.

Where the authors' public code (MMIF-DDFM, guided_diffusion/EM_onestep.py) differs, we follow the paper's algebra:
it puts the Laplace prior on x itself with a Tikhonov term on (y - x) instead of on the gradient of x, returns
F = I - X instead of x + v, and mixes periodic (FFT) with zero-boundary differences. Here f = x + v, the differences
are periodic everywhere (on a reflect-padded image, so the wrap-around never crosses the image content), and the
prior sits on the gradient of x, which is what makes EM a fusion method on its own: run alone, the authors'
pixel-wise model collapses to one of the two sources because its only spatial term is the diffusion prior.

Shapes: all tensors are (N, 1, H, W) float in [0, 1] (u is (N, 2, H, W)); hyperparameters are (N, 1, 1, 1), so a
batch of pairs converges independently.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from teacher.base import FusionTeacher


@dataclass
class EMConfig:
    """Settings of the EM fusion (defaults chosen on RoadScene train pairs only)."""

    max_iter: int = 300       # hard cap on EM iterations
    tol: float = 2e-4         # converged when max |f_t - f_(t-1)| < tol (in [0, 1] units, ~0.05 grey levels)
    coupling: float = 64.0    # eta: strength of the k ~ x, u ~ grad k ties, in units of the data weight
    prior_weight: float = 2.0  # w: weight of the gradient prior against the data term (larger = more visible structure)
    eps: float = 1e-3         # smoothing of |.| in the Laplace terms
    pad: int = 16             # reflect padding so periodic FFT boundaries never touch the image


@dataclass
class EMState:
    """Everything EM carries from one iteration to the next (DDFM's `HyperP`)."""

    gamma: Any               # (N, 1, 1, 1) mean of the data-term mixing density (the prior's is gamma / w^2)
    k: Any                   # (N, 1, H, W) auxiliary copy of x
    u: Any                   # (N, 2, H, W) auxiliary gradient of k
    eta: Any = None          # (N, 1, 1, 1) coupling in data-weight units, fixed for a run so the objective is too
    denominator: Any = field(repr=False, default=None)  # (H, W//2+1) FFT of I + grad^T grad


# ------------------------------------------------------------------------------------------------- difference ops
def gradient(h):
    """Periodic forward differences. h: (N, 1, H, W) -> (N, 2, H, W) as (d/dx, d/dy)."""
    import torch
    return torch.cat([h.roll(-1, dims=3) - h, h.roll(-1, dims=2) - h], dim=1)


def gradient_adjoint(u):
    """grad^T of `gradient`. u: (N, 2, H, W) -> (N, 1, H, W)."""
    ux, uy = u[:, :1], u[:, 1:]
    return (ux.roll(1, dims=3) - ux) + (uy.roll(1, dims=2) - uy)


def gradient_gram_denominator(height: int, width: int, device, dtype):
    """rfft2 of I + grad^T grad for periodic forward differences: 1 + (2 - 2cos wx) + (2 - 2cos wy). (H, W//2+1)."""
    import torch
    wy = 2 * math.pi * torch.arange(height, device=device, dtype=dtype) / height
    wx = 2 * math.pi * torch.arange(width // 2 + 1, device=device, dtype=dtype) / width
    return 1.0 + (2 - 2 * torch.cos(wy))[:, None] + (2 - 2 * torch.cos(wx))[None, :]


def solve_k(x, u, denominator):
    """k = (I + grad^T grad)^-1 (x + grad^T u), exact for periodic boundaries. (N, 1, H, W)."""
    import torch
    rhs = x + gradient_adjoint(u)
    return torch.fft.irfft2(torch.fft.rfft2(rhs) / denominator, s=rhs.shape[-2:])


# ------------------------------------------------------------------------------------------------------- EM proper
def em_initial(x, y, config: EMConfig) -> EMState:
    """State for starting EM at x (DDFM's EM_Initial): k = x, u = grad x, gamma at its maximum-likelihood value."""
    denominator = gradient_gram_denominator(x.shape[-2], x.shape[-1], x.device, x.dtype)
    state = EMState(gamma=None, k=x.clone(), u=gradient(x), denominator=denominator)
    state.gamma = _ml_gamma(x, y, state, config)
    return state


def _smooth_abs(r, eps: float):
    return (r * r + eps * eps).sqrt()


def _energy(x, y, state: EMState, config: EMConfig):
    """The bracket S of the objective a * S - 3 log a (per image, summed over pixels): data + prior + ties."""
    tie = (x - state.k) ** 2 + ((gradient(state.k) - state.u) ** 2).sum(dim=1, keepdim=True)
    per_pixel = (_smooth_abs(y - x, config.eps) + config.prior_weight * _smooth_abs(state.u, config.eps).sum(
        dim=1, keepdim=True) + 0.5 * config.coupling * tie)
    return per_pixel.sum(dim=(1, 2, 3), keepdim=True)


def _ml_gamma(x, y, state: EMState, config: EMConfig):
    """gamma minimising the objective for fixed x, k, u: a = sqrt(2/gamma) = (3 * pixels) / S."""
    a = 3 * x[0].numel() / _energy(x, y, state, config)
    return 2 / a ** 2


def em_step(x, y, state: EMState, config: EMConfig):
    """One EM iteration on x = f - v given y = i - v. Returns (x_new, state_new). Shapes (N, 1, H, W)."""
    eps, w = config.eps, config.prior_weight
    a = (2 / state.gamma).sqrt()
    # E-step: posterior expectations of the inverse mixing variances (inverse-Gaussian posteriors), with the prior's
    # mixing mean rho = gamma / w^2 tied to the data term's so that w is the usual fusion trade-off.
    m_bar = a / _smooth_abs(y - x, eps)
    n_bar = w * a / _smooth_abs(state.u, eps)
    # M-step, one block-coordinate pass over the quadratic surrogate: k (FFT least squares), u and x (pointwise).
    eta = config.coupling * a
    k = solve_k(x, state.u, state.denominator)
    u = eta * gradient(k) / (n_bar + eta)
    x_new = (m_bar * y + eta * k) / (m_bar + eta)
    new_state = EMState(gamma=state.gamma, k=k, u=u, denominator=state.denominator)
    # gamma (and rho with it) to their maximum-likelihood values for the new x, k, u.
    new_state.gamma = _ml_gamma(x_new, y, new_state, config)
    return x_new, new_state


def objective(x, y, state: EMState, config: EMConfig):
    """Negative log posterior per pixel (N,) up to a constant; `em_step` never increases it.

    With a = sqrt(2/gamma): a * (sum |y - x| + w sum |u| + eta/2 (|x - k|^2 + |grad k - u|^2)) - 3 * pixels * log a
    (the Laplace normalisers of the data term and the two gradient components).
    """
    a = (2 / state.gamma).sqrt()
    pixels = x[0].numel()
    return ((a * _energy(x, y, state, config) - 3 * pixels * a.log()) / pixels).flatten()


@dataclass
class EMResult:
    fused: Any            # (N, 1, H, W) in [0, 1]
    iterations: int
    converged: Any        # (N,) bool
    last_change: Any      # (N,) max |f_t - f_(t-1)|
    objective: list       # per iteration (N,) tensors, only when tracked


class EMFusion:
    """Runs EM to convergence on a batch. Use `EMTeacher` for the FusionTeacher interface."""

    def __init__(self, config: EMConfig | None = None):
        self.config = config or EMConfig()

    def run(self, ir, vis_y, track_objective: bool = False, init=None) -> EMResult:
        """ir, vis_y: (N, 1, H, W) in [0, 1]; init: optional starting f (default the mean of the sources)."""
        import torch
        import torch.nn.functional as F
        cfg = self.config
        ir, vis_y = ir.float(), vis_y.float()
        height, width = ir.shape[-2:]
        pad = min(cfg.pad, height - 1, width - 1)
        if pad > 0:
            ir_p = F.pad(ir, (pad, pad, pad, pad), mode="reflect")
            vis_p = F.pad(vis_y, (pad, pad, pad, pad), mode="reflect")
        else:
            ir_p, vis_p = ir, vis_y
        f0 = 0.5 * (ir_p + vis_p) if init is None else (F.pad(init.float(), (pad,) * 4, mode="reflect") if pad else init.float())
        y = ir_p - vis_p
        x = f0 - vis_p
        state = em_initial(x, y, cfg)
        history = []
        converged = torch.zeros(ir.shape[0], dtype=torch.bool, device=ir.device)
        change = torch.full((ir.shape[0],), float("inf"), device=ir.device)
        iterations = 0
        for iterations in range(1, cfg.max_iter + 1):
            x_new, state = em_step(x, y, state, cfg)
            change = (x_new - x).abs().amax(dim=(1, 2, 3))
            x = x_new
            if track_objective:
                history.append(objective(x, y, state, cfg))
            converged = change < cfg.tol
            if bool(converged.all()):
                break
        fused = (x + vis_p)[..., pad:pad + height, pad:pad + width] if pad else x + vis_p
        return EMResult(fused=fused.clamp(0, 1), iterations=iterations, converged=converged, last_change=change,
                        objective=history)


class EMTeacher(FusionTeacher):
    """`em`: hierarchical Bayesian EM fusion run to convergence; needs no weights (the default teacher)."""

    name = "em"

    def __init__(self, device: str = "cpu", config: EMConfig | None = None, **overrides):
        super().__init__(device)
        config = config or EMConfig()
        for key, value in overrides.items():
            if value is not None:
                setattr(config, key, type(getattr(config, key))(value))
        self.engine = EMFusion(config)
        self.last_result: EMResult | None = None

    @property
    def config(self) -> EMConfig:
        return self.engine.config

    def fuse_batch(self, ir, vis_y):
        self.last_result = self.engine.run(ir.to(self.device), vis_y.to(self.device))
        return self.last_result.fused

    def settings(self) -> dict[str, Any]:
        return {"teacher": self.name, **asdict(self.config)}

    @classmethod
    def add_arguments(cls, parser) -> None:
        group = parser.add_argument_group("em teacher")
        group.add_argument("--em-max-iter", type=int, help=f"EM iteration cap (default {EMConfig.max_iter})")
        group.add_argument("--em-tol", type=float, help=f"convergence tolerance on f in [0,1] (default {EMConfig.tol})")
        group.add_argument("--em-coupling", type=float, help=f"half-quadratic coupling eta (default {EMConfig.coupling})")
        group.add_argument("--em-prior-weight", type=float,
                           help=f"weight of the gradient prior; larger keeps more visible structure "
                                f"(default {EMConfig.prior_weight})")

    @classmethod
    def from_args(cls, args) -> "EMTeacher":
        steps = getattr(args, "steps", None)
        return cls(device=getattr(args, "device", "cpu"),
                   max_iter=getattr(args, "em_max_iter", None) or steps,
                   tol=getattr(args, "em_tol", None),
                   coupling=getattr(args, "em_coupling", None),
                   prior_weight=getattr(args, "em_prior_weight", None))
