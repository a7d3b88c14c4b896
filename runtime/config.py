"""Typed configs: dataclasses that load from YAML, take `key.sub=value` overrides, and are written beside outputs.

    cfg = load_config(TrainConfig, "configs/distill/default.yaml", ["optim.lr=3e-4", "data.augment.crop=256"])
    cfg = load_config(TrainConfig, "default", sections=("distill",))     # the same file, by its packaged name
    save_config(cfg, run_dir / "config.yaml")

The configs the project ships live in configs/<stage>/NAME.yaml of a checkout; a wheel carries the same files as
runtime/configs/<stage>/NAME.yaml (setup.py). `--config` takes a file, or a packaged NAME looked up in the stage(s)
the command reads (`fusion distill train --config default`), or STAGE/NAME for another stage's config
(`--config irgen/student_cpu`), so an installed wheel can train and run without a checkout.

Unknown keys and values of the wrong type are FusionErrors naming the key, so a typo in a config fails at once
instead of being ignored for an hour of training.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import typing
from pathlib import Path
from typing import Any, Iterable, Sequence, Type, TypeVar

import yaml

from runtime.errors import FusionError

T = TypeVar("T")


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except FusionError as exc:
                errors.append(str(exc))
        raise FusionError(errors[0] if errors else f"config key '{key}': bad value {value!r}")
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise FusionError(f"config key '{key}' must be a mapping, got {value!r}")
        return _from_dict(annotation, value, prefix=f"{key}.")
    if origin in (list, tuple, typing.Sequence) or annotation in (list, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, (list, tuple)):
            raise FusionError(f"config key '{key}' must be a list, got {value!r}")
        item_type = args[0] if args else Any
        items = [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or annotation is tuple else items
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise FusionError(f"config key '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise FusionError(f"config key '{key}' must be true or false, got {value!r}")
    if annotation in (int, float):
        if isinstance(value, bool):
            raise FusionError(f"config key '{key}' must be a number, got {value!r}")
        try:
            number = float(value) if annotation is float else int(value)
        except (TypeError, ValueError):
            raise FusionError(f"config key '{key}' must be {'a number' if annotation is float else 'an integer'}, "
                              f"got {value!r}") from None
        if annotation is int and isinstance(value, float) and not value.is_integer():
            raise FusionError(f"config key '{key}' must be an integer, got {value!r}")
        return number
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise FusionError(f"config key '{key}' must be text, got {value!r}")
        return str(value)
    return value


def _from_dict(cls: Type[T], data: dict, prefix: str = "") -> T:
    types = _field_types(cls)
    unknown = sorted(set(data) - set(types))
    if unknown:
        raise FusionError(f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
                          f"known keys under '{prefix or 'top level'}': {', '.join(sorted(types))}")
    kwargs = {name: _coerce(value, types[name], prefix + name) for name, value in data.items()}
    return cls(**kwargs)


def config_from_dict(cls: Type[T], data: dict | None) -> T:
    """Build the dataclass `cls` from a (nested) dict, checking keys and types."""
    return _from_dict(cls, dict(data or {}))


def config_to_dict(cfg: Any) -> dict:
    """A dataclass config as plain nested dicts/lists (tuples become lists, Paths become strings)."""
    def plain(value):
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        return value
    return plain(dataclasses.asdict(cfg))


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """Apply `a.b=value` overrides (values parsed as YAML) to a nested dict, in place; returns it."""
    for item in overrides:
        if "=" not in item:
            raise FusionError(f"override '{item}' must look like key=value (for example optim.lr=3e-4)")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise FusionError(f"override '{item}': '{part}' is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


# Where packaged configs are found: inside the installed package (a wheel), then configs/ beside the packages (a
# checkout, or an editable install of one).
PACKAGED_CONFIG_ROOTS = (Path(__file__).resolve().parent / "configs", Path(__file__).resolve().parents[1] / "configs")
CONFIG_SUFFIXES = (".yaml", ".yml")


def packaged_configs(section: str) -> dict[str, Path]:
    """{NAME: file} of the configs shipped for one stage (configs/<section>/NAME.yaml), first root wins."""
    found: dict[str, Path] = {}
    for root in PACKAGED_CONFIG_ROOTS:
        folder = root / section
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.suffix in CONFIG_SUFFIXES and path.is_file():
                    found.setdefault(path.stem, path)
    return found


def resolve_config(value: str | os.PathLike, sections: Sequence[str] = ()) -> Path:
    """The YAML file `--config value` means: an existing file; else a packaged config, named as NAME (looked up in
    `sections`, in order), STAGE/NAME, or the checkout path configs/STAGE/NAME.yaml. Raises a FusionError that lists
    the packaged names when nothing matches."""
    path = Path(value)
    if path.is_file():
        return path
    if not path.is_absolute():
        parts = list(path.parts)
        if len(parts) == 3 and parts[0] == "configs":
            parts = parts[1:]
        name = parts[-1][:-len(path.suffix)] if path.suffix in CONFIG_SUFFIXES else parts[-1]
        candidates = [parts[0]] if len(parts) == 2 else list(sections) if len(parts) == 1 else []
        for section in candidates:
            match = packaged_configs(section).get(name)
            if match is not None:
                return match
    known = [name for section in sections for name in packaged_configs(section)]
    hint = (f" (packaged {' and '.join(sections)} configs: {', '.join(sorted(set(known)))}; name one, as in --config "
            f"{known[0]}, or another stage's as STAGE/NAME)") if known else ""
    raise FusionError(f"config file not found: {value}{hint}")


def load_config(cls: Type[T], path: str | os.PathLike | None = None, overrides: Iterable[str] = (),
                sections: Sequence[str] = ()) -> T:
    """Defaults of `cls`, updated from a YAML file (if given: a path or a packaged name, see `resolve_config`, whose
    bare names are looked up in `sections`), then from `overrides`."""
    data = config_to_dict(cls())
    file_data: dict = {}
    if path is not None:
        path = resolve_config(path, sections)
        try:
            file_data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise FusionError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(file_data, dict):
            raise FusionError(f"config file {path} must hold a mapping of keys to values")
    merged = _deep_update(data, file_data)
    apply_overrides(merged, overrides)
    return config_from_dict(cls, merged)


def _deep_update(base: dict, update: dict) -> dict:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
    return base


def config_yaml(cfg: Any) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def config_hash(cfg: Any) -> str:
    """Short stable hash of a config (used in model metadata to tie weights to the config that made them)."""
    return hashlib.sha256(json.dumps(config_to_dict(cfg), sort_keys=True).encode()).hexdigest()[:16]


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML, atomically."""
    from runtime.imageio import write_text
    return write_text(path, config_yaml(cfg))


def parse_hw(text, *, minimum: int = 8, keywords: Iterable[str] = ()) -> tuple[int, int] | None:
    """An image size as the CLIs take it: '480x640' (H x W), '640' (square), (H, W), or None -> None; any of
    `keywords` (such as 'native') -> None too. Raises FusionError with the expected form otherwise."""
    if text is None:
        return None
    keywords = tuple(keywords)
    if isinstance(text, (tuple, list)):
        values = [int(v) for v in text]
    else:
        lowered = str(text).strip().lower()
        if lowered in keywords:
            return None
        hint = " or 'native'" if "native" in keywords else ""
        try:
            values = [int(p) for p in lowered.replace(",", "x").split("x") if p.strip()]
        except ValueError:
            raise FusionError(f"--imgsz must look like HxW (for example 480x640){hint}, got '{text}'") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < minimum:
        raise FusionError(f"--imgsz must be HxW with both sides at least {minimum} pixels, got '{text}'")
    return values[0], values[1]
