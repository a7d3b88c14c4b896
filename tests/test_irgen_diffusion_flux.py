"""flux-fill on a tiny random FLUX.1-Fill-shaped base folder built in-process (no download): diptych masking, LoRA
training/save/reload and sampling through the real pipeline, and the thermal-query-decoder cross-attention adapter."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

from runtime.cli import main as fusion  # noqa: E402
from helpers import requires_gpu  # noqa: E402
from teacher.irgen.cli import read_rgb  # noqa: E402

TINY = ["--device", "cpu", "--set", "data.crop=32", "--set", "data.scale=0.25", "--set", "optim.warmup_steps=1",
        "--set", "optim.lr=5e-3", "--set", "train.log_every=1", "--set", "sample.steps=2",
        "--set", "sample.resolution=32", "--set", "sample.max_sequence_length=32", "--set", "train.sample_count=1"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a loaded machine OpenMP's spinning makes two threads
    up to 100x slower than one; the previous setting is restored for the other test modules."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def flux_base(tmp_path_factory) -> Path:
    from teacher.irgen.diffusion_tiny import build_tiny_flux_fill
    return build_tiny_flux_fill(tmp_path_factory.mktemp("tiny-flux") / "base")


@pytest.fixture(scope="module")
def two_names(tmp_path_factory, train_names) -> Path:
    path = tmp_path_factory.mktemp("names") / "two.txt"
    path.write_text("\n".join(train_names[:2]) + "\n")
    return path


@pytest.fixture(scope="module")
def rgb_frame(roadscene, train_names) -> np.ndarray:
    return read_rgb(next((roadscene / "vi").glob(f"{train_names[0]}.*")))[:40, :56]


def test_diptych_mask_covers_exactly_the_right_half():
    from teacher.irgen.flux import make_diptych, right_half_tokens
    rgb, ir = torch.rand(2, 3, 8, 12), torch.rand(2, 1, 8, 12)
    diptych, mask = make_diptych(rgb, ir)
    assert diptych.shape == (2, 3, 8, 24) and mask.shape == (2, 1, 8, 24)
    assert torch.equal(diptych[..., :12], rgb) and torch.equal(diptych[..., 12:], ir.expand(-1, 3, -1, -1))
    assert torch.all(mask[..., :12] == 0) and torch.all(mask[..., 12:] == 1)
    empty, _ = make_diptych(rgb)
    assert torch.all(empty[..., 12:] == 0)
    ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(3.0), torch.arange(6.0), indexing="ij"),
                      -1).reshape(-1, 3)
    assert right_half_tokens(ids, 6).tolist() == [False, False, False, True, True, True] * 3


def _transformer_inputs(generator):
    """Record what the sampler feeds the transformer (hidden_states = noisy | masked-image latents | packed mask)."""
    seen = []
    generator.pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((kwargs["hidden_states"].detach().clone(),
                                                  kwargs["img_ids"].detach().clone())), with_kwargs=True)
    return seen


def test_flux_fill_train_reload_and_diptych_sampling(flux_base, roadscene, two_names, rgb_frame, tmp_path):
    from teacher.irgen.flux import FluxFillGenerator, FluxSampleConfig, load_flux_fill_pipeline
    out = tmp_path / "lora"
    assert fusion(["teacher", "train-irgen", "--generator", "flux-fill", "--base", str(flux_base), "--data",
                   str(roadscene), "--names", str(two_names), "--out", str(out), *TINY,
                   "--set", "train.steps=2"]) == 0
    for name in ("pytorch_lora_weights.safetensors", "irgen.json", "checkpoint/state.json", "samples/step_000002.png"):
        assert (out / name).is_file(), name
    info = json.loads((out / "irgen.json").read_text())
    assert info["lora"]["rank"] == 16 and info["lora"]["alpha"] == 32.0 and "add_q_proj" in info["lora"]["targets"]
    assert all(np.isfinite(json.loads(line)["loss"]) for line in (out / "train_log.jsonl").read_text().splitlines())

    trained = FluxFillGenerator.from_pretrained(out)
    seen = _transformer_inputs(trained)
    ir = trained.generate(rgb_frame, seed=1)
    assert ir.shape == rgb_frame.shape[:2] and ir.dtype == np.float32 and 0 <= ir.min() and ir.max() <= 1
    # the left half of the output diptych is the RGB frame (at the working size), the right half the IR render
    diptych = trained.last_diptych
    h, w2 = diptych.shape[:2]
    from teacher.irgen.diffusion_common import resize_to
    np.testing.assert_array_equal(diptych[:, :w2 // 2], resize_to(rgb_frame, h, w2 // 2))
    assert trained.visualize(rgb_frame, ir).shape == (h, w2, 3)
    # the mask channels the transformer sees are 0 on every left-half token and 1 on every right-half token
    hidden, image_ids = seen[0]
    mask_channels = 4 * trained.pipe.vae_scale_factor ** 2  # vsf x vsf mask pixels per latent, packed 2x2
    mask_tokens = hidden[0, :, -mask_channels:]
    right = image_ids[:, 2] >= (image_ids[:, 2].max() + 1) / 2
    assert torch.all(mask_tokens[right] == 1) and torch.all(mask_tokens[~right] == 0)

    base = FluxFillGenerator(load_flux_fill_pipeline(flux_base, torch.float32), FluxSampleConfig(**info["sample"]),
                             {}, "cpu")
    assert np.abs(base.generate(rgb_frame, seed=1) - ir).max() > 1e-3, "the trained LoRA does not change the output"
    again = FluxFillGenerator.from_pretrained(out)
    np.testing.assert_allclose(again.generate(rgb_frame, seed=1), ir, atol=1e-5)


@pytest.mark.parametrize("train_tqd", [True, False], ids=["tqd-fine-tuned", "tqd-frozen"])
def test_flux_fill_with_thermal_query_adapter(flux_base, roadscene, two_names, rgb_frame, tmp_path, train_tqd):
    from safetensors.torch import load_file

    from teacher.irgen.flux import FluxFillGenerator
    from teacher.irgen.tqd_net import ThermalQueryDecoder
    tqd_folder = tmp_path / "tqd"
    torch.manual_seed(0)
    ThermalQueryDecoder.from_config(dict(backbone_depth=18, backbone_width=8, hidden_dim=16, num_queries=8,
                                         decoder_layers=3, num_heads=2, ffn_dim=32, embed_dim=8,
                                         full_res_channels=4)).save_pretrained(tqd_folder)
    out = tmp_path / "adapter"
    assert fusion(["teacher", "train-irgen", "--generator", "flux-fill", "--base", str(flux_base), "--data",
                   str(roadscene), "--names", str(two_names), "--out", str(out), *TINY, "--set", "train.steps=2",
                   "--set", "train.sample_every=0", "--set", "adapter.enabled=true",
                   "--set", f"adapter.tqd_weights={tqd_folder}", "--set", "adapter.double_blocks=[0]",
                   "--set", "adapter.single_blocks=[0]", "--set", "adapter.heads=2",
                   "--set", f"adapter.train_tqd={str(train_tqd).lower()}"]) == 0
    adapter_state = load_file(str(out / "thermal_adapter.safetensors"))
    assert sorted({k.split(".")[0] for k in adapter_state}) == ["double_0", "single_0"]
    assert all(abs(float(adapter_state[f"{k}.gate"])) > 0 for k in ("double_0", "single_0")), "gates did not open"
    before, after = (load_file(str(f / "model.safetensors")) for f in (tqd_folder, out / "tqd"))
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    if train_tqd:
        assert changed, "train_tqd=true left the decoder unchanged"
    else:
        assert not changed, f"the frozen decoder changed: {changed[:3]}"

    generator = FluxFillGenerator.from_pretrained(out)
    with_adapter = generator.generate(rgb_frame, seed=2)
    with torch.no_grad():
        for layer in generator.adapter.layers.values():
            layer.gate.zero_()
    without = generator.generate(rgb_frame, seed=2)
    assert with_adapter.shape == rgb_frame.shape[:2]
    assert np.abs(with_adapter - without).max() > 1e-4, "the adapter tokens do not reach the transformer"


def test_flux_base_folder_errors(tmp_path, roadscene, two_names, capsys):
    (tmp_path / "sd-like").mkdir()
    for item in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        (tmp_path / "sd-like" / item).mkdir()
    (tmp_path / "sd-like" / "model_index.json").write_text("{}")
    code = fusion(["teacher", "train-irgen", "--generator", "flux-fill", "--base", str(tmp_path / "sd-like"),
                   "--data", str(roadscene), "--names", str(two_names), "--out", str(tmp_path / "out"), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "lacks transformer/, text_encoder_2/, tokenizer_2/" in err and "FLUX.1-Fill-dev" in err
    (tmp_path / "weights").mkdir()
    code = fusion(["teacher", "synth-ir", "--generator", "flux-fill", "--weights", str(tmp_path / "weights"),
                   "--rgb", str(roadscene), "--names", str(two_names), "--out", str(tmp_path / "ds"),
                   "--device", "cpu"])
    assert code == 2 and "irgen.json and pytorch_lora_weights.safetensors" in capsys.readouterr().err


@requires_gpu
def test_tiny_models_train_and_sample_on_cuda_in_bf16(flux_base, roadscene, two_names, rgb_frame, tmp_path):
    """The CUDA path: bf16 base weights, fp32 LoRA/adapter/ControlNet, autocast, gradient checkpointing."""
    from teacher.irgen.diffusion_tiny import build_tiny_sd
    from teacher.irgen.flux import FluxFillGenerator
    from teacher.irgen.sd import SDImg2ImgGenerator
    sd_base = build_tiny_sd(tmp_path / "sd-base")
    gpu = [a if a != "cpu" else "cuda" for a in TINY] + ["--set", "train.mixed_precision=bf16", "--set",
                                                         "train.steps=3", "--set", "train.sample_every=0"]
    for generator, base, extra in (("flux-fill", flux_base, []),
                                   ("sd-img2img", sd_base, ["--set", "control.enabled=true"])):
        out = tmp_path / generator
        torch.cuda.reset_peak_memory_stats()
        assert fusion(["teacher", "train-irgen", "--generator", generator, "--base", str(base), "--data",
                       str(roadscene), "--names", str(two_names), "--out", str(out), *gpu, *extra]) == 0
        log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        assert all(np.isfinite(r["loss"]) for r in log)
        print(f"{generator}: peak CUDA memory {torch.cuda.max_memory_allocated() / 2 ** 20:.0f} MiB, "
              f"{log[-1]['seconds'] / len(log):.3f} s/step")
    for cls, folder in ((FluxFillGenerator, tmp_path / "flux-fill"), (SDImg2ImgGenerator, tmp_path / "sd-img2img")):
        generator = cls.from_pretrained(folder, device="cuda")
        ir = generator.generate(rgb_frame, seed=0)
        assert ir.shape == rgb_frame.shape[:2] and np.isfinite(ir).all()


def test_bf16_training_on_cpu_keeps_finite_losses(flux_base, roadscene, two_names, tmp_path, monkeypatch):
    """The bf16 branch of the training step (bf16 base weights, fp32 LoRA, autocast) run on the CPU, where the
    CUDA-only test cannot go: the losses stay finite over the steps after the first update. resolve_precision is
    told to keep bf16 on the CPU (it falls back to fp32 there by default)."""
    import teacher.irgen.diffusion_common as common
    monkeypatch.setattr(common, "resolve_precision", lambda name, device: name)
    out = tmp_path / "bf16"
    assert fusion(["teacher", "train-irgen", "--generator", "flux-fill", "--base", str(flux_base), "--data",
                   str(roadscene), "--names", str(two_names), "--out", str(out), *TINY, "--set",
                   "train.mixed_precision=bf16", "--set", "train.steps=3", "--set", "train.sample_every=0"]) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 3 and all(np.isfinite(r["loss"]) for r in log)


def test_nonfinite_gradients_stop_training_at_the_step_they_appear(tmp_path):
    """A finite loss with an infinite gradient (sqrt at 0) must stop the run there, naming the tensor, instead of
    turning every weight into nan and failing one step later with a misleading 'the loss became nan'."""
    from dataclasses import dataclass, field

    from runtime.errors import FusionError
    from teacher.irgen.diffusion_common import (DiffusionLoopConfig, DiffusionOptimConfig, TrainingJob,
                                                make_accelerator, run_training)

    @dataclass
    class Config:
        optim: DiffusionOptimConfig = field(default_factory=DiffusionOptimConfig)
        train: DiffusionLoopConfig = field(default_factory=lambda: DiffusionLoopConfig(steps=3, sample_every=0))

    model = torch.nn.Linear(2, 2)

    def loss_fn(m, step, micro):
        weight = m.weight
        loss = torch.sqrt(weight - weight.detach()).sum() + 1.0  # value 1, gradient inf
        return loss, {"loss": float(loss.detach())}

    cfg = Config()
    job = TrainingJob(name="probe", model=model, loss_fn=loss_fn, save_fn=lambda folder, step: None, sample_fn=None)
    args = type("Args", (), {"resume": False})()
    with pytest.raises(FusionError, match=r"non-finite at step 0 .* in model\.weight"):
        run_training(job, cfg, args, make_accelerator(cfg, "cpu", tmp_path), tmp_path)
    assert torch.isfinite(model.weight).all()
