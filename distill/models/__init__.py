"""The student registry (timm-style): one way in to every student architecture.

    from distill.models import create_student, list_students, save_student, load_student
    model = create_student("nano")                       # random weights
    model = create_student("nano", vis_channels=3)       # 3-channel mode: RGB in, RGB out
    save_student(model, "runs/x/best")                   # runs/x/best/config.json + model.safetensors
    model = load_student("default")                      # the shipped model in runtime/models/default/

Forward: model(ir (N, 1, H, W), vis (N, 1, H, W)) -> fused (N, 1, H, W), float32 in [0, 1], any H and W.
"""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Callable, Dict

from distill.models.student import BlockSpec, DualBranchFusionNet, StudentConfig

ARCHITECTURE = "DualBranchFusionNet"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

_VARIANTS: Dict[str, Callable[[], StudentConfig]] = {}
_SUMMARIES: Dict[str, str] = {}


def register_student(name: str, summary: str = ""):
    """Decorator registering a function that returns the StudentConfig of a named variant."""
    def wrap(fn: Callable[[], StudentConfig]) -> Callable[[], StudentConfig]:
        if name in _VARIANTS:
            raise ValueError(f"student '{name}' is registered twice")
        _VARIANTS[name] = fn
        _SUMMARIES[name] = summary or (fn.__doc__ or "").strip().splitlines()[0]
        return fn
    return wrap


def B(kernel, expanded, out, se, stride, act="hswish") -> BlockSpec:  # noqa: N802 - a table row, MobileNetV3 style
    return BlockSpec(kernel, expanded, out, se, stride, act)


@register_student("nano", "the shipped default: 0.08 M params, 0.38 GMACs at 640x480")
def _nano() -> StudentConfig:
    return StudentConfig(
        variant="nano", stem_channels=8,
        stages=[[B(3, 16, 12, False, 2, "relu")],
                [B(5, 36, 20, True, 2), B(3, 60, 20, True, 1)],
                [B(3, 60, 32, True, 2), B(3, 96, 32, True, 1)]],
        decoder_channels=[24, 16, 8], head_channels=8)


@register_student("small", "wider and deeper: 0.33 M params, 1.14 GMACs at 640x480")
def _small() -> StudentConfig:
    return StudentConfig(
        variant="small", stem_channels=16,
        stages=[[B(3, 32, 16, False, 2, "relu"), B(3, 48, 16, False, 1, "relu")],
                [B(5, 64, 32, True, 2), B(5, 96, 32, True, 1)],
                [B(3, 96, 64, True, 2), B(3, 192, 64, True, 1), B(3, 192, 64, True, 1)]],
        decoder_channels=[40, 24, 16], head_channels=12)


@register_student("nano2", "v2: nano's body at half resolution, gains per pyramid level; 0.08 M params, "
                           "0.27 GMACs at 640x480")
def _nano2() -> StudentConfig:
    # The body sees the sources pooled 2x (a quarter of the work; coefficients come out at 1/4 resolution); the head
    # predicts gains on the full-resolution sources and on two coarser pyramid levels, so fine detail keeps a gain of
    # its own (distill/models/student.py: compose). Keys and values of the cross-attention are not pooled: at 1/32 of
    # 640x480 there are 300 positions, and no pooling keeps the network's multiple at 32.
    return replace(_nano(), variant="nano2", input_scale=2, pyramid_levels=2, kv_pool=1)


@register_student("rule", "zero weights: the default's fixed rules alone (detail bands at full, 1/2, 1/4 resolution and "
                          "the teacher's coarse rule below them), no network; about half the default's time")
def _rule() -> StudentConfig:
    # The default's graph without its network: its band and coarse rules with the teacher's own gain (1.1) on every
    # band. On the training holdout it is within 0.15% of the trained default (docs/distill.md "Student v2", run H5).
    # Nothing to train: `make weights-rule` writes it.
    return replace(_nano2(), variant="rule", pyramid_levels=0, detail_bands=3, coarse_levels=2, coarse_gain=1.1,
                   network=False, fixed_band_gain=1.1)


@register_student("tiny-test", "a minimal student for unit tests (not for use)")
def _tiny_test() -> StudentConfig:
    return StudentConfig(
        variant="tiny-test", stem_channels=4,
        stages=[[B(3, 8, 8, False, 2, "relu")], [B(3, 16, 8, True, 2)]],
        decoder_channels=[8, 4], head_channels=4)


def list_students() -> list[str]:
    """Names of the registered student variants."""
    return list(_VARIANTS)


def describe_students() -> dict[str, str]:
    return dict(_SUMMARIES)


