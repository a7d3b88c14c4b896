"""What every backend is (`Backend`) and the plain PyTorch one (`TorchBackend`), in a module of their own so the
specialised backends (runtime/backends/torch_fast.py) build on them without importing the package's factory."""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Optional

import numpy as np

from runtime.errors import require


class Backend(ABC):
    """A loaded model. `input_size` is (H, W) for fixed-size models, None when any size works."""

    name = "backend"
    input_size: Optional[tuple[int, int]] = None
    vis_channels: int = 1
    multiple: int = 1
    provider: str = ""
    model_path: str = ""

    def __call__(self, ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
        return self.infer(ir, vis)

    @abstractmethod
    def infer(self, ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
        """ir (N, 1, H, W), vis (N, C, H, W) float32 in [0, 1] -> fused (N, C_out, H, W) float32 in [0, 1]."""

    def close(self) -> None:
        """Release what the backend holds (GPU buffers, sessions)."""

    def label(self) -> str:
        """One line for logs: backend, provider, model file, input size."""
        size = f"{self.input_size[0]}x{self.input_size[1]}" if self.input_size else "any size"
        return f"{self.name} ({self.provider}) {self.model_path}, input {size}"

    def describe(self) -> dict:
        return {"backend": self.name, "provider": self.provider, "model": self.model_path,
                "input_size": list(self.input_size) if self.input_size else "dynamic",
                "vis_channels": self.vis_channels}


class TorchBackend(Backend):
    """The student in PyTorch (from a folder with config.json + model.safetensors). Imports torch and distill."""

    name = "torch"

    def __init__(self, path: str | os.PathLike, threads: int = 0, device: str = "auto"):
        torch = require("torch", "the torch backend", extra="train")
        from distill.models import load_student  # only here: the runtime never needs distill otherwise
        if threads:
            torch.set_num_threads(threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.torch = torch
        self.device = device
        self.model = load_student(str(path), device=device)
        self.model_path = str(path)
        self.provider = f"torch {device}"
        self.vis_channels = int(self.model.config.vis_channels)
        self.multiple = int(getattr(self.model, "multiple", 1))

    def infer(self, ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            out = self.model(torch.from_numpy(ir).to(self.device), torch.from_numpy(vis).to(self.device))
        return out.float().cpu().numpy()
