"""`ExportConfig`: every setting of `fusion export`, typed, built once from the command line and written beside the
output it made.

    cfg = ExportConfig.from_args(parser.parse_args(...))     # the verb: defaults <- --config YAML <- flags, checked
    cfg = load_config(ExportConfig, "m.onnx.config.yaml")     # the same config read back (runtime.config)

    fusion export --config m.onnx.config.yaml --check-count 2  # an export again, as written, one option changed

The field names are the command's option names (`--calib-count` is `calib_count`), and the command's defaults are
this class's defaults, so `fusion export --help` and a YAML config say the same thing. Each handler writes the
resolved config (the output path and the precision filled in) as `<output>.config.yaml`, the YAML every other stage
writes (`fusion distill train`'s `config.yaml`, `fusion run`'s `*.run_config.yaml`), beside the `<output>.json`
report; it is named after the whole output name so `model.onnx` and `model.engine` in one folder keep their own.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from runtime.errors import FusionError

FORMATS = ("onnx", "onnx-int8", "engine")
PRECISIONS = ("fp32", "fp16", "int8")
CALIB_METHODS = ("auto", "minmax", "entropy", "percentile")
QDQ_TARGETS = ("cpu", "tensorrt")
INT8_OPS = ("conv", "all")
INT8_MODES = ("calibrate", "qdq")


@dataclass(frozen=True)
class ExportConfig:
    """What `fusion export` builds and how it checks it; one field per option (see export/cli.py for the help)."""

    weights: str = "default"
    format: str = "onnx"
    precision: Optional[str] = None          # None: the format's own (onnx fp32, onnx-int8 int8, engine fp16)
    imgsz: str = "480x640"
    dynamic: bool = False
    batch: int = 1
    opset: int = 17
    out: Optional[str] = None                # None: beside the weights (export.common.default_out)
    simplify: bool = True
    # checks on real pairs
    data: Optional[str] = None
    check_names: Optional[str] = None
    check_count: int = 8
    tolerance: float = 1e-4
    # INT8 (onnx-int8, and engine --precision int8)
    calib: Optional[str] = None
    calib_names: Optional[str] = None
    calib_count: int = 64
    calib_method: str = "auto"
    psnr_tie: float = 0.3
    max_metric_drop: str = "VIF=0.02,Qabf=0.02"
    percentile: float = 99.999
    test_names: Optional[str] = None
    test_count: Optional[int] = None
    psnr_goal: float = 45.0
    qdq_target: str = "cpu"
    int8_ops: str = "conv"
    bench_runs: int = 30
    # TensorRT (engine)
    workspace: int = 1024
    dla: Optional[int] = None
    min_imgsz: str = "256x256"
    max_imgsz: str = "1088x1920"
    int8_mode: str = "calibrate"
    onnx: Optional[str] = None
    fp16_psnr: float = 40.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ExportConfig":
        """The config of a parsed `fusion export` command line, checked: the defaults, updated from `--config` (a
        YAML file) when given, then from every option given (an option left out is None in `args`)."""
        from runtime.config import config_from_dict, config_to_dict, load_config
        config_file = getattr(args, "config", None)
        values = config_to_dict(load_config(cls, config_file, sections=("export",)) if config_file else cls())
        values.update({name: getattr(args, name) for name in values if getattr(args, name, None) is not None})
        return config_from_dict(cls, values).check()

    def check(self) -> "ExportConfig":
        """FusionError naming the option for a combination no format accepts; returns self."""
        choices = {"format": FORMATS, "calib_method": CALIB_METHODS, "qdq_target": QDQ_TARGETS,
                   "int8_ops": INT8_OPS, "int8_mode": INT8_MODES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise FusionError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, "
                                  f"got '{getattr(self, name)}'")
        if self.precision not in (None,) + PRECISIONS:
            raise FusionError(f"--precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'")
        if self.format == "onnx" and self.precision not in (None, "fp32"):
            raise FusionError(f"--format onnx is fp32; for {self.precision} use --format onnx-int8 (int8) or "
                              f"--format engine")
        if self.format == "onnx-int8" and self.precision not in (None, "int8"):
            raise FusionError("--format onnx-int8 is int8; drop --precision or use --format engine")
        if self.batch < 1:
            raise FusionError(f"--batch must be at least 1, got {self.batch}")
        if self.check_count < 1:
            raise FusionError("--check-count must be at least 1: every export is checked on real pairs")
        self.imgsz_hw  # noqa: B018  (a malformed --imgsz fails here, before any work)
        return self

    @property
    def imgsz_hw(self) -> tuple[int, int]:
        """--imgsz as (H, W)."""
        from export.pairs import parse_imgsz
        return parse_imgsz(self.imgsz)

    @property
    def resolved_precision(self) -> str:
        """The precision the output has: --precision, else the format's own."""
        return self.precision or {"onnx": "fp32", "onnx-int8": "int8"}.get(self.format, "fp16")

    def resolved(self, out: Path) -> "ExportConfig":
        """This config as it was carried out: the output path (relative to the repository when inside it, as the
        reports record paths, so shipped models carry no build machine's paths) and the precision filled in."""
        from export.pairs import shown_path
        return dataclasses.replace(self, out=shown_path(out), precision=self.resolved_precision)


def config_path(out: Path) -> Path:
    """The resolved config beside an output: `<output>.config.yaml`."""
    return out.with_name(out.name + ".config.yaml")
