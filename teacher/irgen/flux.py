"""`flux-fill`: RGB -> IR by FLUX.1-Fill in-context editing of a diptych, with a thermal LoRA.

    fusion teacher train-irgen --generator flux-fill --base models/FLUX.1-Fill-dev \\
        --data ../shared/data/roadscene --names ../shared/data/roadscene/train.txt \\
        --config configs/irgen_diffusion/flux_fill.yaml --out build/irgen/flux-fill
    fusion teacher synth-ir --generator flux-fill --weights build/irgen/flux-fill --rgb frames/ --out dataset/

The model sees one image twice as wide as the frame: the RGB frame on the left, and on the right a masked half that it
fills (FLUX.1-Fill's inpainting input: masked-image latents + the mask, concatenated to the noisy latents). A LoRA
(rank 16, alpha 32 by default) on the attention projections of every transformer block learns to fill that half
with the thermal rendering of the left one: flow matching (x_t = (1 - s) x0 + s noise, target noise - x0) on the
diptych latents of real RGB/IR pairs, the loss taken on the IR half by default, bf16 weights and gradient
checkpointing on CUDA, text encoders used once for the fixed prompt and then left on the CPU.

Optionally the thermal query decoder (`tqd`, teacher/irgen/tqd_net.py) conditions the transformer: its decoded query
tokens (N, K, hidden) are attended to by the image tokens through gated cross-attention adapters added after chosen
double/single blocks (gate initialised at 0, so training starts from the unmodified model); the decoder is frozen or
fine-tuned (`adapter.train_tqd`).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
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

ADAPTER_FILE = "thermal_adapter.safetensors"
TQD_FOLDER = "tqd"
FLUX_ATTENTION_PROJECTIONS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj",
                              "to_add_out"]
DIPTYCH_PROMPT = ("a diptych of the same scene: on the left a visible-light photograph, on the right the same scene "
                  "as an infrared thermal image")


# ------------------------------------------------------------------------------------------------------ configs
@dataclass
class FluxSampleConfig:
    prompt: str = DIPTYCH_PROMPT
    steps: int = 28
    guidance: float = 30.0  # FLUX.1-Fill-dev's distilled guidance (its pipeline default)
    resolution: int = 512  # shorter side of each half of the diptych
    max_sequence_length: int = 512  # T5 tokens


@dataclass
class FlowConfig:
    timestep_sampling: str = "logit_normal"  # logit_normal (SD3) or uniform, then FLUX's resolution shift
    logit_mean: float = 0.0
    logit_std: float = 1.0
    loss_region: str = "ir"  # ir: only the tokens of the right (IR) half; all: the whole diptych


@dataclass
class AdapterConfig:
    """Thermal-query-decoder tokens injected by gated cross-attention after chosen transformer blocks."""

    enabled: bool = False
    tqd_weights: str | None = None  # folder written by `train-irgen --generator tqd`
    double_blocks: list[int] = field(default_factory=lambda: [0])  # indices into transformer_blocks
    single_blocks: list[int] = field(default_factory=list)  # indices into single_transformer_blocks
    heads: int = 8
    train_tqd: bool = False  # fine-tune the decoder too (else frozen)
    tqd_lr_scale: float = 0.1  # its learning rate relative to optim.lr


@dataclass
class FluxTrainConfig:
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(rank=16, alpha=32.0,
                                                                     targets=list(FLUX_ATTENTION_PROJECTIONS)))
    data: DiffusionDataConfig = field(default_factory=DiffusionDataConfig)
    optim: DiffusionOptimConfig = field(default_factory=DiffusionOptimConfig)
    train: DiffusionLoopConfig = field(default_factory=DiffusionLoopConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    sample: FluxSampleConfig = field(default_factory=FluxSampleConfig)


# ------------------------------------------------------------------------------------------------------ diptych
def make_diptych(rgb, ir=None):
    """rgb (B,3,H,W) in [0,1] (+ ir (B,1|3,H,W)) -> (diptych (B,3,H,2W): RGB left, IR or zeros right;
    mask (B,1,H,2W): 0 on the left half (kept), 1 on the right half (to fill))."""
    import torch
    right = torch.zeros_like(rgb) if ir is None else (ir.expand_as(rgb) if ir.shape[1] == 1 else ir)
    diptych = torch.cat((rgb, right.to(rgb.dtype)), dim=3)
    mask = torch.zeros_like(diptych[:, :1])
    mask[..., rgb.shape[3]:] = 1
    return diptych, mask


def right_half_tokens(image_ids, packed_width: int):
    """(L,) bool: which packed latent tokens lie in the right half; image_ids (L,3) as FLUX makes them (_, row, col)."""
    return image_ids[:, 2] >= packed_width // 2


# ------------------------------------------------------------------------------------------------------ adapter
def _build_adapter_classes():
    import torch
    from torch import nn
    import torch.nn.functional as F

    class TokenCrossAttention(nn.Module):
        """Image tokens (B,L,D) attend to conditioning tokens (B|1,K,T); the result is added through a tanh gate
        initialised at 0 (Flamingo-style), so the adapter is the identity until training opens it."""

        def __init__(self, dim: int, token_dim: int, heads: int):
            super().__init__()
            if dim % heads:
                raise FusionError(f"adapter.heads={heads} must divide the transformer width {dim}")
            self.heads = heads
            self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
            self.token_norm = nn.LayerNorm(token_dim)
            self.to_q = nn.Linear(dim, dim)
            self.to_k = nn.Linear(token_dim, dim)
            self.to_v = nn.Linear(token_dim, dim)
            self.to_out = nn.Linear(dim, dim)
            self.gate = nn.Parameter(torch.zeros(1))

        def forward(self, hidden, tokens):
            b, n, d = hidden.shape
            tokens = self.token_norm(tokens.to(self.to_k.weight.device, self.to_k.weight.dtype))
            tokens = tokens.expand(b, -1, -1)
            x = self.norm(hidden.to(self.to_q.weight.dtype))
            split = lambda t: t.view(b, -1, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
            attended = F.scaled_dot_product_attention(split(self.to_q(x)), split(self.to_k(tokens)),
                                                      split(self.to_v(tokens)))
            out = self.to_out(attended.transpose(1, 2).reshape(b, n, d))
            return hidden + (torch.tanh(self.gate) * out).to(hidden.dtype)

    class ThermalTokenAdapter(nn.Module):
        """Cross-attention adapters after chosen FLUX blocks, fed the thermal query decoder's tokens.

        Registered as a submodule of the transformer (`thermal_adapter`) so DDP and checkpointing see its
        parameters; blocks call it through forward hooks, reading the tokens set by `set_tokens` for this batch.
        """

        def __init__(self, dim: int, token_dim: int, heads: int, double_blocks, single_blocks, tqd=None):
            super().__init__()
            self.layers = nn.ModuleDict()
            for kind, indices in (("double", double_blocks), ("single", single_blocks)):
                for index in indices:
                    self.layers[f"{kind}_{index}"] = TokenCrossAttention(dim, token_dim, heads)
            self.tqd = tqd
            self.tokens = None
            self._hooks = []

        def attach(self, transformer) -> None:
            blocks = {"double": transformer.transformer_blocks, "single": transformer.single_transformer_blocks}
            for key, layer in self.layers.items():
                kind, index = key.split("_")
                if int(index) >= len(blocks[kind]):
                    raise FusionError(f"adapter.{kind}_blocks has {index}, but the transformer has only "
                                      f"{len(blocks[kind])} {kind} blocks")
                self._hooks.append(blocks[kind][int(index)].register_forward_hook(self._hook(layer)))
            transformer.add_module("thermal_adapter", self)

        def _hook(self, layer):
            def inject(module, inputs, output):
                if self.tokens is None:
                    raise RuntimeError("the thermal adapter has no tokens for this batch (call set_tokens first)")
                encoder_hidden, hidden = output  # both FLUX block types return (text tokens, image tokens)
                return encoder_hidden, layer(hidden, self.tokens)
            return inject

        def tokens_from_rgb(self, rgb):
            """rgb (B,3,H,W) in [0,1] -> the decoder's normalised query tokens (B,K,hidden)."""
            captured = {}
            handle = self.tqd.decoder_norm.register_forward_hook(lambda m, i, o: captured.__setitem__("tokens", o))
            try:
                weight = next(self.tqd.parameters())
                self.tqd(rgb.to(weight.device, weight.dtype))
            finally:
                handle.remove()
            return captured["tokens"]

        def set_tokens(self, tokens) -> None:
            self.tokens = tokens

        def train(self, mode: bool = True):
            # The decoder's batch norms keep their running statistics even when it is fine-tuned: diffusion
            # batches (1-4 crops) are far too small to estimate them.
            super().train(mode)
            if self.tqd is not None:
                self.tqd.eval()
            return self

    return TokenCrossAttention, ThermalTokenAdapter


