"""Errors meant for people, and the one place that decides exit codes.

`FusionError` is a problem with the user's input or environment (a missing file, a size mismatch, a missing extra):
the `fusion` command prints its message as one line and exits with code 2. Anything else escaping a command is a
bug in this project and exits with code 1.
"""
from __future__ import annotations

import importlib
from types import ModuleType

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Which pip extra provides which importable module; used to name the extra in error messages.
EXTRA_OF_MODULE = {
    "torch": "train",
    "torchvision": "train",
    "safetensors": "train",
    "albumentations": "train",
    "kornia": "train",
    "lpips": "train",
    "thop": "train",
    "tensorboard": "train",
    "torch.utils.tensorboard": "train",
    "onnx": "export",
    "onnxslim": "export",
    "scipy": "train",
    "matplotlib": "train",
    "diffusers": "teacher",
    "transformers": "teacher",
    "peft": "teacher",
    "accelerate": "teacher",
    "tensorrt": "trt",
    "pycuda": "trt",
    "pycuda.driver": "trt",
}


class FusionError(Exception):
    """A user-facing error: one sentence saying what was wrong and what to do. Exit code 2."""

    exit_code = EXIT_USAGE


class MissingExtraError(FusionError):
    """An optional dependency is not installed."""


def require(module: str, purpose: str | None = None, extra: str | None = None) -> ModuleType:
    """Import `module` or raise a MissingExtraError naming the pip extra that provides it.

    >>> np = require("numpy")
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = extra or EXTRA_OF_MODULE.get(module) or EXTRA_OF_MODULE.get(module.split(".")[0], "train")
        what = purpose or f"this command"
        raise MissingExtraError(
            f"{what} needs '{module}', which is not installed ({exc}); install the '{extra}' extra: "
            f"pip install 'irvis-fusion[{extra}]'"
        ) from None
