"""Tiny, randomly initialised Stable Diffusion and FLUX.1-Fill base folders, built in-process (no download).

They have the exact layout and classes of the real models (diffusers `save_pretrained`), so tests and smoke runs
drive the real loading, LoRA, training and sampling code paths in seconds on a CPU:

    python -m teacher.irgen.diffusion_tiny sd build/tiny-sd         # then: train-irgen --base build/tiny-sd ...
    python -m teacher.irgen.diffusion_tiny flux-fill build/tiny-flux

The tokenizers are character-level (a CLIP BPE with no merges, a T5 unigram over characters), written here.
"""
from __future__ import annotations

import argparse
import json
import string
import sys
import tempfile
from pathlib import Path

CHARACTERS = list(string.ascii_lowercase + string.digits + ".,!?'-")


def tiny_clip_tokenizer(max_length: int = 77):
    from transformers import CLIPTokenizer
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in CHARACTERS:
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), model_max_length=max_length)


def tiny_clip_text_encoder(vocab_size: int, max_length: int = 77, width: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel
    return CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, hidden_size=width, intermediate_size=2 * width,
                                        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=max_length,
                                        projection_dim=width, bos_token_id=0, eos_token_id=1, pad_token_id=1))


def tiny_vae(latent_channels: int = 4, shift_factor: float | None = None):
    from diffusers import AutoencoderKL
    extra = {} if shift_factor is None else {"shift_factor": shift_factor, "use_quant_conv": False,
                                             "use_post_quant_conv": False}
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                         latent_channels=latent_channels, norm_num_groups=4, sample_size=32, **extra)


def build_tiny_sd(folder: str | Path, seed: int = 0) -> Path:
    """A ~0.2 M-parameter SD-1.5-shaped pipeline folder (UNet, VAE, CLIP text encoder, tokenizer, PNDM scheduler)."""
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=32,
                                attention_head_dim=4,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=tiny_vae(), text_encoder=tiny_clip_text_encoder(len(tokenizer)),
                                   tokenizer=tokenizer, unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(folder))
    return Path(folder)


def build_tiny_flux_fill(folder: str | Path, seed: int = 0) -> Path:
    """A FLUX.1-Fill-shaped pipeline folder: 1 double + 1 single block transformer (in_channels = noisy latents +
    masked-image latents + packed mask), tiny CLIP and T5 encoders and tokenizers, flow-matching scheduler."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxFillPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast
    torch.manual_seed(seed)
    clip_tokenizer = tiny_clip_tokenizer()
    t5_tokenizer = T5TokenizerFast(vocab=[("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
                                   + [(c, -2.0) for c in CHARACTERS] + [("\u2581" + c, -2.0) for c in CHARACTERS],
                                   extra_ids=0)
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1,
                                 num_heads=2, relative_attention_num_buckets=8))
    latent_channels, vae_scale = 4, 2  # vae_scale_factor = 2 ** (len(block_out_channels) - 1)
    packed = 4 * latent_channels
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=2 * packed + 4 * vae_scale ** 2,
                                         out_channels=packed, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    pipe = FluxFillPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
                            vae=tiny_vae(latent_channels, shift_factor=0.0609),
                            text_encoder=tiny_clip_text_encoder(len(clip_tokenizer)), tokenizer=clip_tokenizer,
                            text_encoder_2=t5, tokenizer_2=t5_tokenizer, transformer=transformer)
    pipe.save_pretrained(str(folder))
    return Path(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m teacher.irgen.diffusion_tiny",
                                     description="write a tiny, randomly initialised base folder (no download)")
    parser.add_argument("kind", choices=("sd", "flux-fill"), help="Stable Diffusion or FLUX.1-Fill layout")
    parser.add_argument("folder", help="where to write it (diffusers save_pretrained layout)")
    args = parser.parse_args(argv)
    built = (build_tiny_sd if args.kind == "sd" else build_tiny_flux_fill)(args.folder)
    print(f"tiny {args.kind} base folder in {built}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
