"""The `trtexec` command line equivalent to an engine build, because Jetson users build engines on the device.

    argv = trtexec_argv(onnx="model.engine.onnx", engine="model.engine", precision="fp16", workspace_mib=1024,
                        profile=dynamic_profile((256, 256), (480, 640), (1088, 1920), max_batch=1))
    print(format_command(argv))
    # trtexec --onnx=model.engine.onnx --saveEngine=model.engine --fp16 --memPoolSize=workspace:1024M
    #         --minShapes=ir:1x1x256x256,vis:1x1x256x256 --optShapes=... --maxShapes=...

Flags (TensorRT 8.5+ trtexec): --onnx, --saveEngine, --fp16, --int8 (with --fp16 so layers without an INT8 kernel
fall back to fp16, not fp32), --calib=<cache> (implicit INT8 from the calibration cache the Python build wrote),
--minShapes/--optShapes/--maxShapes (name:NxCxHxW, comma-separated), --memPoolSize=workspace:<N>M,
--useDLACore=<core> with --allowGPUFallback.
"""
from __future__ import annotations

import shlex
from typing import Mapping, Optional, Sequence

from runtime.errors import FusionError

Shape = Sequence[int]
Profile = Mapping[str, Sequence[Shape]]   # input name -> (min, opt, max)


def dynamic_profile(min_hw: Sequence[int], opt_hw: Sequence[int], max_hw: Sequence[int], max_batch: int = 1,
                    vis_channels: int = 1, opt_batch: int = 1) -> dict[str, tuple[tuple[int, ...], ...]]:
    """Optimisation profile shapes for the two inputs: batch 1..max_batch, H and W from min_hw to max_hw."""
    for label, hw in (("--min-imgsz", min_hw), ("--imgsz", opt_hw), ("--max-imgsz", max_hw)):
        if len(hw) != 2 or min(hw) < 1:
            raise FusionError(f"{label} must be HxW with positive sides, got {hw}")
    if not (min_hw[0] <= opt_hw[0] <= max_hw[0] and min_hw[1] <= opt_hw[1] <= max_hw[1]):
        raise FusionError(f"the optimisation profile needs --min-imgsz <= --imgsz <= --max-imgsz on both sides, got "
                          f"{min_hw[0]}x{min_hw[1]}, {opt_hw[0]}x{opt_hw[1]}, {max_hw[0]}x{max_hw[1]}")
    if max_batch < 1 or not 1 <= opt_batch <= max_batch:
        raise FusionError(f"batch sizes must satisfy 1 <= opt <= max, got opt {opt_batch}, max {max_batch}")
    profile = {}
    for name, channels in (("ir", 1), ("vis", vis_channels)):
        profile[name] = ((1, channels, *min_hw), (opt_batch, channels, *opt_hw), (max_batch, channels, *max_hw))
    return {k: tuple(tuple(int(d) for d in s) for s in v) for k, v in profile.items()}


def shape_spec(profile: Profile, which: int) -> str:
    """`ir:1x1x480x640,vis:1x1x480x640` for which = 0 (min), 1 (opt) or 2 (max)."""
    return ",".join(f"{name}:{'x'.join(str(int(d)) for d in shapes[which])}" for name, shapes in profile.items())


def trtexec_argv(onnx: str, engine: str, precision: str = "fp16", workspace_mib: Optional[int] = None,
                 profile: Optional[Profile] = None, calib_cache: Optional[str] = None,
                 dla_core: Optional[int] = None, allow_gpu_fallback: bool = True,
                 extra: Sequence[str] = ()) -> list[str]:
    """The trtexec argv that builds the same engine as the Python API build with these settings."""
    if precision not in ("fp32", "fp16", "int8"):
        raise FusionError(f"unknown precision '{precision}'; choose fp32, fp16 or int8")
    if dla_core is not None and precision == "fp32":
        raise FusionError("DLA runs fp16 or int8 only; pass --precision fp16 or int8 with --dla")
    if calib_cache and precision != "int8":
        raise FusionError("a calibration cache only applies to --precision int8")
    argv = ["trtexec", f"--onnx={onnx}", f"--saveEngine={engine}"]
    if precision in ("fp16", "int8"):
        argv.append("--fp16")
    if precision == "int8":
        argv.append("--int8")
        if calib_cache:
            argv.append(f"--calib={calib_cache}")
    if workspace_mib is not None:
        if workspace_mib < 1:
            raise FusionError(f"--workspace must be at least 1 MiB, got {workspace_mib}")
        argv.append(f"--memPoolSize=workspace:{int(workspace_mib)}M")
    if profile:
        argv += [f"--minShapes={shape_spec(profile, 0)}", f"--optShapes={shape_spec(profile, 1)}",
                 f"--maxShapes={shape_spec(profile, 2)}"]
    if dla_core is not None:
        if dla_core < 0:
            raise FusionError(f"--dla must be a DLA core number (0 or 1), got {dla_core}")
        argv.append(f"--useDLACore={int(dla_core)}")
        if allow_gpu_fallback:
            argv.append("--allowGPUFallback")
    argv += list(extra)
    return argv


def format_command(argv: Sequence[str]) -> str:
    """One shell-safe line."""
    return shlex.join(list(argv))


def script_text(argv: Sequence[str]) -> str:
    """A small shell script that rebuilds the engine beside itself (paths in `argv` relative to its folder)."""
    return ("#!/bin/sh\n"
            "# Rebuild this engine on the device that will run it (engines are tied to the GPU and TensorRT version).\n"
            "# trtexec ships with TensorRT: /usr/src/tensorrt/bin/trtexec on JetPack.\n"
            "set -e\n"
            "cd \"$(dirname \"$0\")\"\n"
            "TRTEXEC=${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}\n"
            f"\"$TRTEXEC\" {format_command(list(argv)[1:])}\n")
