"""Cost of DDFM sampling steps (diffusion prior forward + one EM likelihood step + scheduler), for `fusion bench`.

DDFM draws a sample with `DDFMConfig.steps` such steps (100 by default), so seconds per step is the honest unit: a
full sample at native size is far beyond a benchmark's time budget on a CPU. With `--ddfm-prior` the real prior is
timed. Without one, a tiny random diffusers UNet stands in, and the row says so: it times the sampler and the EM
step around the network, not the network DDFM really uses (guided-diffusion's 256x256 model is ~550 M parameters).
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path


def tiny_random_prior(seed: int = 0):
    """A DiffusionPrior around a ~160 k-parameter random UNet2DModel (gray, multiple 2) and a linear DDPM schedule."""
    import torch
    from diffusers import DDPMScheduler, UNet2DModel

    from teacher.ddfm import DiffusionPrior
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        network = UNet2DModel(sample_size=64, in_channels=1, out_channels=1, block_out_channels=(16, 32),
                              layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                              up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8,
                              add_attention=False)  # full-resolution mid-block attention would dominate
    finally:
        torch.random.set_rng_state(state)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    return DiffusionPrior(network.eval().requires_grad_(False), scheduler, "tiny-random", Path("<random>"), 1, 2)


def step_cost(prior: str | None, pair, steps: int = 4, device: str = "cpu") -> dict:
    """Time `steps` DDFM steps on one bench quality pair (name, ir (1,1,H,W), vis (1,1,H,W), ...) at native size.
    The first step (EM initialisation, allocations) is not counted when there are more."""
    from teacher.ddfm import DDFMConfig, DDFMTeacher, DiffusionPrior
    if prior:
        loaded = DiffusionPrior.from_pretrained(prior, device)
        model, detail = "teacher ddfm", f"prior {loaded.weights_path} ({loaded.kind})"
    else:
        loaded = tiny_random_prior()
        model = "teacher ddfm (tiny random prior)"
        detail = ("TIMING OF THE SAMPLER + EM STEP ONLY: a tiny random UNet stands in for the diffusion prior "
                  "(pass --ddfm-prior for the real one)")
    teacher = DDFMTeacher(loaded, device=device, steps=steps)
    name, ir, vis = pair[0], pair[1], pair[2]
    started = time.perf_counter()
    teacher.fuse(ir[0, 0], vis[0, 0])
    total = time.perf_counter() - started
    seconds = list(teacher.sampler.step_seconds)
    timed = seconds[1:] if len(seconds) > 1 else seconds
    per_step = statistics.median(timed)
    if device != "cpu":  # GPU work is asynchronous: only the whole call (ending in a copy to the host) is a true time
        timed, per_step = [total / max(len(seconds), 1)] * len(timed), total / max(len(seconds), 1)
    full_steps = DDFMConfig().steps
    return {"model": model, "backend": f"torch-{device}", "precision": "fp32", "unit": "step", "per_unit_s": per_step,
            "seconds": timed, "pairs": [name], "steps": full_steps, "wall_s": total,
            "params": int(sum(p.numel() for p in loaded.network.parameters())), "metrics": {},
            "size": f"{ir.shape[3]}x{ir.shape[2]}",
            "detail": f"{detail}; {len(timed)} timed steps on {name} at {ir.shape[3]}x{ir.shape[2]}; a full "
                      f"{full_steps}-step sample is {full_steps} such steps"}
