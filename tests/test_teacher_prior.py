"""`fusion teacher train-prior` end to end on CPU at a tiny setting, on real frames; resume; the prior it writes
loads in DDFM and in diffusers' DDPMPipeline; a few dozen steps lower the denoising loss."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from runtime.cli import main  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture()
def frames(tmp_path, roadscene, train_names):
    """A few real IR and VIS frames, shrunk (decode time, not realism, is what we save)."""
    import cv2
    folders = []
    for sub in ("ir", "vi"):
        folder = tmp_path / "frames" / sub
        folder.mkdir(parents=True)
        for name in train_names[:3]:
            img = cv2.imread(str(roadscene / sub / f"{name}.jpg"), cv2.IMREAD_UNCHANGED)
            cv2.imwrite(str(folder / f"{name}.png"), cv2.resize(img, (64, 48), interpolation=cv2.INTER_AREA))
        folders.append(folder)
    return folders


def _train(frames, out, *extra):
    return main(["teacher", "train-prior", "--images", *map(str, frames), "--out", str(out), "--size", "16",
                 "--model", "tiny", "--batch-size", "2", "--device", "cpu", "--threads", "1", *extra])


def test_train_prior_writes_a_loadable_prior_and_resumes(frames, tmp_path, capsys):
    from diffusers import DDPMPipeline

    from teacher.ddfm import DDFMTeacher, DiffusionPrior
    out = tmp_path / "prior"
    assert _train(frames, out, "--steps", "2", "--save-every", "1") == 0
    assert json.loads((out / "training_state" / "state.json").read_text())["step"] == 2
    prior = DiffusionPrior.from_pretrained(out)
    assert prior.kind == "diffusers" and prior.channels == 3 and prior.multiple == 8
    pipeline = DDPMPipeline.from_pretrained(str(out))
    assert pipeline.unet.config.sample_size == 16
    # Existing folder: refuse without --resume; continue with it.
    assert _train(frames, out, "--steps", "4") == 2
    assert "--resume" in capsys.readouterr().err
    assert _train(frames, out, "--steps", "4", "--resume") == 0
    assert json.loads((out / "training_state" / "state.json").read_text())["step"] == 4
    assert (out / "train_prior.yaml").is_file()
    assert not list(tmp_path.glob(".prior.*")), "no staging folders may be left behind"
    # The trained prior drives the DDFM sampler on a real (odd-sized) crop.
    ir = np.random.default_rng(0).random((21, 30)).astype(np.float32)
    fused = DDFMTeacher(out, steps=2).fuse(ir, ir[::-1].copy())
    assert fused.shape == (21, 30) and np.isfinite(fused).all()


def test_train_prior_learns(frames, tmp_path):
    """40 tiny steps lower the noise-prediction loss on a fixed held batch (same crops, noise and timesteps)."""
    from safetensors.torch import load_file

    from teacher.prior import FrameCrops, PriorTrainConfig, build_unet, list_training_images, train_prior
    config = PriorTrainConfig(size=16, model="tiny", steps=40, batch_size=4, lr=1e-3, warmup=1, save_every=40)
    out = tmp_path / "learn"
    train_prior(frames, out, config, device="cpu", log=open("/dev/null", "w"))

    held = FrameCrops(list_training_images(frames), 16, 3, seed=123).batch(16)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(held.shape, generator=gen)
    t = torch.randint(50, 600, (held.shape[0],), generator=gen)
    from diffusers import DDPMScheduler
    abar = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod[t].view(-1, 1, 1, 1)
    noisy = abar.sqrt() * held + (1 - abar).sqrt() * noise

    def loss_of(unet):
        with torch.no_grad():
            return float(torch.nn.functional.mse_loss(unet.eval()(noisy, t).sample, noise))

    torch.manual_seed(config.seed)
    initial = loss_of(build_unet(config))
    trained = build_unet(config)
    trained.load_state_dict(load_file(str(out / "training_state" / "model.safetensors")))
    assert loss_of(trained) < 0.8 * initial


def test_train_prior_input_errors(tmp_path, capsys):
    assert _train([tmp_path / "missing"], tmp_path / "p", "--steps", "1") == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert _train([tmp_path / "empty"], tmp_path / "p", "--steps", "1") == 2
    assert "no images" in capsys.readouterr().err