def student_config(variant: str, **overrides) -> StudentConfig:
    from runtime.errors import FusionError
    if variant not in _VARIANTS:
        raise FusionError(f"unknown student '{variant}'; choose one of: {', '.join(_VARIANTS)}")
    config = _VARIANTS[variant]()
    if overrides:
        unknown = sorted(set(overrides) - set(StudentConfig.__dataclass_fields__))
        if unknown:
            raise FusionError(f"unknown student option(s) {', '.join(unknown)}; "
                              f"known: {', '.join(StudentConfig.__dataclass_fields__)}")
        if "stages" in overrides:
            overrides["stages"] = StudentConfig.from_dict({"stages": overrides["stages"]}).stages
        config = replace(config, **overrides)
    return config


def create_student(variant: str = "nano", **overrides) -> DualBranchFusionNet:
    """A student with random weights. `overrides` replace fields of the variant's StudentConfig
    (e.g. vis_channels=3 for the 3-channel mode)."""
    return DualBranchFusionNet(student_config(variant, **overrides))


def default_model_dir() -> Path:
    """runtime/models/default, the shipped default student (config.json, model.safetensors, model.onnx)."""
    import runtime
    return Path(runtime.__file__).resolve().parent / "models" / "default"


def resolve_weights(path_or_name: str | os.PathLike) -> Path:
    """The folder holding config.json + model.safetensors for a path, a file inside it, "default", or the name of
    another student shipped in runtime/models/ (e.g. "nano2")."""
    from runtime.errors import FusionError
    if str(path_or_name) == "default":
        folder = default_model_dir()
        if not (folder / WEIGHTS_NAME).is_file():
            raise FusionError(f"the default student is not installed at {folder}; build it with `make weights` "
                              f"or pass --weights FOLDER")
        return folder
    path = Path(path_or_name)
    shipped = default_model_dir().parent / str(path_or_name)
    if not path.exists() and "/" not in str(path_or_name) and (shipped / WEIGHTS_NAME).is_file():
        path = shipped
    folder = path.parent if path.is_file() else path
    if not folder.is_dir():
        raise FusionError(f"student weights not found: {path} (give a folder with {CONFIG_NAME} and {WEIGHTS_NAME}, "
                          f"or 'default')")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise FusionError(f"{folder} has no {name}; a student folder holds {CONFIG_NAME} and {WEIGHTS_NAME} "
                              f"(written by save_student or `fusion distill train`)")
    return folder


def read_student_config(folder: str | os.PathLike) -> tuple[StudentConfig, dict]:
    """(StudentConfig, the whole config.json) of a student folder."""
    from runtime.errors import FusionError
    path = Path(folder) / CONFIG_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("architecture") != ARCHITECTURE:
            raise FusionError(f"{path} describes a '{data.get('architecture')}' model, not a student "
                              f"({ARCHITECTURE}); point --weights at a student folder")
        return StudentConfig.from_dict(data["config"]), data
    except FusionError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise FusionError(f"{path} is not a valid student config ({exc}); re-save the model with save_student") \
            from None


def save_student(model: DualBranchFusionNet, folder: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write folder/config.json and folder/model.safetensors (each atomically). Returns the folder."""
    from safetensors.torch import save_file

    from runtime.imageio import atomic_path, write_json
    model = getattr(model, "module", model)  # DDP / EMA wrappers
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"architecture": ARCHITECTURE, "variant": model.config.variant})
    write_json(folder / CONFIG_NAME, {"architecture": ARCHITECTURE, "format_version": FORMAT_VERSION,
                                      "variant": model.config.variant, "config": model.config.to_dict(),
                                      "io": {"inputs": ["ir", "vis"], "output": "fused", "range": [0.0, 1.0],
                                             "multiple": model.multiple},
                                      "metadata": metadata or {}})
    return folder


def check_state_dict(model, state: dict, source: str) -> None:
    """FusionError naming the first mismatching tensors when `state` does not fit `model` exactly."""
    from runtime.errors import FusionError
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} tensor(s) of another shape ({'; '.join(wrong[:3])})")
        if missing:
            parts.append(f"{len(missing)} missing ({', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])})")
        raise FusionError(f"the weights in {source} do not fit the '{model.config.variant}' student described by its "
                          f"config.json: {'; '.join(parts)}; save config.json and model.safetensors together "
                          f"with save_student")


def load_student(path_or_name: str | os.PathLike = "default", device: str = "cpu") -> DualBranchFusionNet:
    """A student from a folder written by save_student (or "default"), in eval mode on `device`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from runtime.errors import FusionError
    folder = resolve_weights(path_or_name)
    config, _ = read_student_config(folder)
    model = DualBranchFusionNet(config)
    try:
        state = load_file(str(folder / WEIGHTS_NAME), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise FusionError(f"cannot read {folder / WEIGHTS_NAME} ({exc}); the file is corrupt or not safetensors") \
            from None
    check_state_dict(model, state, str(folder / WEIGHTS_NAME))
    model.load_state_dict(state)
    return model.to(device).eval()


__all__ = ["create_student", "list_students", "describe_students", "register_student", "student_config",
           "save_student", "load_student", "resolve_weights", "read_student_config", "default_model_dir",
           "check_state_dict", "StudentConfig", "BlockSpec", "DualBranchFusionNet"]
