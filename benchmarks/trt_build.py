"""TensorRT engines for `fusion bench`, built on the machine that runs them (engines are not portable).

fp16: the fp32 ONNX with the FP16 builder flag. int8: implicit INT8 with an entropy calibrator over real training
pairs (fp16 allowed as fallback), the same recipe as `jetson/build_engines.sh`. The optimisation profile spans
64x64 to 1088x1920 with its optimum at the benchmarked resolution, so the same engine also serves the native-size
quality pairs. Uses `trtexec` when it is on PATH (JetPack ships it in /usr/src/tensorrt/bin) for fp16, otherwise the
TensorRT Python API.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional

MIN_HW = (64, 64)
MAX_HW = (1088, 1920)
TRTEXEC_PATHS = ("/usr/src/tensorrt/bin/trtexec", "/usr/local/tensorrt/bin/trtexec")


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
    return None


def find_trtexec() -> Optional[str]:
    found = shutil.which("trtexec")
    if found:
        return found
    return next((p for p in TRTEXEC_PATHS if os.access(p, os.X_OK)), None)


def shape_arg(name_channels: dict, hw: tuple, batch: int = 1) -> str:
    """'ir:1x1x480x640,vis:1x1x480x640' for trtexec's --minShapes/--optShapes/--maxShapes."""
    return ",".join(f"{name}:{batch}x{c}x{hw[0]}x{hw[1]}" for name, c in name_channels.items())


def trtexec_command(trtexec: str, onnx_path, engine_path, precision: str, opt_hw: tuple, vis_channels: int = 1,
                    calib_cache=None, dla_core: Optional[int] = None) -> list:
    """The trtexec command line for one engine (also what jetson/build_engines.sh runs)."""
    channels = {"ir": 1, "vis": vis_channels}
    cmd = [trtexec, f"--onnx={onnx_path}", f"--saveEngine={engine_path}",
           f"--minShapes={shape_arg(channels, MIN_HW)}", f"--optShapes={shape_arg(channels, opt_hw)}",
           f"--maxShapes={shape_arg(channels, MAX_HW)}", "--skipInference"]
    if precision in ("fp16", "int8"):
        cmd.append("--fp16")
    if precision == "int8":
        cmd.append("--int8")
        if calib_cache:
            cmd.append(f"--calib={calib_cache}")
    if dla_core is not None:
        cmd += [f"--useDLACore={dla_core}", "--allowGPUFallback"]
    return cmd


def build_engine(onnx_path, engine_path, precision: str, opt_hw: tuple, data=None, calib_count: int = 32,
                 vis_channels: int = 1) -> Path:
    """Build and return engine_path. INT8 calibrates on training pairs (never test pairs)."""
    engine_path = Path(engine_path)
    trtexec = find_trtexec()
    if trtexec and precision == "fp16":
        cmd = trtexec_command(trtexec, onnx_path, engine_path, precision, opt_hw, vis_channels)
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not engine_path.is_file():
            raise RuntimeError(f"trtexec failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
        return engine_path
    return _build_with_python(onnx_path, engine_path, precision, opt_hw, data, calib_count, vis_channels)


def _build_with_python(onnx_path, engine_path, precision, opt_hw, data, calib_count, vis_channels) -> Path:
    import tensorrt as trt
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {parser.get_error(0)}")
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name, channels in (("ir", 1), ("vis", vis_channels)):
        profile.set_shape(name, (1, channels, *MIN_HW), (1, channels, *opt_hw), (1, channels, *MAX_HW))
    config.add_optimization_profile(profile)
    config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _calibrator(trt, data, calib_count, opt_hw, vis_channels,
                                             Path(engine_path).with_suffix(".calib"))
        config.set_calibration_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT returned no engine (see the TensorRT log above)")
    Path(engine_path).write_bytes(bytes(serialized))
    return Path(engine_path)


def _calibrator(trt, data, count, hw, vis_channels, cache_path):
    """An entropy calibrator over `count` training pairs at hw, feeding device buffers through torch."""
    import numpy as np
    import torch

    from benchmarks.latency import default_data_dir
    from export.pairs import load_inputs
    root = Path(data) if data else default_data_dir()
    inputs = load_inputs(root, root / "train.txt", count, hw, vis_channels)

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self.items = iter(inputs)
            self.buffers = {}

        def get_batch_size(self):
            return 1

        def get_batch(self, names):
            item = next(self.items, None)
            if item is None:
                return None
            feeds = item.feeds()
            self.buffers = {n: torch.from_numpy(np.ascontiguousarray(feeds[n])).cuda() for n in names}
            return [int(self.buffers[n].data_ptr()) for n in names]

        def read_calibration_cache(self):
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache):
            cache_path.write_bytes(bytes(cache))

    return EntropyCalibrator()
