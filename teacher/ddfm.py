"""`ddfm`: the DDFM sampler (Zhao et al., ICCV 2023, Algorithm 1): an unconditional diffusion prior whose every
step is rectified by one EM step of the hierarchical Bayesian fusion model against the IR/VIS pair.

Per step t (of a respaced schedule, 100 of the prior's 1000 by default, seeded):
    eps        = prior(f_t, t)                                    (learned-sigma outputs: the first half)
    f0|t       = (f_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)      clipped to [-1, 1]
    f0|t (Y)  <- one EM step on x = f0|t - v, y = i - v          (teacher.em.em_step; state carried over steps)
    f_(t-1)    ~ q(f_(t-1) | f_t, f0|t)                          (the DDPM posterior of the respaced chain)

The pieces stay separate, diffusers-style: `DiffusionPrior` wraps the network (a diffusers UNet2DModel folder, or
the guided-diffusion 256x256_diffusion_uncond.pt through teacher.guided_unet) and a diffusers DDPMScheduler holds
the noise schedule; `DDFMSampler` only combines them. Any image size: sources are reflect-padded to the network's
multiple (plus a margin for the FFT in EM) and the result is cropped back. Gray sources are replicated to the
prior's channels and the sample is reduced to luminance (BT.601, runtime.color).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from runtime.errors import FusionError
from teacher.base import FusionTeacher
from teacher.em import EMConfig


def space_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """guided-diffusion's respacing: `steps` timesteps evenly spread over [0, num_train_timesteps - 1], rounded,
    always including both ends. Returned in sampling order (descending)."""
    if not 1 <= steps <= num_train_timesteps:
        raise FusionError(f"--steps must be between 1 and the prior's {num_train_timesteps} training timesteps")
    if steps == 1:
        return [0]
    stride = (num_train_timesteps - 1) / (steps - 1)
    return sorted({round(i * stride) for i in range(steps)}, reverse=True)


# ----------------------------------------------------------------------------------------------------------- prior
class DiffusionPrior:
    """An unconditional pixel-space diffusion prior: network + scheduler, loaded from a local path.

    Accepted layouts:
    - a diffusers folder: `config.json` + `diffusion_pytorch_model.safetensors` (UNet2DModel), with the scheduler in
      `scheduler_config.json` or `scheduler/scheduler_config.json`; or a pipeline folder with `unet/` and `scheduler/`
      (what `fusion teacher train-prior` writes);
    - guided-diffusion: `256x256_diffusion_uncond.pt` (or a folder holding it, optionally with guided_config.json);
      its schedule is the linear 1e-4..0.02 over 1000 steps it was trained with.
    """

    def __init__(self, network, scheduler, kind: str, weights_path: Path, channels: int, multiple: int):
        self.network = network
        self.scheduler = scheduler
        self.kind = kind
        self.weights_path = weights_path
        self.channels = channels
        self.multiple = multiple

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu") -> "DiffusionPrior":
        from runtime.errors import require
        require("diffusers", purpose="the ddfm teacher")
        path = Path(path)
        if not path.exists():
            raise FusionError(f"diffusion prior not found: {path} (train one with `fusion teacher train-prior`, or "
                              f"point --prior to guided-diffusion's 256x256_diffusion_uncond.pt)")
        unet_dir = path / "unet" if (path / "unet" / "config.json").is_file() else path
        if path.is_dir() and (unet_dir / "config.json").is_file():
            prior = cls._from_diffusers(path, unet_dir)
        elif path.suffix in (".pt", ".pth", ".safetensors") or (path.is_dir() and any(
                p.suffix in (".pt", ".pth", ".safetensors") for p in path.iterdir())):
            prior = cls._from_guided(path)
        else:
            raise FusionError(f"{path} is not a diffusion prior: expected a diffusers UNet2DModel folder (config.json + "
                              f"diffusion_pytorch_model.safetensors + scheduler_config.json) or a guided-diffusion "
                              f"checkpoint (256x256_diffusion_uncond.pt)")
        prior.network.to(device).eval().requires_grad_(False)
        return prior

    @classmethod
    def _from_diffusers(cls, root: Path, unet_dir: Path) -> "DiffusionPrior":
        from diffusers import DDPMScheduler, UNet2DModel
        try:
            network = UNet2DModel.from_pretrained(str(unet_dir))
        except Exception as exc:
            raise FusionError(f"cannot load a UNet2DModel from {unet_dir}: {type(exc).__name__}: {exc}"[:400]) from None
        for candidate in (root / "scheduler", unet_dir / "scheduler", root, unet_dir):
            if (candidate / "scheduler_config.json").is_file():
                scheduler = DDPMScheduler.from_pretrained(str(candidate))
                break
        else:
            raise FusionError(f"{root} has no scheduler_config.json (in the folder or scheduler/); save the scheduler "
                              f"with the UNet (DDPMScheduler.save_pretrained)")
        config = network.config
        multiple = 2 ** max(0, len(config.block_out_channels) - 1)
        return cls(network, scheduler, "diffusers", unet_dir, config.in_channels, multiple)

    @classmethod
    def _from_guided(cls, path: Path) -> "DiffusionPrior":
        from diffusers import DDPMScheduler

        from teacher.guided_unet import load_guided_unet
        network, checkpoint = load_guided_unet(path)
        scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
        return cls(network, scheduler, "guided-diffusion", checkpoint, network.config.in_channels, network.multiple)

    def predict_noise(self, sample, timestep: int):
        """eps for sample (N, C, H, W) at the prior's own (training) timestep; learned-sigma outputs are halved."""
        import torch
        t = torch.full((sample.shape[0],), int(timestep), device=sample.device, dtype=torch.long)
        out = self.network(sample, t)
        out = getattr(out, "sample", out)
        if out.shape[1] == 2 * sample.shape[1]:
            out = out[:, : sample.shape[1]]
        return out


