"""`fusion teacher train-irgen` / `synth-ir` plumbing, with a tiny in-test generator (no torch needed)."""
from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from runtime.cli import dispatch
from runtime.imageio import read_ir, read_vis
from teacher import registry
from teacher.irgen.base import IRGenerator


class InvertedLumaGenerator(IRGenerator):
    """IR := 1 - luminance; counts its calls so tests can see what was (not) regenerated."""

    name = "test-inverted"
    calls: list[str] = []

    @classmethod
    def add_arguments(cls, parser, verb):
        if verb == "synth-ir":
            parser.add_argument("--test-gain", type=float, default=1.0)

    @classmethod
    def from_pretrained(cls, folder, device="cpu", args=None):
        gen = cls()
        gen.gain = args.test_gain
        return gen

    def generate(self, rgb, seed=0, prompt=None):
        self.calls.append(seed)
        return np.clip(self.gain * (1.0 - rgb.mean(axis=2)), 0, 1)


class TextGenerator(IRGenerator):
    name = "test-text"
    needs_rgb = False

    @classmethod
    def from_pretrained(cls, folder, device="cpu", args=None):
        return cls()

    def generate(self, rgb, seed=0, prompt=None):
        return np.full((16, 24), (seed % 10) / 10, np.float32)


@pytest.fixture
def fake_generators(monkeypatch):
    module = types.ModuleType("irgen_test_generators")
    module.InvertedLumaGenerator = InvertedLumaGenerator
    module.TextGenerator = TextGenerator
    monkeypatch.setitem(sys.modules, "irgen_test_generators", module)
    entries = dict(registry.TEACHERS)
    entries["test-inverted"] = registry.TeacherEntry("test-inverted", "irgen",
                                                     "irgen_test_generators:InvertedLumaGenerator", "test")
    entries["test-text"] = registry.TeacherEntry("test-text", "irgen", "irgen_test_generators:TextGenerator", "test")
    entries["test-broken"] = registry.TeacherEntry("test-broken", "irgen", "no_such_module_xyz:Gen", "broken")
    monkeypatch.setattr(registry, "TEACHERS", entries)
    InvertedLumaGenerator.calls = []
    return entries


@pytest.fixture
def rgb_names(tmp_path, train_names):
    path = tmp_path / "names.txt"
    path.write_text("\n".join(train_names[:4]) + "\n")
    return path


def synth(args):
    return dispatch("teacher", ["synth-ir", *map(str, args)], "fusion teacher")


def test_synth_ir_writes_a_dataset_folder(fake_generators, roadscene, rgb_names, tmp_path, train_names):
    out = tmp_path / "synth"
    assert synth(["--generator", "test-inverted", "--weights", tmp_path, "--rgb", roadscene, "--names", rgb_names,
                  "--out", out, "--test-gain", "0.5", "--device", "cpu"]) == 0
    stems = train_names[:4]
    assert sorted(p.stem for p in (out / "ir").iterdir()) == sorted(stems)
    assert sorted(p.stem for p in (out / "vi").iterdir()) == sorted(stems)
    for stem in stems:
        vis = read_vis(roadscene / "vi" / f"{stem}.jpg")
        ir = read_ir(out / "ir" / f"{stem}.png")
        assert ir.shape == vis.shape[:2]
        # the generator's own option reached it: 0.5 * (1 - mean RGB), stored 8-bit
        np.testing.assert_allclose(ir, 0.5 * (1 - vis.mean(axis=2)), atol=1 / 255 + 1e-6)
        assert (out / "vi" / f"{stem}.jpg").read_bytes() == (roadscene / "vi" / f"{stem}.jpg").read_bytes()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["generator"] == "test-inverted" and manifest["written"] == 4
    # the synthetic folder is a dataset the rest of the toolkit reads directly
    from runtime.imageio import discover_pairs
    assert len(discover_pairs(data=out)) == 4


def test_synth_ir_shards_and_resume(fake_generators, roadscene, rgb_names, tmp_path):
    out = tmp_path / "synth"
    common = ["--generator", "test-inverted", "--weights", tmp_path, "--rgb", roadscene, "--names", rgb_names,
              "--out", out, "--device", "cpu"]
    assert synth(common + ["--shard", "1/2"]) == 0
    assert len(list((out / "ir").iterdir())) == 2 and (out / "manifest.1of2.json").exists()
    # seeds come from the position in the whole list, so shards reproduce the unsharded run
    assert InvertedLumaGenerator.calls == [1, 3]
    # without --resume, existing outputs are an error (exit 2), never silently overwritten
    assert synth(common) == 2
    InvertedLumaGenerator.calls = []
    assert synth(common + ["--resume"]) == 0
    assert InvertedLumaGenerator.calls == [0, 2]
    assert len(list((out / "ir").iterdir())) == 4
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_text_to_ir_generator_samples_count_images(fake_generators, tmp_path):
    out = tmp_path / "text"
    assert synth(["--generator", "test-text", "--weights", tmp_path, "--out", out, "--count", "3",
                  "--prompt", "a thermal image of a street", "--seed", "4", "--device", "cpu"]) == 0
    files = sorted((out / "ir").iterdir())
    assert [p.stem for p in files] == ["sample_00000", "sample_00001", "sample_00002"]
    assert [round(float(read_ir(p).mean()), 1) for p in files] == [0.4, 0.5, 0.6]
    assert not (out / "vi").exists()
    assert synth(["--generator", "test-text", "--weights", tmp_path, "--out", tmp_path / "x", "--device", "cpu"]) == 2


def test_user_errors_exit_2_with_a_sentence(fake_generators, tmp_path, capsys, roadscene):
    assert synth(["--generator", "test-inverted", "--weights", tmp_path, "--out", tmp_path / "o"]) == 2
    assert "--rgb" in capsys.readouterr().err
    assert synth(["--generator", "nope", "--rgb", roadscene, "--out", tmp_path / "o"]) == 2
    assert "unknown" in capsys.readouterr().err
    assert synth(["--generator", "test-broken", "--rgb", roadscene, "--out", tmp_path / "o"]) == 2
    assert "not available" in capsys.readouterr().err


def test_a_generator_that_cannot_import_does_not_break_the_others(fake_generators, capsys):
    with pytest.raises(SystemExit):
        dispatch("teacher", ["train-irgen", "--help"], "fusion teacher")
    text = capsys.readouterr().out
    assert "--generator" in text and "--self-check" in text  # tqd/decomp options are there
    assert "test-broken" in text  # listed as unavailable


def test_train_irgen_reaches_the_generator_with_resolved_options(fake_generators, tmp_path, monkeypatch):
    seen = {}

    def fake_train(cls, args):
        seen.update(vars(args))
        return 0

    monkeypatch.setattr(InvertedLumaGenerator, "train", classmethod(fake_train))
    assert dispatch("teacher", ["train-irgen", "--generator", "test-inverted", "--out", str(tmp_path),
                                "--set", "optim.lr=1e-3", "--set", "data.crop=64", "--base", "/models/x"],
                    "fusion teacher") == 0
    assert seen["overrides"] == ["optim.lr=1e-3", "data.crop=64"]
    assert seen["device"] in ("cpu", "cuda") and seen["base"] == "/models/x" and seen["resume"] is False