def load_tqd(folder: str | Path, device):
    try:
        from teacher.irgen.tqd_net import ThermalQueryDecoder
    except ImportError as exc:
        raise FusionError(f"the thermal query decoder is not available in this installation ({exc})") from None
    return ThermalQueryDecoder.from_pretrained(folder, device=device)


def build_adapter(transformer, cfg: AdapterConfig, tqd):
    _, ThermalTokenAdapter = _build_adapter_classes()
    adapter = ThermalTokenAdapter(transformer.inner_dim if hasattr(transformer, "inner_dim") else
                                  transformer.config.num_attention_heads * transformer.config.attention_head_dim,
                                  tqd.config.hidden_dim, cfg.heads, cfg.double_blocks, cfg.single_blocks, tqd=tqd)
    adapter.attach(transformer)
    return adapter


def trainable_adapter(transformer, cfg: AdapterConfig):
    """The thermal-token adapter attached to `transformer` for training (its decoder in fp32, trained along when
    cfg.train_tqd), or None when the config leaves it off."""
    if not cfg.enabled:
        return None
    if not cfg.tqd_weights:
        raise FusionError("adapter.enabled needs adapter.tqd_weights: the folder `fusion teacher train-irgen "
                          "--generator tqd` wrote (pass --set adapter.tqd_weights=DIR)")
    tqd = load_tqd(cfg.tqd_weights, device="cpu").float()
    tqd.requires_grad_(cfg.train_tqd)
    return build_adapter(transformer, cfg, tqd)


