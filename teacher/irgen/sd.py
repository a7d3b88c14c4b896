"""`sd-img2img` and `sd-text`: Stable Diffusion 1.5 / 2.x with a thermal LoRA, from a local diffusers folder.

    # RGB -> IR: img2img from the RGB frame with a LoRA trained on aligned RGB/IR pairs
    fusion teacher train-irgen --generator sd-img2img --base models/stable-diffusion-v1-5 \\
        --data ../shared/data/roadscene --names ../shared/data/roadscene/train.txt \\
        --config configs/irgen_diffusion/sd_img2img.yaml --out build/irgen/sd-img2img
    fusion teacher synth-ir --generator sd-img2img --weights build/irgen/sd-img2img --rgb frames/ --out dataset/

    # text -> IR: DreamBooth-style LoRA on thermal images (optionally with prior preservation)
    fusion teacher train-irgen --generator sd-text --base models/stable-diffusion-v1-5 \\
        --data ../shared/data/roadscene --names ../shared/data/roadscene/train.txt \\
        --config configs/irgen_diffusion/sd_text.yaml --out build/irgen/sd-text
    fusion teacher synth-ir --generator sd-text --weights build/irgen/sd-text --count 100 \\
        --prompt "an infrared thermal frame of a pedestrian crossing at night" --out thermal_only/

Training: the UNet is frozen and a peft LoRA on its attention projections (to_q/k/v/out) learns the standard
noise-prediction (or v-prediction, for SD 2.x 768) loss on VAE latents of the IR images, conditioned on a fixed prompt.
At sampling time `sd-img2img` noises the RGB frame's latents to `strength` and denoises them with the LoRA UNet, so the
scene layout comes from the RGB frame and the appearance from the thermal domain. With `control.enabled` a ControlNet
on the frame's edges (or luminance, or RGB) is trained beside the LoRA and conditions every denoising step, so the
layout is enforced rather than only suggested by the initial latents. Weights: the LoRA in the diffusers
layout (pytorch_lora_weights.safetensors) + irgen.json (base folder, LoRA and sampler settings). `--weights` may also
be a complete diffusers SD folder (for example a fully fine-tuned DreamBooth model), used as is.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from abc import abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import FusionError
from teacher.irgen.base import IRGenerator
from teacher.irgen.diffusion_common import (DiffusionDataConfig, DiffusionLoopConfig, DiffusionOptimConfig,
                                            LoraSettings, TrainingJob, add_lora, add_sampler_arguments,
                                            check_base_folder, load_local_pipeline, load_lora_quietly, local_device,
                                            place_pipeline, read_info, resize_to, resolve_base, sampler_overrides,
                                            save_lora_folder, to_gray, working_size)


# ------------------------------------------------------------------------------------------------------ configs
@dataclass
class SDImg2ImgSampleConfig:
    prompt: str = "an infrared thermal image"
    negative_prompt: str = ""
    steps: int = 30
    guidance: float = 3.0  # modest: the RGB frame already fixes the layout
    strength: float = 0.7  # 1 = ignore the RGB frame; lower keeps more of its structure
    resolution: int = 512  # shorter side of the working size (the output is resized back to the input size)


@dataclass
class SDTextSampleConfig:
    prompt: str = "an infrared thermal frame of a street scene"
    negative_prompt: str = "color photo, colorful, rgb, painting, cartoon, text, watermark, blurry, low quality"
    steps: int = 30
    guidance: float = 7.5  # 7-10 for DreamBooth LoRAs
    height: int = 512
    width: int = 640
    resolution: int = 0  # when > 0 (synth-ir --resolution), overrides height with width scaled by 640/512


@dataclass
class SDLossConfig:
    snr_gamma: float = 0.0  # Min-SNR-gamma weighting (5 is the paper's value); 0 = plain MSE


@dataclass
class PriorConfig:
    """DreamBooth prior preservation: also denoise images the base model makes for the class prompt."""

    enabled: bool = False
    class_prompt: str = "a photo of a street scene"
    num_class_images: int = 100
    loss_weight: float = 1.0
    steps: int = 30  # sampler steps used to make the class images


@dataclass
class ControlConfig:
    """A ControlNet on the RGB frame (trained with the LoRA), so the layout is enforced, not only suggested by the
    img2img initial latents."""

    enabled: bool = False
    condition: str = "edges"  # edges (Canny on the RGB luminance), luminance, or rgb
    weights: str | None = None  # a ControlNet folder to start from (e.g. a canny ControlNet); default: UNet copy
    scale: float = 1.0  # controlnet_conditioning_scale when sampling


@dataclass
class SDImg2ImgTrainConfig:
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(rank=16, alpha=16.0))
    data: DiffusionDataConfig = field(default_factory=DiffusionDataConfig)
    optim: DiffusionOptimConfig = field(default_factory=DiffusionOptimConfig)
    train: DiffusionLoopConfig = field(default_factory=DiffusionLoopConfig)
    loss: SDLossConfig = field(default_factory=SDLossConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    sample: SDImg2ImgSampleConfig = field(default_factory=SDImg2ImgSampleConfig)


CONTROL_FOLDER = "controlnet"
CONDITIONS = ("edges", "luminance", "rgb")


def control_condition(rgb: np.ndarray, kind: str) -> np.ndarray:
    """RGB (H,W,3) float [0,1] -> the ControlNet condition image (H,W,3) float [0,1]."""
    import cv2

    from runtime.color import luminance
    if kind == "rgb":
        return np.asarray(rgb, dtype=np.float32)
    y = luminance(np.asarray(rgb, dtype=np.float32))
    if kind == "edges":
        # Thresholds from the frame's own gradient distribution (90th percentile, hysteresis at half of it), not
        # fixed ones: hazy or dark road frames give no edges at Canny's usual 100/200.
        gray = (np.clip(y, 0, 1) * 255 + 0.5).astype(np.uint8)
        magnitude = np.abs(cv2.Sobel(gray, cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(gray, cv2.CV_32F, 0, 1))
        high = max(float(np.percentile(magnitude, 90)), 8.0)
        y = cv2.Canny(gray, high / 2, high, L2gradient=False).astype(np.float32) / 255
    elif kind != "luminance":
        raise FusionError(f"control.condition must be one of {', '.join(CONDITIONS)}, got '{kind}'")
    return np.repeat(y[..., None], 3, axis=2)


def build_controlnet(pipe, cfg: ControlConfig, dtype):
    """A ControlNet from cfg.weights, or initialised from the UNet's encoder (its zero convolutions make it a no-op
    until trained); the condition embedding downsamples by the VAE factor."""
    import math as _math

    from diffusers import ControlNetModel
    if cfg.weights:
        try:
            return ControlNetModel.from_pretrained(cfg.weights, dtype=dtype, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise FusionError(f"control.weights {cfg.weights} is not a diffusers ControlNet folder (config.json + "
                              f"diffusion_pytorch_model.safetensors): {str(exc).splitlines()[0]}") from None
    levels = int(round(_math.log2(pipe.vae_scale_factor))) + 1
    return ControlNetModel.from_unet(pipe.unet, conditioning_embedding_out_channels=(16, 32, 96, 256)[:levels]
                                     ).to(dtype=dtype)


def controlled_unet(unet, controlnet):
    """UNet + ControlNet as one module (one thing for accelerate/DDP to wrap and for checkpoints to hold)."""
    from torch import nn

    class ControlledUNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.unet, self.controlnet = unet, controlnet

        def forward(self, noisy, timesteps, embeds, condition):
            down, mid = self.controlnet(noisy, timesteps, encoder_hidden_states=embeds, controlnet_cond=condition,
                                        return_dict=False)
            return self.unet(noisy, timesteps, encoder_hidden_states=embeds, down_block_additional_residuals=down,
                             mid_block_additional_residual=mid).sample

    return ControlledUNet()


@dataclass
class SDTextTrainConfig:
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(rank=16, alpha=16.0))
    data: DiffusionDataConfig = field(default_factory=DiffusionDataConfig)
    optim: DiffusionOptimConfig = field(default_factory=DiffusionOptimConfig)
    train: DiffusionLoopConfig = field(default_factory=DiffusionLoopConfig)
    loss: SDLossConfig = field(default_factory=SDLossConfig)
    sample: SDTextSampleConfig = field(default_factory=SDTextSampleConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)


# ------------------------------------------------------------------------------------------------------ loading
def load_sd_pipeline(base: Path, pipeline_class: str = "StableDiffusionPipeline", dtype=None):
    """A diffusers SD pipeline from a checked local folder, without safety checker; FusionError when it fails."""
    import torch
    return load_local_pipeline(pipeline_class, base, "sd", safety_checker=None, requires_safety_checker=False,
                               dtype=dtype or torch.float32)


def size_multiple(pipe) -> int:
    """Image sides must be multiples of this: the VAE's downsampling times the UNet's."""
    return int(pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1))


def encode_prompts(pipe, prompts: list[str], device):
    """Text-encoder hidden states (N, L, D) for prompts, without classifier-free-guidance duplication."""
    import torch
    tokens = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids.to(device)
    with torch.no_grad():
        return pipe.text_encoder(tokens)[0]


def with_controlnet(pipe, controlnet):
    """The img2img pipeline's components (same UNet, LoRA included) in a ControlNet img2img pipeline."""
    from diffusers import StableDiffusionControlNetImg2ImgPipeline
    control_pipe = StableDiffusionControlNetImg2ImgPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
        controlnet=controlnet, scheduler=pipe.scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    control_pipe.set_progress_bar_config(disable=True)
    return control_pipe


