"""irvis-fusion runtime: live IR + VIS fusion on the edge (numpy, OpenCV, ONNX Runtime; torch only on request).

    from runtime import FusionPipeline
    FusionPipeline(ir="cam0", vis="cam1", outputs=["fused.mp4"]).run()

Names are imported lazily so `import runtime` (and `fusion --help`) stays light.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "FusionPipeline": "runtime.pipeline",
    "RunConfig": "runtime.pipeline",
    "open_source": "runtime.sources",
    "open_sink": "runtime.sinks",
    "create_backend": "runtime.backends",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'runtime' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
