import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from runtime.config import config_hash, load_config, save_config
from runtime.errors import FusionError


@dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple = (0.9, 0.999)


@dataclass
class Example:
    name: str = "nano"
    steps: int = 10
    amp: bool = False
    optim: Optim = field(default_factory=Optim)


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 20\noptim:\n  lr: 0.01\n")
    cfg = load_config(Example, path, ["optim.lr=3e-4", "amp=true"])
    assert cfg.steps == 20 and cfg.optim.lr == pytest.approx(3e-4) and cfg.amp is True and cfg.name == "nano"
    save_config(cfg, tmp_path / "out" / "config.yaml")
    again = load_config(Example, tmp_path / "out" / "config.yaml")
    assert again == cfg and config_hash(again) == config_hash(cfg)


def test_bad_keys_and_types_are_named(tmp_path):
    with pytest.raises(FusionError, match="optim.lrr"):
        load_config(Example, None, ["optim.lrr=1"])
    with pytest.raises(FusionError, match="'steps' must be an integer"):
        load_config(Example, None, ["steps=abc"])
    with pytest.raises(FusionError, match="not found"):
        load_config(Example, tmp_path / "missing.yaml")


def _fusion(*args):
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_lists_verbs_and_exit_codes():
    top = _fusion("--help")
    assert top.returncode == 0
    for verb in ("teacher", "distill", "export", "run", "bench", "eval", "calibrate"):
        assert verb in top.stdout
    assert _fusion("nonsense").returncode == 2
    listing = _fusion("teacher", "list")
    assert listing.returncode == 0 and "em " in listing.stdout and "fusion" in listing.stdout


def test_parse_hw_sizes_keywords_and_errors():
    from runtime.config import parse_hw
    assert parse_hw("480x640") == (480, 640) and parse_hw("320") == (320, 320) and parse_hw((2, 3), minimum=1) == (2, 3)
    assert parse_hw(None) is None and parse_hw("Native", keywords=("native",)) is None
    with pytest.raises(FusionError, match="or 'native'"):
        parse_hw("wide", keywords=("native",))
    with pytest.raises(FusionError, match="at least 16 pixels"):
        parse_hw("8x640", minimum=16)