def save_model_folder(model, folder: Path) -> None:
    """diffusers save_pretrained into a temporary sibling, then swapped in, so the folder is never half-written."""
    import os
    import shutil
    import tempfile
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    model.save_pretrained(str(tmp), safe_serialization=True)
    old = folder.parent / f".{folder.name}-old"
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def _cuda_dtype(device: str):
    import torch
    if str(device).startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


# ---------------------------------------------------------------------------------------------------- generators
class _SDGenerator(IRGenerator):
    """What sd-img2img and sd-text share: loading, LoRA, the noise-prediction training step."""

    pipeline_class = "StableDiffusionPipeline"
    sample_config_class: type = SDImg2ImgSampleConfig
    train_config_class: type = SDImg2ImgTrainConfig

    def __init__(self, pipe, sample, info: dict, device: str = "cpu", control: ControlConfig | None = None):
        self.pipe = pipe  # with a ControlNet: a StableDiffusionControlNetImg2ImgPipeline
        self.sample = sample
        self.info = info
        self.device = device
        self.control = control if control is not None and control.enabled else None

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, verb: str) -> None:
        add_sampler_arguments(parser, verb)

    # --------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str = "cpu", args: argparse.Namespace | None = None):
        from runtime.config import config_from_dict
        folder = Path(folder)
        device = local_device(device)
        if (folder / "model_index.json").is_file():  # a complete SD folder used as is (no LoRA)
            base, info, has_lora = check_base_folder(folder, "sd", option="--weights"), {"generator": cls.name}, False
        else:
            info = read_info(folder, cls.name)
            base, has_lora = resolve_base(args, info, "sd"), True
        dtype = _cuda_dtype(device)
        pipe = load_sd_pipeline(base, cls.pipeline_class, dtype)
        if has_lora:
            load_lora_quietly(pipe, folder)
        control = config_from_dict(ControlConfig, info.get("control", {}))
        if control.enabled:
            pipe = with_controlnet(pipe, build_controlnet(pipe, dataclasses.replace(
                control, weights=str(folder / CONTROL_FOLDER)), dtype))
        place_pipeline(pipe, device, args)
        sample = dict(info.get("sample", {}))
        overrides = sampler_overrides(args)
        known = {f.name for f in dataclasses.fields(cls.sample_config_class)}
        sample.update({k: v for k, v in overrides.items() if k in known})
        return cls(pipe, config_from_dict(cls.sample_config_class, sample), info, device, control)

    def settings(self) -> dict[str, Any]:
        return {"generator": self.name, "base": self.info.get("base"), "lora": self.info.get("lora"),
                "control": dataclasses.asdict(self.control) if self.control else None,
                "sample": dataclasses.asdict(self.sample), "scheduler": type(self.pipe.scheduler).__name__}

    # -------------------------------------------------------------------------------------------- training
    @classmethod
    @abstractmethod
    def training_items(cls, args) -> list[dict[str, np.ndarray]]:
        """The training examples of this generator (RGB/IR pairs, or thermal images with their prompts)."""

    @classmethod
    def train(cls, args: argparse.Namespace) -> int:
        import torch
        from diffusers import DDPMScheduler
        from diffusers.training_utils import cast_training_params

        from runtime.config import config_to_dict, load_config
        from teacher.irgen.diffusion_common import (AlignedCrops, make_accelerator, prepare_output, run_training,
                                                    timestep_weights_min_snr, weight_dtype)

        cfg = load_config(cls.train_config_class, getattr(args, "config", None), getattr(args, "overrides", []))
        base = check_base_folder(args.base, "sd")
        out = Path(args.out)
        prepare_output(out, getattr(args, "resume", False))  # refuse early, before loading gigabytes
        accelerator = make_accelerator(cfg, args.device, out)
        device = accelerator.device
        dtype = weight_dtype(accelerator.mixed_precision)
        torch.manual_seed(args.seed)

        pipe = load_sd_pipeline(base, cls.pipeline_class, dtype)
        multiple = size_multiple(pipe)
        if cfg.data.crop % multiple:
            raise FusionError(f"data.crop={cfg.data.crop} must be a multiple of {multiple} for this model")
        items = cls.training_items(args)
        data = AlignedCrops(items, cfg.data)
        class_data = cls.prior_data(cfg, pipe, out, device, accelerator) if cls.uses_prior(cfg) else None
        print(f"{cls.name}: {len(data)} training images from {args.data}"
              + (f", {len(class_data)} class images" if class_data else ""), file=sys.stderr)

        unet, vae = pipe.unet, pipe.vae
        for module in (unet, vae, pipe.text_encoder):
            module.requires_grad_(False)
        control = getattr(cfg, "control", None)
        control = control if control is not None and control.enabled else None
        trained = unet
        if control is not None:
            control_condition(np.zeros((8, 8, 3), np.float32), control.condition)  # a bad name fails now
            controlnet = build_controlnet(pipe, control, dtype)  # from the UNet before it carries a LoRA
            controlnet.requires_grad_(True)
        add_lora(unet, cfg.lora)
        if control is not None:
            trained = controlled_unet(unet, controlnet)
        cast_training_params(trained, dtype=torch.float32)  # frozen base in bf16, trainable LoRA (+ControlNet) fp32
        if cfg.train.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
            if control is not None:
                controlnet.enable_gradient_checkpointing()
        pipe.to(device)
        trained.to(device)
        prompt_embeds = encode_prompts(pipe, [cfg.sample.prompt], device)
        class_embeds = encode_prompts(pipe, [cfg.prior.class_prompt], device) if class_data else None
        noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        alphas_cumprod = noise_scheduler.alphas_cumprod.to(device)
        prediction = noise_scheduler.config.prediction_type
        scaling = pipe.vae.config.scaling_factor

        def latents_of(images: torch.Tensor, generator) -> torch.Tensor:
            """(B,1|3,H,W) in [0,1] -> scaled VAE latents."""
            images = images.to(device, dtype)
            if images.shape[1] == 1:
                images = images.repeat(1, 3, 1, 1)
            with torch.no_grad():
                dist = vae.encode(images * 2 - 1).latent_dist
            return dist.sample(generator=generator) * scaling

        def loss_fn(model, step: int, micro: int):
            index = step * cfg.optim.grad_accum + micro
            rank = accelerator.process_index
            generator = torch.Generator(device="cpu").manual_seed(args.seed * 1_000_003 + index * 101 + rank)
            batch = data.batch(args.seed, index, rank=rank)
            key = "ir"
            latents = latents_of(torch.from_numpy(batch[key]), generator)
            embeds = prompt_embeds.expand(latents.shape[0], -1, -1)
            if class_data is not None:
                class_batch = class_data.batch(args.seed + 1, index, rank=rank)
                latents = torch.cat((latents, latents_of(torch.from_numpy(class_batch["rgb"]), generator)))
                embeds = torch.cat((embeds, class_embeds.expand(len(class_batch["rgb"]), -1, -1)))
            noise = torch.randn(latents.shape, generator=generator).to(device, latents.dtype)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                      generator=generator).to(device)
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            target = noise if prediction == "epsilon" else noise_scheduler.get_velocity(latents, noise, timesteps)
            if control is not None:
                condition = np.stack([control_condition(np.moveaxis(crop, 0, -1), control.condition).transpose(2, 0, 1)
                                      for crop in batch["rgb"]])
                predicted = model(noisy, timesteps, embeds.to(dtype), torch.from_numpy(condition).to(device, dtype))
            else:
                predicted = model(noisy, timesteps, embeds.to(dtype)).sample
            per_sample = ((predicted.float() - target.float()) ** 2).mean(dim=(1, 2, 3))
            weights = timestep_weights_min_snr(alphas_cumprod, timesteps, cfg.loss.snr_gamma, prediction)
            if weights is not None:
                per_sample = per_sample * weights
            n = batch[key].shape[0]
            instance = per_sample[:n].mean()
            parts = {"instance": float(instance.detach())}
            loss = instance
            if class_data is not None:
                prior = per_sample[n:].mean()
                loss = instance + cfg.prior.loss_weight * prior
                parts["prior"] = float(prior.detach())
            parts["loss"] = float(loss.detach())
            return loss, parts

        info = {"generator": cls.name, "base": str(base.resolve()), "lora": config_to_dict(cfg.lora),
                "sample": config_to_dict(cfg.sample), "seed": args.seed}
        if control is not None:
            info["control"] = {**config_to_dict(control), "weights": None}

        def save_fn(folder: Path, step: int) -> None:
            if control is not None:
                save_model_folder(controlnet, folder / CONTROL_FOLDER)
            save_lora_folder(type(pipe), "unet", unet, folder, {**info, "steps": step})

        sampling_pipe = with_controlnet(pipe, controlnet) if control is not None else pipe
        generator = cls(sampling_pipe, cfg.sample, info, str(device), control)
        sample_fn = (lambda path: generator.sample_grid(path, items[:cfg.train.sample_count], args.seed))
        job = TrainingJob(name=cls.name, model=trained, loss_fn=loss_fn, save_fn=save_fn, sample_fn=sample_fn)
        return run_training(job, cfg, args, accelerator, out)

    @classmethod
    def uses_prior(cls, cfg) -> bool:
        return False

    @classmethod
    def prior_data(cls, cfg, pipe, out, device, accelerator):
        return None

    @abstractmethod
    def sample_grid(self, path: Path, items: list[dict[str, np.ndarray]], seed: int) -> None:
        """Write a picture of samples for `items` to `path` during training."""


