"""DDFM sampler end to end with tiny random priors on a real crop; guided-diffusion checkpoint layout; bad priors."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from runtime.color import luminance  # noqa: E402
from runtime.errors import FusionError  # noqa: E402
from runtime.imageio import discover_pairs, read_pair  # noqa: E402
from teacher.ddfm import DDFMTeacher, DiffusionPrior, space_timesteps  # noqa: E402
from teacher.guided_unet import GuidedUNet, GuidedUNetConfig, save_guided_config  # noqa: E402

torch.set_num_threads(1)

TINY_GUIDED = GuidedUNetConfig(image_size=32, model_channels=32, num_res_blocks=1, attention_resolutions=(16,),
                               channel_mult=(1, 2), num_head_channels=16, norm_groups=8)


@pytest.fixture(scope="module")
def crop(roadscene, train_names):
    """An odd-sized real crop (37 x 53) with a hot object: IR and VIS luminance in [0, 1]."""
    ir, vis = read_pair(discover_pairs(roadscene, names=[train_names[0]])[0])
    return ir[200:237, 20:73].copy(), luminance(vis)[200:237, 20:73].copy()


@pytest.fixture(scope="module")
def diffusers_prior(tmp_path_factory):
    from diffusers import DDPMScheduler, UNet2DModel
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("prior")
    UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                norm_num_groups=8, attention_head_dim=8).save_pretrained(folder)
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def guided_checkpoint(tmp_path_factory):
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("guided")
    model = GuidedUNet(TINY_GUIDED)
    for p in model.parameters():  # guided-diffusion zero-initialises output convs; make every path matter
        torch.nn.init.normal_(p, std=0.05)
    torch.save(model.state_dict(), folder / "tiny_uncond.pt")
    save_guided_config(TINY_GUIDED, folder)
    return folder, model


def test_respacing_matches_guided_diffusion():
    steps = space_timesteps(1000, 100)
    assert len(steps) == 100 and steps[0] == 999 and steps[-1] == 0
    assert steps == sorted({round(i * 999 / 99) for i in range(100)}, reverse=True)
    with pytest.raises(FusionError):
        space_timesteps(1000, 0)


def test_ddfm_runs_end_to_end_with_a_tiny_diffusers_prior(diffusers_prior, crop):
    ir, vis = crop
    teacher = DDFMTeacher(diffusers_prior, steps=4, seed=7)
    fused = teacher.fuse(ir, vis)
    assert fused.shape == ir.shape and fused.dtype == np.float32
    assert np.isfinite(fused).all() and 0.0 <= fused.min() and fused.max() <= 1.0
    assert len(teacher.sampler.step_seconds) == 4
    # Fixed seed: the same image again; another seed: another sample.
    np.testing.assert_array_equal(fused, DDFMTeacher(diffusers_prior, steps=4, seed=7).fuse(ir, vis))
    assert np.abs(fused - DDFMTeacher(diffusers_prior, steps=4, seed=8).fuse(ir, vis)).mean() > 1e-4
    # Even with an untrained prior, EM rectification ties the sample to the sources: it follows IR (the data term)
    # and the visible structure far better than the untrained network's own sample (same seed, no EM step) does.
    alone = DDFMTeacher(diffusers_prior, steps=4, seed=7, rectify=False).fuse(ir, vis)
    for source in (ir, vis):
        with_em = np.corrcoef(fused.ravel(), source.ravel())[0, 1]
        without = np.corrcoef(alone.ravel(), source.ravel())[0, 1]
        assert with_em > without + 0.15, (with_em, without)


def test_guided_layout_checkpoint_loads_and_predicts_like_the_network(guided_checkpoint, crop):
    folder, model = guided_checkpoint
    prior = DiffusionPrior.from_pretrained(folder)
    assert prior.kind == "guided-diffusion" and prior.channels == 3 and prior.multiple == 2
    x = torch.randn(2, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    raw = model.eval()(x, torch.tensor([10, 500]))
    assert raw.shape[1] == 6  # learned sigma: eps and variance halves
    eps = prior.predict_noise(x, 10)
    torch.testing.assert_close(eps[:1], raw[:1, :3])
    ir, vis = crop
    fused = DDFMTeacher(folder / "tiny_uncond.pt", steps=3).fuse(ir, vis)
    assert fused.shape == ir.shape and np.isfinite(fused).all()


def test_guided_unet_has_the_public_checkpoint_layout():
    """The 256x256 unconditional architecture, built without memory: names and shapes of guided-diffusion."""
    with torch.device("meta"):
        model = GuidedUNet(GuidedUNetConfig.uncond_256())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sum(int(np.prod(s)) for s in shapes.values()) == 552_814_086
    assert len(model.input_blocks) == 18 and len(model.output_blocks) == 18
    expected = {
        "time_embed.0.weight": (1024, 256),
        "input_blocks.0.0.weight": (256, 3, 3, 3),
        "input_blocks.1.0.emb_layers.1.weight": (512, 1024),  # scale-shift norm: 2 x channels
        "input_blocks.1.0.out_layers.3.weight": (256, 256, 3, 3),
        "input_blocks.3.0.in_layers.2.weight": (256, 256, 3, 3),  # resblock downsampling
        "input_blocks.10.1.qkv.weight": (1536, 512, 1),  # attention at 32 px (ds 8)
        "input_blocks.13.0.skip_connection.weight": (1024, 512, 1, 1),
        "middle_block.1.proj_out.weight": (1024, 1024, 1),
        "output_blocks.2.2.in_layers.0.weight": (1024,),  # resblock upsampling
        "out.2.weight": (6, 256, 3, 3),
    }
    for key, shape in expected.items():
        assert shapes.get(key) == shape, key


def test_bad_priors_are_clear_errors(tmp_path, guided_checkpoint):
    with pytest.raises(FusionError, match="not found"):
        DiffusionPrior.from_pretrained(tmp_path / "missing")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    with pytest.raises(FusionError, match="not a diffusion prior"):
        DiffusionPrior.from_pretrained(tmp_path / "junk")
    # The tiny checkpoint without its config is taken for the 256x256 model: wrong checkpoint, said so.
    folder, _ = guided_checkpoint
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "tiny_uncond.pt").write_bytes((folder / "tiny_uncond.pt").read_bytes())
    with pytest.raises(FusionError, match="does not match"):
        DiffusionPrior.from_pretrained(lone)
    (lone / "tiny_uncond.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(FusionError, match="cannot read"):
        DiffusionPrior.from_pretrained(lone / "tiny_uncond.pt")


def test_fuse_cli_with_ddfm(diffusers_prior, tmp_path, roadscene, train_names, capsys):
    import cv2

    from runtime.cli import main
    data = tmp_path / "data"
    for sub in ("ir", "vi"):
        (data / sub).mkdir(parents=True)
        img = cv2.imread(str(roadscene / sub / f"{train_names[0]}.jpg"), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(data / sub / "a.png"), img[::8, ::8])
    base = ["teacher", "fuse", "--teacher", "ddfm", "--data", str(data), "--device", "cpu", "--threads", "1"]
    assert main(base) == 2
    assert "--prior" in capsys.readouterr().err
    assert main(base + ["--prior", str(tmp_path / "nope")]) == 2
    assert main(base + ["--prior", str(diffusers_prior), "--steps", "2"]) == 0
    manifest = json.loads((data / "TEACHER_FUSED" / "manifest.json").read_text())
    assert manifest["settings"]["steps"] == 2 and manifest["model_hash"]
