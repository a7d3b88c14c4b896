"""What every `fusion export` handler shares, owned here: the student it starts from, its thread budget, progress
lines, and the JSON report written beside every output.

`export/cli.py` (the verb and its arguments) and the format modules (`quantize.py`, `tensorrt_build.py`) import these;
none of them imports from another's private names, and none imports `cli.py` back.
Heavy imports (torch, distill) happen inside the functions so importing `export` stays light.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path


def load_student_weights(weights: str):
    """(model, folder) for a student folder or 'default' (runtime/models/default)."""
    from distill.models import load_student, resolve_weights
    folder = resolve_weights(weights)
    return load_student(folder), folder


def default_out(folder: Path, fmt: str, precision: str) -> Path:
    """Where an export goes without --out: beside the weights (model.onnx, model.int8.onnx, model.<precision>.engine)."""
    if fmt == "onnx":
        return folder / "model.onnx"
    if fmt == "onnx-int8":
        return folder / "model.int8.onnx"
    return folder / f"model.{precision}.engine"


def settings_path(out: Path) -> Path:
    """The report beside an output: `<output>.json`."""
    return out.with_name(out.name + ".json")


def jsonable(obj):
    """`obj` with what JSON cannot hold made readable: paths as strings, inf/nan as "inf"/"nan", keys as strings."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)  # JSON has no inf: "inf" reads back unambiguously
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_report(out: Path, report: dict, config=None) -> Path:
    """Write `report` atomically to `<out>.json`, readable by all like the output itself; with `config` (an
    export.config.ExportConfig) write it first, resolved, to `<out>.config.yaml` and name that file in the report."""
    from export.onnx_export import make_readable
    from runtime.imageio import write_json
    if config is not None:
        from export.config import config_path
        from runtime.config import save_config
        make_readable(save_config(config.resolved(out), config_path(out)))
        report = {**report, "config": config_path(out).name}
    path = write_json(settings_path(out), jsonable(report))
    make_readable(path)
    return path


def set_threads() -> None:
    """At most two torch threads: the exports run beside other work on small machines."""
    import torch
    torch.set_num_threads(min(2, torch.get_num_threads()))


def echo(message: str) -> None:
    """A progress line on stderr; stdout carries only the command's result (the output path)."""
    print(message, file=sys.stderr, flush=True)
