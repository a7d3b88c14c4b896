"""diffusers-style persistence for the generators' networks: `config.json` (the constructor's config) beside
`model.safetensors`, with `save_pretrained(folder)` / `from_pretrained(folder)`. No pickles anywhere.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from runtime.config import config_from_dict, config_to_dict
from runtime.errors import FusionError
from runtime.imageio import atomic_path, write_json

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class ConfigModel(nn.Module):
    """An nn.Module built from one dataclass config; subclasses set `config_class` and take `config` in __init__."""

    config_class: ClassVar[type]

    def __init__(self, config: Any):
        super().__init__()
        self.config = config

    @classmethod
    def from_config(cls, config: Any | dict | None = None, **overrides) -> "ConfigModel":
        data = config_to_dict(config) if dataclasses.is_dataclass(config) else dict(config or {})
        data.update(overrides)
        return cls(config_from_dict(cls.config_class, data))

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write folder/config.json and folder/model.safetensors (each atomically)."""
        from safetensors.torch import save_file
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        with atomic_path(folder / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt", "class": type(self).__name__})
        write_json(folder / CONFIG_NAME, {"_class_name": type(self).__name__, **config_to_dict(self.config)})
        return folder

    @classmethod
    def read_config(cls, folder: str | os.PathLike) -> Any:
        folder = Path(folder)
        path = folder / CONFIG_NAME
        if not path.is_file() or not (folder / WEIGHTS_NAME).is_file():
            raise FusionError(f"{folder} is not a {cls.__name__} folder: it must hold {CONFIG_NAME} and "
                              f"{WEIGHTS_NAME} (what `fusion teacher train-irgen` writes)")
        data = json.loads(path.read_text(encoding="utf-8"))
        name = data.pop("_class_name", cls.__name__)
        if name != cls.__name__:
            raise FusionError(f"{folder} holds a {name}, not a {cls.__name__}; pass the matching --generator")
        return config_from_dict(cls.config_class, data)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | torch.device = "cpu") -> "ConfigModel":
        from safetensors.torch import load_file
        folder = Path(folder)
        config = cls.read_config(folder)
        # Pretrained-backbone paths only matter when training from scratch; the saved weights already hold them.
        if hasattr(config, "backbone_weights"):
            config = dataclasses.replace(config, backbone_weights=None)
        model = cls(config)
        state = load_file(str(folder / WEIGHTS_NAME))
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            problem = (f"missing {result.missing_keys[:3]}" if result.missing_keys
                       else f"unexpected {result.unexpected_keys[:3]}")
            raise FusionError(f"{folder / WEIGHTS_NAME} does not match its {CONFIG_NAME} ({problem}); the folder "
                              f"is damaged or mixes files of two models")
        return model.to(device).eval()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