# --------------------------------------------------------------------------------------------------------- sampler
@dataclass
class DDFMConfig:
    steps: int = 100            # respaced sampling steps (DDFM: 100 of 1000)
    seed: int = 3407            # DDFM's seed
    margin: int = 16            # extra reflect padding so EM's periodic FFT never wraps image content
    rectify: bool = True        # False samples the prior alone (an ablation: no likelihood step)


def ddfm_em_config() -> EMConfig:
    """EM settings for one rectification per diffusion step. The standalone teacher needs a strong half-quadratic
    coupling to solve its TV problem accurately over hundreds of iterations; inside the sampler EM gets one step
    per timestep on a fresh f0|t, and a strong coupling would simply hand back the prior's guess (x ~ k ~ f0|t).
    A unit coupling lets the data term act in every step, as the authors' EM_onestep does with its small rho,
    while k and u still carry the gradient prior from step to step."""
    return EMConfig(coupling=1.0)


class DDFMSampler:
    """Combines a DiffusionPrior (model + scheduler) with EM likelihood rectification (Algorithm 1)."""

    def __init__(self, prior: DiffusionPrior, config: DDFMConfig | None = None, em_config: EMConfig | None = None):
        from diffusers import DDPMScheduler
        self.prior = prior
        self.config = config or DDFMConfig()
        self.em_config = em_config or ddfm_em_config()
        # The rectified f0|t goes to the scheduler as its "sample" prediction; the posterior step is the scheduler's.
        self.scheduler = DDPMScheduler.from_config(prior.scheduler.config, prediction_type="sample",
                                                   clip_sample=False, thresholding=False,
                                                   variance_type="fixed_small")
        self.step_seconds: list[float] = []

    def _to_luminance(self, sample):
        """(N, C, H, W) in [-1, 1] -> (N, 1, H, W) in [0, 1]."""
        from runtime.color import luminance
        img = (sample.clamp(-1, 1) + 1) / 2
        return img if img.shape[1] == 1 else luminance(img, channel_axis=1)[:, None]

    def _with_luminance(self, sample, y):
        """Replace the luminance of sample (N, C, H, W) in [-1, 1] by y (N, 1, H, W) in [0, 1]; keep its chroma."""
        import torch

        from runtime.color import rgb_to_ycbcr, ycbcr_to_rgb
        if sample.shape[1] == 1:
            return y * 2 - 1
        ycbcr = rgb_to_ycbcr((sample.clamp(-1, 1) + 1) / 2, channel_axis=1)
        return ycbcr_to_rgb(torch.cat([y, ycbcr[:, 1:]], dim=1), channel_axis=1) * 2 - 1

    def sample(self, ir, vis_y):
        """ir, vis_y: (N, 1, H, W) in [0, 1] -> fused luminance (N, 1, H, W) in [0, 1]."""
        import time

        import torch
        import torch.nn.functional as F

        from teacher.em import em_initial, em_step
        height, width = ir.shape[-2:]
        multiple, margin = self.prior.multiple, self.config.margin
        pad_h = (-(height + 2 * margin)) % multiple + 2 * margin
        pad_w = (-(width + 2 * margin)) % multiple + 2 * margin
        top, left = pad_h // 2, pad_w // 2
        padding = (left, pad_w - left, top, pad_h - top)
        mode = "reflect" if max(padding) < min(height, width) else "replicate"
        ir_p, vis_p = F.pad(ir.float(), padding, mode=mode), F.pad(vis_y.float(), padding, mode=mode)
        y = ir_p - vis_p

        timesteps = space_timesteps(self.scheduler.config.num_train_timesteps, self.config.steps)
        self.scheduler.set_timesteps(timesteps=timesteps, device=ir.device)
        generator = torch.Generator(device=ir.device).manual_seed(self.config.seed)
        shape = (ir.shape[0], self.prior.channels) + ir_p.shape[-2:]
        sample = torch.randn(shape, generator=generator, device=ir.device, dtype=torch.float32)
        alphas_cumprod = self.scheduler.alphas_cumprod.to(ir.device)
        state = None
        self.step_seconds = []
        for t in self.scheduler.timesteps:
            start = time.perf_counter()
            t = int(t)
            eps = self.prior.predict_noise(sample, t).float()
            abar = alphas_cumprod[t]
            f0 = ((sample - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1, 1)
            # Likelihood rectification: one EM step on the luminance of f0|t (Algorithm 1, lines 6-13).
            if self.config.rectify:
                x = self._to_luminance(f0) - vis_p
                if state is None:
                    state = em_initial(x, y, self.em_config)
                x, state = em_step(x, y, state, self.em_config)
                f0 = self._with_luminance(f0, (x + vis_p).clamp(0, 1))
            sample = self.scheduler.step(f0, t, sample, generator=generator).prev_sample
            self.step_seconds.append(time.perf_counter() - start)
        fused = self._to_luminance(sample)
        return fused[..., top:top + height, left:left + width]


class DDFMTeacher(FusionTeacher):
    """`ddfm`: DDFM diffusion sampling with EM likelihood rectification; needs a local prior (--prior)."""

    name = "ddfm"

    def __init__(self, prior: str | Path | DiffusionPrior, device: str = "cpu", steps: int = 100, seed: int = 3407,
                 em_config: EMConfig | None = None, rectify: bool = True):
        super().__init__(device)
        self.prior = prior if isinstance(prior, DiffusionPrior) else DiffusionPrior.from_pretrained(prior, device)
        self.prior.network.to(device)
        self.sampler = DDFMSampler(self.prior, DDFMConfig(steps=steps, seed=seed, rectify=rectify),
                                   em_config)
        self.weights_path = self.prior.weights_path

    def fuse_batch(self, ir, vis_y):
        import torch
        with torch.no_grad():
            return self.sampler.sample(ir.to(self.device), vis_y.to(self.device)).clamp(0, 1)

    def settings(self) -> dict[str, Any]:
        return {"teacher": self.name, "prior": str(self.prior.weights_path), "prior_kind": self.prior.kind,
                "prior_channels": self.prior.channels, **asdict(self.sampler.config),
                "em": asdict(self.sampler.em_config)}

    @classmethod
    def add_arguments(cls, parser) -> None:
        group = parser.add_argument_group("ddfm teacher")
        group.add_argument("--prior", help="diffusion prior: a diffusers folder (fusion teacher train-prior) or "
                                           "guided-diffusion's 256x256_diffusion_uncond.pt")

    @classmethod
    def from_args(cls, args) -> "DDFMTeacher":
        if not getattr(args, "prior", None):
            raise FusionError("the ddfm teacher needs --prior PATH: a folder from `fusion teacher train-prior`, or "
                              "guided-diffusion's 256x256_diffusion_uncond.pt")
        return cls(args.prior, device=getattr(args, "device", "cpu"), steps=getattr(args, "steps", None) or 100,
                   seed=getattr(args, "seed", None) if getattr(args, "seed", None) is not None else 3407)