class SDImg2ImgGenerator(_SDGenerator):
    """RGB -> IR: Stable Diffusion img2img with a thermal LoRA; the RGB frame is the init image."""

    name = "sd-img2img"
    needs_rgb = True
    pipeline_class = "StableDiffusionImg2ImgPipeline"
    sample_config_class = SDImg2ImgSampleConfig
    train_config_class = SDImg2ImgTrainConfig

    @classmethod
    def training_items(cls, args) -> list[dict[str, np.ndarray]]:
        from teacher.irgen.diffusion_common import load_paired_items
        return load_paired_items(args.data, args.names)

    def generate(self, rgb: np.ndarray | None, seed: int = 0, prompt: str | None = None) -> np.ndarray:
        import torch
        if rgb is None:
            raise FusionError("the 'sd-img2img' generator needs an RGB image")
        rgb = np.asarray(rgb, dtype=np.float32)
        h, w = rgb.shape[:2]
        wh, ww = working_size(h, w, self.sample.resolution, size_multiple(self.pipe))
        image = torch.from_numpy(np.ascontiguousarray(resize_to(rgb, wh, ww).transpose(2, 0, 1)))[None]
        s = self.sample
        # img2img runs int(steps * strength) steps: ask for enough that at least one is left.
        steps = max(s.steps, math.ceil(1 / max(s.strength, 1e-3)))
        extra = {}
        if self.control is not None:
            condition = control_condition(resize_to(rgb, wh, ww), self.control.condition)
            extra = {"control_image": torch.from_numpy(np.ascontiguousarray(condition.transpose(2, 0, 1)))[None],
                     "controlnet_conditioning_scale": self.control.scale}
        out = self.pipe(prompt=prompt or s.prompt, image=image, strength=s.strength, num_inference_steps=steps,
                        guidance_scale=s.guidance, negative_prompt=s.negative_prompt or None,
                        generator=torch.Generator(device="cpu").manual_seed(seed), output_type="np",
                        **extra).images[0]
        return resize_to(to_gray(out), h, w)

    def sample_grid(self, path: Path, items: list[dict[str, np.ndarray]], seed: int) -> None:
        """Rows of RGB | real IR | generated IR for a few training pairs."""
        from teacher.irgen.diffusion_common import save_grid
        save_grid(path, [[item["rgb"], item["ir"], self.generate(item["rgb"], seed=seed)] for item in items])