# --------------------------------------------------------------------------------------------------- generator
def load_flux_fill_pipeline(base: Path, dtype):
    return load_local_pipeline("FluxFillPipeline", base, "flux-fill", dtype=dtype)


class FluxFillGenerator(IRGenerator):
    """RGB -> IR: FLUX.1-Fill fills the right half of an [RGB | masked] diptych with the thermal rendering."""

    name = "flux-fill"
    needs_rgb = True

    def __init__(self, pipe, sample: FluxSampleConfig, info: dict, device: str = "cpu", adapter=None):
        self.pipe = pipe
        self.sample = sample
        self.info = info
        self.device = device
        self.adapter = adapter
        self._prompt_cache: dict[tuple, tuple] = {}
        self.last_diptych: np.ndarray | None = None  # the full (H, 2W, 3) output of the last generate()

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, verb: str) -> None:
        add_sampler_arguments(parser, verb)

    @property
    def size_multiple(self) -> int:
        return int(self.pipe.vae_scale_factor * 2)  # VAE downsampling x the 2x2 latent packing

    def prompt_embeddings(self, prompt: str):
        """(prompt_embeds, pooled) for a prompt, computed once: the text encoders then stay idle."""
        import torch
        key = (prompt, self.sample.max_sequence_length)
        if key not in self._prompt_cache:
            device = self.pipe.text_encoder.device
            with torch.no_grad():
                embeds, pooled, _ = self.pipe.encode_prompt(prompt=prompt, prompt_2=None, device=device,
                                                            max_sequence_length=self.sample.max_sequence_length)
            self._prompt_cache[key] = (embeds, pooled)
        return self._prompt_cache[key]

    def cache_prompt(self, prompt: str, device):
        """prompt_embeddings(prompt), on `device`. The prompt is encoded once, on `device` (the GPU when there is one),
        then the text encoders (T5-XXL: ~9 GB) go back to the CPU for the rest of a training run: training and the
        sample grids use the cached embeddings."""
        import torch
        self.pipe.text_encoder.to(device)
        self.pipe.text_encoder_2.to(device)
        embeds, pooled = self.prompt_embeddings(prompt)
        self.pipe.text_encoder.to("cpu")
        self.pipe.text_encoder_2.to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self._prompt_cache = {k: (e.to(device), p.to(device)) for k, (e, p) in self._prompt_cache.items()}
        return embeds, pooled

    # --------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str = "cpu", args: argparse.Namespace | None = None):
        import torch

        from runtime.config import config_from_dict
        folder = Path(folder)
        device = local_device(device)
        info = read_info(folder, cls.name)
        base = resolve_base(args, info, "flux-fill")
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
        pipe = load_flux_fill_pipeline(base, dtype)
        load_lora_quietly(pipe, folder)  # before the adapter is attached (its projections are no LoRA targets)
        adapter = None
        adapter_cfg = config_from_dict(AdapterConfig, info.get("adapter", {}))
        if adapter_cfg.enabled:
            from safetensors.torch import load_file
            tqd = load_tqd(folder / TQD_FOLDER, device="cpu")
            adapter = build_adapter(pipe.transformer, adapter_cfg, tqd)
            state = load_file(str(folder / ADAPTER_FILE))
            missing = adapter.layers.load_state_dict(state, strict=False)
            if missing.missing_keys or missing.unexpected_keys:
                raise FusionError(f"{folder / ADAPTER_FILE} does not match the adapter described in irgen.json; the "
                                  f"folder mixes files of two runs")
            adapter.to(dtype=dtype).eval()
            tqd.float()  # the decoder stays in fp32 (it is small); its tokens are cast by the adapter
        place_pipeline(pipe, device, args)
        sample = dict(info.get("sample", {}))
        known = {f.name for f in dataclasses.fields(FluxSampleConfig)}
        sample.update({k: v for k, v in sampler_overrides(args).items() if k in known})
        return cls(pipe, config_from_dict(FluxSampleConfig, sample), info, device, adapter)

    def settings(self) -> dict[str, Any]:
        return {"generator": self.name, "base": self.info.get("base"), "lora": self.info.get("lora"),
                "adapter": self.info.get("adapter"), "sample": dataclasses.asdict(self.sample)}

    # -------------------------------------------------------------------------------------------- sampling
    def generate(self, rgb: np.ndarray | None, seed: int = 0, prompt: str | None = None) -> np.ndarray:
        import torch
        if rgb is None:
            raise FusionError("the 'flux-fill' generator needs an RGB image")
        rgb = np.asarray(rgb, dtype=np.float32)
        h, w = rgb.shape[:2]
        wh, ww = working_size(h, w, self.sample.resolution, self.size_multiple)
        frame = resize_to(rgb, wh, ww)
        x = torch.from_numpy(np.ascontiguousarray(frame.transpose(2, 0, 1)))[None]
        diptych, mask = make_diptych(x)
        embeds, pooled = self.prompt_embeddings(prompt or self.sample.prompt)
        if self.adapter is not None:
            with torch.no_grad():
                self.adapter.set_tokens(self.adapter.tokens_from_rgb(x))
        out = self.pipe(image=diptych, mask_image=mask, height=wh, width=2 * ww, prompt_embeds=embeds,
                        pooled_prompt_embeds=pooled, num_inference_steps=self.sample.steps,
                        guidance_scale=self.sample.guidance, max_sequence_length=self.sample.max_sequence_length,
                        generator=torch.Generator(device="cpu").manual_seed(seed), output_type="np").images[0]
        out = np.asarray(out, dtype=np.float32)
        # The fill model re-renders the whole canvas; the known half is pasted back, as inpainting pipelines do.
        out[:, :ww] = frame
        self.last_diptych = out
        return resize_to(to_gray(out[:, ww:]), h, w)

    def visualize(self, rgb: np.ndarray, ir: np.ndarray) -> np.ndarray | None:
        """The diptych of the last generate() (RGB | filled IR half) as uint8."""
        if self.last_diptych is None:
            return None
        return (np.clip(self.last_diptych, 0, 1) * 255 + 0.5).astype(np.uint8)

    def sample_grid(self, path: Path, items: list[dict[str, np.ndarray]], seed: int) -> None:
        from teacher.irgen.diffusion_common import save_grid
        save_grid(path, [[item["rgb"], item["ir"], self.generate(item["rgb"], seed=seed)] for item in items])

    # -------------------------------------------------------------------------------------------- training
    @classmethod
    def train(cls, args: argparse.Namespace) -> int:
        import torch
        from diffusers.pipelines.flux.pipeline_flux_fill import calculate_shift, retrieve_latents
        from diffusers.training_utils import cast_training_params

        from runtime.config import config_to_dict, load_config
        from teacher.irgen.diffusion_common import (AlignedCrops, load_paired_items, make_accelerator,
                                                    prepare_output, run_training, weight_dtype)

        cfg = load_config(FluxTrainConfig, getattr(args, "config", None), getattr(args, "overrides", []))
        if cfg.flow.timestep_sampling not in ("logit_normal", "uniform"):
            raise FusionError("flow.timestep_sampling must be logit_normal or uniform")
        if cfg.flow.loss_region not in ("ir", "all"):
            raise FusionError("flow.loss_region must be ir or all")
        base = check_base_folder(args.base, "flux-fill")
        out = Path(args.out)
        prepare_output(out, getattr(args, "resume", False))
        accelerator = make_accelerator(cfg, args.device, out)
        device = accelerator.device
        dtype = weight_dtype(accelerator.mixed_precision)
        torch.manual_seed(args.seed)

        pipe = load_flux_fill_pipeline(base, dtype)
        transformer, vae = pipe.transformer, pipe.vae
        multiple = int(pipe.vae_scale_factor * 2)
        if cfg.data.crop % multiple:
            raise FusionError(f"data.crop={cfg.data.crop} must be a multiple of {multiple} for FLUX")
        items = load_paired_items(args.data, args.names)
        data = AlignedCrops(items, cfg.data)
        print(f"{cls.name}: {len(data)} training pairs from {args.data}", file=sys.stderr)

        for module in (transformer, vae, pipe.text_encoder, pipe.text_encoder_2):
            module.requires_grad_(False)
        add_lora(transformer, cfg.lora)  # before the adapter exists, so the LoRA never targets the adapter's to_q/k/v
        adapter = trainable_adapter(transformer, cfg.adapter)
        cast_training_params(transformer, dtype=torch.float32)  # LoRA + adapter in fp32 over a bf16 base
        if cfg.train.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        transformer.to(device)
        vae.to(device)

        generator_obj = cls(pipe, cfg.sample, {}, str(device), adapter)
        embeds, pooled = generator_obj.cache_prompt(cfg.sample.prompt, device)
        embeds, pooled = embeds.to(device, dtype), pooled.to(device, dtype)
        text_ids = torch.zeros(embeds.shape[1], 3, device=device, dtype=dtype)
        latent_channels = vae.config.latent_channels
        shift, scale = vae.config.shift_factor, vae.config.scaling_factor
        sched = pipe.scheduler.config

        def loss_fn(model, step: int, micro: int):
            index = step * cfg.optim.grad_accum + micro
            rank = accelerator.process_index
            generator = torch.Generator(device="cpu").manual_seed(args.seed * 1_000_003 + index * 101 + rank)
            batch = data.batch(args.seed, index, rank=rank)
            rgb = torch.from_numpy(batch["rgb"]).to(device)
            ir = torch.from_numpy(batch["ir"]).to(device)
            b, _, h, w = rgb.shape
            diptych, mask = make_diptych(rgb, ir)
            image = pipe.image_processor.preprocess(diptych, height=h, width=2 * w).to(device, dtype)
            mask = pipe.mask_processor.preprocess(mask, height=h, width=2 * w).to(device, dtype)
            with torch.no_grad():
                mask_packed, masked_latents = pipe.prepare_mask_latents(
                    mask, image * (1 - mask), b, latent_channels, 1, h, 2 * w, dtype, device, generator)
                latents = (retrieve_latents(vae.encode(image), generator=generator) - shift) * scale
            lh, lw = latents.shape[2:]
            x0 = pipe._pack_latents(latents, b, latent_channels, lh, lw)
            image_ids = pipe._prepare_latent_image_ids(b, lh // 2, lw // 2, device, dtype)
            # The flow-matching arithmetic (sigma, the interpolation, the velocity target) stays in fp32 whatever
            # the weights are: in bf16, sigma keeps 3 significant digits and noise - x0 loses the small differences
            # the loss is made of. Only the transformer's input is cast to the weight dtype.
            x0 = x0.float()
            noise = torch.randn(x0.shape, generator=generator).to(device)
            if cfg.flow.timestep_sampling == "logit_normal":
                u = torch.sigmoid(cfg.flow.logit_mean + cfg.flow.logit_std * torch.randn(b, generator=generator))
            else:
                u = torch.rand(b, generator=generator)
            # FLUX's resolution-dependent shift, as the sampler applies it (image_seq_len = tokens of the diptych).
            mu = calculate_shift(x0.shape[1], sched.get("base_image_seq_len", 256),
                                 sched.get("max_image_seq_len", 4096), sched.get("base_shift", 0.5),
                                 sched.get("max_shift", 1.15))
            sigma = (np.exp(mu) / (np.exp(mu) + (1 / u.clamp(1e-4, 1 - 1e-4) - 1))).to(device, torch.float32)
            noisy = ((1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise).to(dtype)
            if adapter is not None:
                with torch.set_grad_enabled(cfg.adapter.train_tqd):
                    adapter.set_tokens(adapter.tokens_from_rgb(rgb.float()))
            guidance = torch.full((b,), cfg.sample.guidance, device=device, dtype=torch.float32) \
                if transformer.config.guidance_embeds else None
            predicted = model(hidden_states=torch.cat((noisy, torch.cat((masked_latents, mask_packed), -1)), dim=2),
                              timestep=sigma, guidance=guidance, pooled_projections=pooled.expand(b, -1),
                              encoder_hidden_states=embeds.expand(b, -1, -1), txt_ids=text_ids, img_ids=image_ids,
                              return_dict=False)[0]
            error = ((predicted.float() - (noise - x0)) ** 2).mean(dim=2)  # (B, L)
            if cfg.flow.loss_region == "ir":
                error = error[:, right_half_tokens(image_ids, lw // 2)]
            loss = error.mean()
            return loss, {"loss": float(loss.detach()), "sigma": float(sigma.float().mean())}

        info = {"generator": cls.name, "base": str(base.resolve()), "lora": config_to_dict(cfg.lora),
                "sample": config_to_dict(cfg.sample), "adapter": config_to_dict(cfg.adapter), "seed": args.seed}
        generator_obj.info = info

        def save_fn(folder: Path, step: int) -> None:
            unwrapped = accelerator.unwrap_model(transformer)
            if adapter is not None:
                save_adapter(adapter, folder)
            save_lora_folder(type(pipe), "transformer", unwrapped, folder, {**info, "steps": step})

        sample_fn = (lambda path: generator_obj.sample_grid(path, items[:cfg.train.sample_count], args.seed))
        job = TrainingJob(name=cls.name, model=transformer, loss_fn=loss_fn, save_fn=save_fn, sample_fn=sample_fn)
        return run_training(job, cfg, args, accelerator, out)


def save_adapter(adapter, folder: Path) -> None:
    """The cross-attention adapters (thermal_adapter.safetensors) and the decoder feeding them (tqd/)."""
    from safetensors.torch import save_file

    from runtime.imageio import atomic_path
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype=v.dtype).contiguous() for k, v in adapter.layers.state_dict().items()}
    with atomic_path(folder / ADAPTER_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    adapter.tqd.save_pretrained(folder / TQD_FOLDER)
