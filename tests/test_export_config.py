"""`fusion export`'s typed config: the command line's defaults are the config's, bad combinations fail naming the
option, and the YAML written beside an output reads back equal."""
from __future__ import annotations

import argparse

import pytest

from export.cli import configure
from export.config import ExportConfig, config_path
from runtime.config import load_config, save_config
from runtime.errors import FusionError


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure(parser)
    return parser.parse_args(list(argv))


def test_the_command_lines_defaults_are_the_configs():
    assert ExportConfig.from_args(parse()) == ExportConfig()


def test_flags_land_in_their_fields_and_the_namespace_is_not_written():
    args = parse("--format", "engine", "--precision", "int8", "--imgsz", "256x320", "--dla", "1", "--no-simplify",
                 "--calib-count", "16", "--test-count", "4", "--int8-mode", "qdq")
    before = dict(vars(args))
    config = ExportConfig.from_args(args)
    assert vars(args) == before
    assert (config.format, config.precision, config.imgsz_hw, config.dla, config.simplify) == \
        ("engine", "int8", (256, 320), 1, False)
    assert (config.calib_count, config.test_count, config.int8_mode) == (16, 4, "qdq")


@pytest.mark.parametrize("argv, message", [
    (("--format", "onnx", "--precision", "fp16"), "--format onnx is fp32"),
    (("--format", "onnx-int8", "--precision", "fp16"), "--format onnx-int8 is int8"),
    (("--batch", "0"), "--batch must be at least 1"),
    (("--check-count", "0"), "--check-count must be at least 1"),
    (("--imgsz", "big"), "--imgsz must look like HxW"),
])
def test_combinations_no_format_accepts_fail_naming_the_option(argv, message):
    with pytest.raises(FusionError, match=message):
        ExportConfig.from_args(parse(*argv))


@pytest.mark.parametrize("fmt, precision", [("onnx", "fp32"), ("onnx-int8", "int8"), ("engine", "fp16")])
def test_the_resolved_config_round_trips_through_the_yaml_beside_the_output(tmp_path, fmt, precision):
    out = tmp_path / "model.out"
    config = ExportConfig.from_args(parse("--format", fmt, "--dynamic", "--test-count", "3", "--psnr-tie", "0.5",
                                          "--max-metric-drop", "none"))
    resolved = config.resolved(out)
    assert (resolved.out, resolved.precision) == (str(out), precision)
    save_config(resolved, config_path(out))
    assert config_path(out) == tmp_path / "model.out.config.yaml"
    assert load_config(ExportConfig, config_path(out)) == resolved


def test_a_config_file_with_an_unknown_key_names_it(tmp_path):
    path = tmp_path / "export.yaml"
    path.write_text("format: onnx\ncalib_cout: 8\n")
    with pytest.raises(FusionError, match="calib_cout"):
        load_config(ExportConfig, path)


def test_an_output_inside_the_repository_is_recorded_relative_to_it():
    from export.pairs import REPO_ROOT
    resolved = ExportConfig().resolved(REPO_ROOT / "runtime" / "models" / "default" / "model.onnx")
    assert resolved.out == "runtime/models/default/model.onnx"


def test_a_config_file_sets_what_the_command_line_leaves_out(tmp_path):
    path = tmp_path / "export.yaml"
    path.write_text("format: onnx-int8\ncalib_count: 16\ncheck_count: 4\ndynamic: true\n")
    config = ExportConfig.from_args(parse("--config", str(path), "--check-count", "2"))
    assert (config.format, config.calib_count, config.check_count, config.dynamic) == ("onnx-int8", 16, 2, True)
    assert config.tolerance == ExportConfig().tolerance


def test_the_config_written_beside_an_output_replays_the_export(tmp_path):
    out = tmp_path / "model.int8.onnx"
    written = ExportConfig.from_args(parse("--format", "onnx-int8", "--imgsz", "64x96", "--calib-count", "8",
                                           "--no-simplify")).resolved(out)
    save_config(written, config_path(out))
    assert ExportConfig.from_args(parse("--config", str(config_path(out)))) == written


def test_a_missing_config_file_is_one_sentence(tmp_path):
    with pytest.raises(FusionError, match="config file not found"):
        ExportConfig.from_args(parse("--config", str(tmp_path / "nope.yaml")))
