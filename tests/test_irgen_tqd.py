"""Thermal query decoder: shapes, weights round trip, ImageNet loading, training on real pairs, resume, self-check."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from runtime.errors import FusionError  # noqa: E402
from teacher.irgen.data import PairedCrops, load_training_pairs  # noqa: E402
from teacher.irgen.layers import sine_position_encoding  # noqa: E402
from teacher.irgen.resnet import ResNet, load_imagenet_weights  # noqa: E402
from teacher.irgen.tqd import TQDConfig, TQDTrainConfig, ThermalQueryDecoderGenerator  # noqa: E402
from teacher.irgen.tqd_net import ThermalQueryDecoder  # noqa: E402
from helpers import requires_gpu  # noqa: E402

torch.set_num_threads(1)

TINY = dict(backbone_width=8, hidden_dim=32, num_queries=8, decoder_layers=3, num_heads=4, ffn_dim=32, embed_dim=16,
            full_res_channels=8)
TINY_OVERRIDES = [f"model.{k}={v}" for k, v in TINY.items()] + [
    "data.scale=0.25", "data.crop=48", "data.batch_size=4", "optim.lr=2e-3", "optim.warmup_steps=2",
    "train.log_every=5", "train.save_every=10", "train.image_every=1000"]


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return ThermalQueryDecoder(TQDConfig(**TINY)).eval()


def train_args(roadscene, names_file, out, steps, resume=False, seed=0):
    return argparse.Namespace(data=str(roadscene), names=str(names_file), config=None, out=str(out), resume=resume,
                              device="cpu", seed=seed, base=None, self_check=0,
                              overrides=TINY_OVERRIDES + [f"train.steps={steps}"])


@pytest.fixture
def names_file(tmp_path, train_names):
    path = tmp_path / "names.txt"
    path.write_text("\n".join(train_names[:8]) + "\n")
    return path


def test_forward_any_size_full_resolution_output():
    model = tiny_model()
    rgb = torch.rand(2, 3, 70, 93)
    with torch.no_grad():
        ir, query_maps = model(rgb, return_query_maps=True)
    assert ir.shape == (2, 1, 70, 93) and query_maps.shape == (2, 8, 70, 93)
    assert float(ir.min()) >= 0 and float(ir.max()) <= 1
    maps, _ = model.attention_maps(rgb[:1])
    assert maps.shape == (8, 70, 93) and float(maps.max()) == pytest.approx(1.0)
    # queries differ from each other (they are learnable embeddings, not copies)
    assert not torch.allclose(maps[0], maps[1])


def test_sine_position_encoding_is_bounded_and_distinct():
    pos = sine_position_encoding(6, 9, 32)
    assert pos.shape == (32, 6, 9) and float(pos.abs().max()) <= 1.0
    flat = pos.flatten(1).T
    assert torch.cdist(flat, flat).add(torch.eye(54) * 10).min() > 1e-3  # every position has its own code


def test_save_and_from_pretrained_round_trip(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "w")
    assert {p.name for p in (tmp_path / "w").iterdir()} == {"config.json", "model.safetensors"}
    again = ThermalQueryDecoder.from_pretrained(tmp_path / "w")
    rgb = torch.rand(1, 3, 40, 52)
    torch.testing.assert_close(model(rgb), again(rgb))
    with pytest.raises(FusionError, match="must hold config.json"):
        ThermalQueryDecoder.from_pretrained(tmp_path)


def test_imagenet_weights_load_from_a_local_file_in_torchvision_naming(tmp_path):
    from safetensors.torch import save_file
    source = ResNet(18, 8)
    for p in source.parameters():
        torch.nn.init.normal_(p)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["module.fc.weight"] = torch.zeros(10, 64)  # the classifier is ignored
    save_file(state, str(tmp_path / "resnet18.safetensors"))
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")  # torchvision's format (read with weights_only)
    for file in ("resnet18.safetensors", "resnet18.pth"):
        target = ResNet(18, 8)
        assert load_imagenet_weights(target, tmp_path / file) > 0
        for key, value in source.state_dict().items():
            torch.testing.assert_close(target.state_dict()[key], value)
    with pytest.raises(FusionError, match="do not fit"):
        load_imagenet_weights(ResNet(18, 16), tmp_path / "resnet18.safetensors")
    with pytest.raises(FusionError, match="not found"):
        load_imagenet_weights(ResNet(18, 8), tmp_path / "missing.pth")
    # the config path wires it into the generator's network
    model = ThermalQueryDecoder(TQDConfig(**TINY, backbone_weights=str(tmp_path / "resnet18.safetensors")))
    assert model.pretrained_tensors > 0
    torch.testing.assert_close(model.backbone.conv1.weight, source.conv1.weight)


def fixed_batch_loss(model, cfg, data):
    from teacher.irgen.training import to_tensors
    batch = to_tensors(data.batch(seed=12345, step=0, batch_size=8), "cpu")
    model.train()
    with torch.no_grad():
        return ThermalQueryDecoderGenerator.compute_loss(model, batch, cfg)[0].item()


def test_training_on_real_pairs_lowers_the_loss(roadscene, names_file, tmp_path):
    args = train_args(roadscene, names_file, tmp_path / "full", steps=40)
    cfg = ThermalQueryDecoderGenerator.load_train_config(args)
    data = PairedCrops(load_training_pairs(args.data, args.names), cfg.data, progress=False)
    torch.manual_seed(0)
    before = fixed_batch_loss(ThermalQueryDecoderGenerator.build_model(cfg), cfg, data)
    assert ThermalQueryDecoderGenerator.train(args) == 0
    trained = ThermalQueryDecoder.from_pretrained(tmp_path / "full")
    after = fixed_batch_loss(trained, cfg, data)
    assert after < 0.85 * before, (before, after)  # 0.062 -> 0.048 here
    assert (tmp_path / "full" / "train_log.jsonl").read_text().count("\n") == 8
    assert (tmp_path / "full" / "train_config.yaml").exists()
    # a second run into the same folder without --resume is refused rather than overwriting it
    with pytest.raises(FusionError, match="--resume"):
        ThermalQueryDecoderGenerator.train(args)


def test_resume_continues_bit_for_bit(roadscene, names_file, tmp_path):
    # A constant lr after warmup makes a 10-step run the exact first half of a 20-step run.
    constant = ["optim.min_lr_ratio=1.0"]
    straight = train_args(roadscene, names_file, tmp_path / "a", steps=20)
    straight.overrides += constant
    ThermalQueryDecoderGenerator.train(straight)
    interrupted = train_args(roadscene, names_file, tmp_path / "b", steps=10)
    interrupted.overrides += constant
    ThermalQueryDecoderGenerator.train(interrupted)
    # a real interruption also leaves log lines written after the last checkpoint (step 10): they get replayed
    with open(tmp_path / "b" / "train_log.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 15, "loss": 123.0}) + "\n")
    resumed = train_args(roadscene, names_file, tmp_path / "b", steps=20, resume=True)
    resumed.overrides += constant
    ThermalQueryDecoderGenerator.train(resumed)
    a = ThermalQueryDecoder.from_pretrained(tmp_path / "a").state_dict()
    b = ThermalQueryDecoder.from_pretrained(tmp_path / "b").state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    # the resumed log reads like the uninterrupted one: each step once, the same losses
    log_a, log_b = ([json.loads(line) for line in (tmp_path / d / "train_log.jsonl").read_text().splitlines()]
                    for d in ("a", "b"))
    assert [r["step"] for r in log_b] == [r["step"] for r in log_a] == [5, 10, 15, 20]
    assert [r["loss"] for r in log_b] == pytest.approx([r["loss"] for r in log_a], rel=1e-6)


def test_self_check_reports_a_healthy_model(roadscene, names_file, tmp_path, capsys):
    args = train_args(roadscene, names_file, tmp_path / "sc", steps=10)
    args.self_check = 25
    assert ThermalQueryDecoderGenerator.train(args) == 0
    text = capsys.readouterr().out
    assert "gradient norm by module" in text and "OK:" in text
    assert not (tmp_path / "sc" / "model.safetensors").exists()  # a self-check writes no weights


def test_generator_synthesises_at_input_size_and_visualises(tmp_path):
    model = tiny_model()
    model.config.input_scale = 0.5
    model.save_pretrained(tmp_path)
    generator = ThermalQueryDecoderGenerator.from_pretrained(tmp_path)
    rgb = np.random.default_rng(0).random((61, 83, 3)).astype(np.float32)
    ir = generator.generate(rgb)
    assert ir.shape == (61, 83) and ir.dtype == np.float32 and 0 <= ir.min() <= ir.max() <= 1
    panel = generator.visualize(rgb, ir, count=3)
    assert panel.dtype == np.uint8 and panel.ndim == 3 and panel.shape[2] == 3
    assert generator.settings()["model"]["num_queries"] == 8


def test_synth_ir_command_with_a_trained_folder(roadscene, train_names, tmp_path):
    from runtime.cli import dispatch
    from runtime.imageio import discover_pairs, read_ir
    tiny_model().save_pretrained(tmp_path / "weights")
    names = tmp_path / "two.txt"
    names.write_text("\n".join(train_names[:2]))
    out = tmp_path / "synth"
    assert dispatch("teacher", ["synth-ir", "--generator", "tqd", "--weights", str(tmp_path / "weights"), "--rgb",
                                str(roadscene / "vi"), "--names", str(names), "--out", str(out), "--visualize",
                                "--device", "cpu"], "fusion teacher") == 0
    pairs = discover_pairs(data=out)
    assert [p.name for p in pairs] == sorted(train_names[:2])
    for pair in pairs:
        assert read_ir(pair.ir).shape == read_ir(roadscene / "ir" / f"{pair.name}.jpg").shape
        assert (out / "visual" / f"{pair.name}.png").is_file()
    # a decomp folder is not a tqd folder: one sentence, exit 2
    assert dispatch("teacher", ["synth-ir", "--generator", "decomp", "--weights", str(tmp_path / "weights"),
                                "--rgb", str(roadscene / "vi"), "--names", str(names), "--out", str(tmp_path / "o"),
                                "--device", "cpu"], "fusion teacher") == 2


@requires_gpu
def test_amp_training_on_cuda(roadscene, names_file, tmp_path):
    args = train_args(roadscene, names_file, tmp_path / "gpu", steps=20)
    args.device = "cuda"
    assert ThermalQueryDecoderGenerator.train(args) == 0
    generator = ThermalQueryDecoderGenerator.from_pretrained(tmp_path / "gpu", device="cuda")
    ir = generator.generate(np.random.default_rng(0).random((50, 70, 3)).astype(np.float32))
    assert ir.shape == (50, 70) and np.isfinite(ir).all()
