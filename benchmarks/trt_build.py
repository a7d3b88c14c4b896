"""TensorRT engines for `fusion bench`, built on the machine that runs them (engines are not portable).

The build itself is the export package's (`export.tensorrt_build.build_engine`, what `fusion export --format engine`
runs), so the benchmark times exactly the engines users get: fp16 from the fp32 ONNX; INT8 implicit, with the entropy
calibrator over real *training* pairs. The optimisation profile spans MIN_HW..MAX_HW with its optimum at the
benchmarked resolution, so one engine also serves the native-size quality pairs. `jetson/build_engines.sh` uses the
same profile bounds with trtexec (see `trtexec_command`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

MIN_HW = (64, 64)
MAX_HW = (1088, 1920)


def _gpu_present() -> bool:
    return os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvhost-ctrl-gpu")


def unavailable_reason() -> Optional[str]:
    """Why no engine can be built here, or None."""
    if not _gpu_present():
        return "this machine has no NVIDIA GPU"
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the tensorrt Python package is not installed (pip install -e .[trt]; JetPack ships it)"
    try:
        import export.tensorrt_build  # noqa: F401
    except ImportError as exc:
        return f"the export package's TensorRT builder is not importable ({exc})"
    return None


def profile_for(opt_hw: tuple, vis_channels: int = 1) -> dict:
    from export.trtexec import dynamic_profile
    return dynamic_profile(MIN_HW, opt_hw, MAX_HW, vis_channels=vis_channels)


def trtexec_command(trtexec: str, onnx_path, engine_path, precision: str, opt_hw: tuple, vis_channels: int = 1,
                    calib_cache=None, dla_core: Optional[int] = None) -> list:
    """The trtexec argv building the same engine (the export package's rendering of the build)."""
    from export.trtexec import trtexec_argv
    argv = trtexec_argv(str(onnx_path), str(engine_path), precision, profile=profile_for(opt_hw, vis_channels),
                        calib_cache=str(calib_cache) if calib_cache else None, dla_core=dla_core)
    return [trtexec, *argv[1:]]


def build_engine(onnx_path, engine_path, precision: str, opt_hw: tuple, data=None, calib_count: int = 32,
                 vis_channels: int = 1) -> Path:
    """Build engine_path (fp16 or int8) from the fp32 ONNX and return it."""
    from export.tensorrt_build import build_engine as export_build_engine
    engine_path = Path(engine_path)
    calib_inputs, cache = None, None
    if precision == "int8":
        from benchmarks.latency import default_data_dir
        from export.pairs import load_inputs
        root = Path(data) if data else default_data_dir()
        calib_inputs = load_inputs(root, root / "train.txt", calib_count, tuple(opt_hw), vis_channels)
        cache = engine_path.with_name(engine_path.name + ".calib")
    export_build_engine(Path(onnx_path), engine_path, precision, profile=profile_for(tuple(opt_hw), vis_channels),
                        calib_inputs=calib_inputs, calib_cache=cache)
    return engine_path