class SDTextGenerator(_SDGenerator):
    """Text -> IR: SD 1.5 with a DreamBooth-style thermal LoRA; samples without an RGB frame."""

    name = "sd-text"
    needs_rgb = False
    pipeline_class = "StableDiffusionPipeline"
    sample_config_class = SDTextSampleConfig
    train_config_class = SDTextTrainConfig

    @classmethod
    def training_items(cls, args) -> list[dict[str, np.ndarray]]:
        """Thermal images only: a dataset's ir/ folder, or a plain folder of IR frames."""
        from runtime.imageio import IR_FOLDER_NAMES, read_ir
        from teacher.irgen.base import list_images_in
        if args.data is None:
            raise FusionError("pass --data DIR: a folder of thermal images (or a dataset folder holding ir/)")
        return [{"ir": read_ir(path)} for path in list_images_in(args.data, args.names, IR_FOLDER_NAMES).values()]

    @classmethod
    def uses_prior(cls, cfg) -> bool:
        return cfg.prior.enabled

    @classmethod
    def prior_data(cls, cfg, pipe, out: Path, device, accelerator):
        """Class images from the base model (before the LoRA exists), cached in out/class_images/ so a resumed or
        repeated run does not make them again."""
        import torch
        from tqdm import tqdm

        from runtime.imageio import read_vis, write_image
        from teacher.irgen.diffusion_common import AlignedCrops
        folder = out / "class_images"
        count = cfg.prior.num_class_images
        paths = [folder / f"class_{i:05d}.png" for i in range(count)]
        todo = [i for i, p in enumerate(paths) if not p.exists()]
        if todo and accelerator.is_main_process:
            pipe.to(device)
            side = cfg.data.crop
            for i in tqdm(todo, desc="class images", unit="img", file=sys.stderr, dynamic_ncols=True):
                image = pipe(prompt=cfg.prior.class_prompt, height=side, width=side,
                             num_inference_steps=cfg.prior.steps, guidance_scale=cfg.sample.guidance,
                             generator=torch.Generator(device="cpu").manual_seed(i), output_type="np").images[0]
                write_image(paths[i], image)
        accelerator.wait_for_everyone()
        items = []
        for path in paths:
            image = read_vis(path)
            items.append({"rgb": np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image})
        return AlignedCrops(items, dataclasses.replace(cfg.data, scale=1.0))

    def generate(self, rgb: np.ndarray | None = None, seed: int = 0, prompt: str | None = None) -> np.ndarray:
        import torch
        s = self.sample
        multiple = size_multiple(self.pipe)
        height, width = s.height, s.width
        if s.resolution > 0:
            height, width = s.resolution, int(round(s.resolution * s.width / s.height))
        height = max(multiple, height // multiple * multiple)
        width = max(multiple, width // multiple * multiple)
        out = self.pipe(prompt=prompt or s.prompt, negative_prompt=s.negative_prompt or None, height=height,
                        width=width, num_inference_steps=s.steps, guidance_scale=s.guidance,
                        generator=torch.Generator(device="cpu").manual_seed(seed), output_type="np").images[0]
        return to_gray(out)

    def sample_grid(self, path: Path, items: list[dict[str, np.ndarray]], seed: int) -> None:
        """One row of samples from the training prompt, at seeds seed, seed+1, ..."""
        from teacher.irgen.diffusion_common import save_grid
        save_grid(path, [[self.generate(None, seed=seed + i) for i in range(max(1, len(items)))]])
