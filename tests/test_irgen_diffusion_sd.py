"""sd-img2img and sd-text on a tiny random SD-1.5-shaped base folder built in-process (no download): the real
loading, LoRA training, checkpoint/resume, LoRA save/reload and sampling code paths, on real RoadScene pairs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

from runtime.cli import main as fusion  # noqa: E402
from runtime.errors import FusionError  # noqa: E402
from teacher.irgen.cli import read_rgb  # noqa: E402
from teacher.irgen.diffusion_common import check_base_folder  # noqa: E402

TINY = ["--device", "cpu", "--set", "data.crop=32", "--set", "data.scale=0.25", "--set", "optim.warmup_steps=1",
        "--set", "optim.lr=5e-3", "--set", "train.log_every=1", "--set", "sample.steps=2",
        "--set", "train.sample_count=1"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a loaded machine OpenMP's spinning makes two threads
    up to 100x slower than one; the previous setting is restored for the other test modules."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def sd_base(tmp_path_factory) -> Path:
    from teacher.irgen.diffusion_tiny import build_tiny_sd
    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "base")


@pytest.fixture(scope="module")
def two_names(tmp_path_factory, train_names) -> Path:
    path = tmp_path_factory.mktemp("names") / "two.txt"
    path.write_text("\n".join(train_names[:2]) + "\n")
    return path


def test_tiny_base_command_writes_a_loadable_folder_and_answers_help(tmp_path, capsys):
    """`python -m teacher.irgen.diffusion_tiny sd FOLDER`, as docs/irgen_diffusion.md shows it; --help exits 0 and an
    unknown kind is a usage error (2)."""
    from teacher.irgen.diffusion_tiny import main
    assert main(["sd", str(tmp_path / "base")]) == 0
    check_base_folder(tmp_path / "base", "sd")
    for argv, code in ((["--help"], 0), (["sdxl", str(tmp_path / "other")], 2)):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == code
    assert "sd,flux-fill" in capsys.readouterr().out and not (tmp_path / "other").exists()


def test_wrong_base_folder_says_what_it_must_contain(tmp_path, roadscene, two_names, capsys):
    for folder in (tmp_path / "missing", tmp_path):
        with pytest.raises(FusionError) as info:
            check_base_folder(folder, "sd")
        message = str(info.value)
        assert "\n" not in message
        for item in ("model_index.json", "unet/", "vae/", "text_encoder/", "tokenizer/", "scheduler/"):
            assert item in message
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(FusionError, match="lacks unet/, vae/"):
        check_base_folder(tmp_path, "sd")
    with pytest.raises(FusionError, match="transformer/"):
        check_base_folder(tmp_path, "flux-fill")
    code = fusion(["teacher", "train-irgen", "--generator", "sd-img2img", "--base", str(tmp_path / "nope"),
                   "--data", str(roadscene), "--names", str(two_names), "--out", str(tmp_path / "out"), *TINY])
    assert code == 2
    assert "model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _unet_with_trained_lora(base: Path, trainable: Path):
    """The base UNet plus the LoRA tensors exactly as they were in memory at the last checkpoint."""
    from safetensors.torch import load_file

    from teacher.irgen.diffusion_common import LoraSettings, add_lora
    from teacher.irgen.sd import load_sd_pipeline
    pipe = load_sd_pipeline(base, "StableDiffusionImg2ImgPipeline")
    add_lora(pipe.unet, LoraSettings(rank=16, alpha=16.0))
    state = {k.split(".", 1)[1]: v for k, v in load_file(str(trainable)).items()}
    missing = pipe.unet.load_state_dict(state, strict=False)
    assert not missing.unexpected_keys
    return pipe


def test_sd_img2img_train_resume_reload_and_synth(sd_base, roadscene, two_names, tmp_path):
    from teacher.irgen.sd import SDImg2ImgGenerator
    out = tmp_path / "lora"
    def train_args(folder: Path) -> list[str]:
        return ["teacher", "train-irgen", "--generator", "sd-img2img", "--base", str(sd_base), "--data",
                str(roadscene), "--names", str(two_names), "--out", str(folder), *TINY, "--set", "sample.resolution=32"]

    common = train_args(out)
    assert fusion([*common, "--set", "train.steps=2", "--set", "train.save_every=2"]) == 0
    for name in ("pytorch_lora_weights.safetensors", "irgen.json", "train_config.yaml", "checkpoint/state.json",
                 "samples/step_000002.png"):
        assert (out / name).is_file(), name
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(np.isfinite(r["loss"]) for r in log)

    # a second run into the same folder refuses without --resume, and continues with it
    assert fusion([*common, "--set", "train.steps=3"]) == 2
    assert fusion([*common, "--set", "train.steps=3", "--resume"]) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert json.loads((out / "checkpoint/state.json").read_text())["step"] == 3
    # ...and ends exactly where an uninterrupted 3-step run ends (same batches, noise, optimizer state)
    straight = tmp_path / "straight"
    assert fusion([*train_args(straight), "--set", "train.steps=3", "--set", "train.sample_every=0"]) == 0
    from safetensors.torch import load_file
    resumed, direct = (load_file(str(f / "checkpoint" / "trainable.safetensors")) for f in (out, straight))
    assert resumed.keys() == direct.keys()
    for key in direct:
        torch.testing.assert_close(resumed[key], direct[key], rtol=1e-5, atol=1e-6)

    stem = two_names.read_text().split()[0]
    rgb = read_rgb(next((roadscene / "vi").glob(f"{Path(stem).stem}.*")))[:48, :72]
    base_gen = SDImg2ImgGenerator.from_pretrained(sd_base)  # a complete SD folder used as is: no LoRA
    trained = SDImg2ImgGenerator.from_pretrained(out)
    trained.sample.resolution = base_gen.sample.resolution = 32
    trained.sample.steps = base_gen.sample.steps = 2
    ir_base, ir_lora = base_gen.generate(rgb, seed=3), trained.generate(rgb, seed=3)
    assert ir_lora.shape == rgb.shape[:2] and ir_lora.dtype == np.float32
    assert 0 <= ir_lora.min() and ir_lora.max() <= 1
    assert np.abs(ir_lora - ir_base).max() > 1e-3, "the trained LoRA does not change the output"

    # the reloaded LoRA is exactly the one in memory at the last step (checkpoint tensors put back by hand)
    in_memory = _unet_with_trained_lora(sd_base, out / "checkpoint" / "trainable.safetensors")
    by_hand = SDImg2ImgGenerator(in_memory, trained.sample, {}, "cpu")
    np.testing.assert_allclose(by_hand.generate(rgb, seed=3), ir_lora, atol=1e-5)

    # synth-ir through the CLI, with sampler overrides, writes the dataset layout
    frames = tmp_path / "frames"
    frames.mkdir()
    import shutil
    shutil.copy(next((roadscene / "vi").glob(f"{Path(stem).stem}.*")), frames)
    dataset = tmp_path / "dataset"
    assert fusion(["teacher", "synth-ir", "--generator", "sd-img2img", "--weights", str(out), "--rgb", str(frames),
                   "--out", str(dataset), "--device", "cpu", "--steps", "1", "--resolution", "32",
                   "--strength", "0.5"]) == 0
    written = sorted(p.name for p in (dataset / "ir").iterdir())
    assert written == [f"{Path(stem).stem}.png"]
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["settings"]["sample"]["strength"] == 0.5 and manifest["settings"]["sample"]["steps"] == 1


def test_sd_text_dreambooth_with_prior_then_sample_by_prompt(sd_base, roadscene, two_names, tmp_path):
    out = tmp_path / "dreambooth"
    assert fusion(["teacher", "train-irgen", "--generator", "sd-text", "--base", str(sd_base), "--data",
                   str(roadscene), "--names", str(two_names), "--out", str(out), *TINY, "--set", "train.steps=1",
                   "--set", "prior.enabled=true", "--set", "prior.num_class_images=2", "--set", "prior.steps=1",
                   "--set", "sample.height=32", "--set", "sample.width=48"]) == 0
    assert sorted(p.name for p in (out / "class_images").iterdir()) == ["class_00000.png", "class_00001.png"]
    record = json.loads((out / "train_log.jsonl").read_text().splitlines()[0])
    assert {"instance", "prior", "loss"} <= set(record)
    info = json.loads((out / "irgen.json").read_text())
    assert info["generator"] == "sd-text" and info["sample"]["guidance"] == 7.5

    dataset = tmp_path / "thermal"
    assert fusion(["teacher", "synth-ir", "--generator", "sd-text", "--weights", str(out), "--count", "2",
                   "--prompt", "an infrared thermal frame of a bus at night", "--out", str(dataset),
                   "--device", "cpu", "--steps", "1"]) == 0
    images = sorted((dataset / "ir").iterdir())
    assert [p.name for p in images] == ["sample_00000.png", "sample_00001.png"]
    from runtime.imageio import read_ir
    first, second = (read_ir(p) for p in images)
    assert first.shape == (32, 48) and not np.array_equal(first, second)  # one seed per sample
    assert not (dataset / "vi").exists()

    from teacher.irgen.sd import SDTextGenerator
    generator = SDTextGenerator.from_pretrained(out)
    generator.sample.steps = 1
    bus, tree = (generator.generate(None, seed=0, prompt=p) for p in ("a thermal frame of a bus", "a tree"))
    assert np.abs(bus - tree).max() > 1e-4, "the prompt does not reach the UNet"
    np.testing.assert_allclose(generator.generate(None, seed=0, prompt="a tree"), tree, atol=1e-6)


@pytest.mark.parametrize("config", sorted(p.name for p in (Path(__file__).resolve().parents[1] / "configs" /
                                                              "irgen_diffusion").glob("*.yaml")))
def test_shipped_configs_load(config):
    from runtime.config import load_config
    from teacher.irgen.flux import FluxTrainConfig
    from teacher.irgen.sd import SDImg2ImgTrainConfig, SDTextTrainConfig
    path = Path(__file__).resolve().parents[1] / "configs" / "irgen_diffusion" / config
    classes = {"sd_img2img.yaml": [SDImg2ImgTrainConfig], "sd_img2img_controlnet.yaml": [SDImg2ImgTrainConfig],
               "sd_text.yaml": [SDTextTrainConfig],
               "flux_fill.yaml": [FluxTrainConfig], "flux_fill_tqd.yaml": [FluxTrainConfig],
               "tiny_cpu.yaml": [SDImg2ImgTrainConfig, SDTextTrainConfig, FluxTrainConfig]}[config]
    for cls in classes:
        cfg = load_config(cls, path)
        assert cfg.data.crop % 16 == 0 or config == "tiny_cpu.yaml"


def test_sd_img2img_with_controlnet_on_rgb_edges(sd_base, roadscene, two_names, train_names, tmp_path):
    from teacher.irgen.sd import SDImg2ImgGenerator, control_condition
    out = tmp_path / "control"
    assert fusion(["teacher", "train-irgen", "--generator", "sd-img2img", "--base", str(sd_base), "--data",
                   str(roadscene), "--names", str(two_names), "--out", str(out), *TINY, "--set", "train.steps=2",
                   "--set", "train.sample_every=0", "--set", "sample.resolution=32", "--set", "control.enabled=true",
                   "--set", "control.condition=edges"]) == 0
    assert (out / "controlnet" / "config.json").is_file()
    assert (out / "controlnet" / "diffusion_pytorch_model.safetensors").is_file()
    full = read_rgb(next((roadscene / "vi").glob(f"{train_names[0]}.*")))
    top, left = full.shape[0] // 2 - 24, full.shape[1] // 2 - 36
    rgb = full[top:top + 48, left:left + 72]  # the middle of a road scene: cars, lane marks, edges
    edges = control_condition(rgb, "edges")
    assert edges.shape == rgb.shape and set(np.unique(edges)) <= {0.0, 1.0} and 0 < edges.mean() < 0.5

    generator = SDImg2ImgGenerator.from_pretrained(out)
    assert type(generator.pipe).__name__ == "StableDiffusionControlNetImg2ImgPipeline"
    assert generator.settings()["control"]["condition"] == "edges"
    controlled = generator.generate(rgb, seed=0)
    generator.control.scale = 0.0  # ControlNet residuals off: only the LoRA UNet remains
    uncontrolled = generator.generate(rgb, seed=0)
    assert controlled.shape == rgb.shape[:2]
    assert np.abs(controlled - uncontrolled).max() > 1e-4, "the trained ControlNet has no effect"


def test_a_folder_diffusers_cannot_load_is_one_sentence(tmp_path):
    from runtime.errors import FusionError
    from teacher.irgen.flux import load_flux_fill_pipeline
    from teacher.irgen.sd import load_sd_pipeline
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        (tmp_path / sub).mkdir()
    (tmp_path / "model_index.json").write_text("{}")  # the layout is there, the content is not
    with pytest.raises(FusionError, match=r"could not be loaded as a Stable Diffusion folder .*unet/.*save_pretrained"):
        load_sd_pipeline(tmp_path)
    with pytest.raises(FusionError, match=r"could not be loaded as a FLUX.1-Fill folder .*text_encoder_2/"):
        load_flux_fill_pipeline(tmp_path, None)
