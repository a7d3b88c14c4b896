"""TensorRT engines from the exported ONNX, through the TensorRT Python API, each checked against fp32 ONNX Runtime.

    fusion export --weights default --format engine --precision fp16 --dynamic        # model.engine (+ .json, ...)
    fusion export --weights default --format engine --precision int8                  # entropy calibration
    fusion export --weights default --format engine --precision int8 --int8-mode qdq  # from a QDQ ONNX

Files beside the engine `E` (default: model.engine in the weights folder, where the runtime looks):
- `E.onnx`            the ONNX the engine was built from (fp32, or QDQ INT8 with --int8-mode qdq)
- `E.calib`           the INT8 calibration cache (implicit INT8): trtexec --calib reuses it on the device
- `E.trtexec.sh`      the equivalent trtexec build, runnable on a Jetson beside these files
- `E.json`            settings, `built_with` (TensorRT version and GPU, checked by the runner), parity, timing

The precision checks run the engine through the runtime's runner (the code the runtime uses) on real pairs and
compare with fp32 ONNX Runtime: fp16 fails below --fp16-psnr (default 40 dB), fp32 above 1e-3 max abs; INT8 is
reported. Without tensorrt or without a GPU the command says, in one sentence, what to install or where to run.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from runtime.errors import FusionError, MissingExtraError

FP32_ENGINE_TOLERANCE = 1e-3

NO_GPU = ("no CUDA GPU is visible, and TensorRT builds an engine for the GPU it runs on: run this command on the "
          "Jetson or GPU machine that will use the engine (or copy model.onnx there and run the trtexec line printed "
          "by a GPU build, see docs/export.md)")


def import_tensorrt():
    from runtime.backends.tensorrt_engine import import_tensorrt as _import
    try:
        return _import()
    except MissingExtraError:
        raise MissingExtraError("building TensorRT engines needs the 'tensorrt' Python package, which is not "
                                "installed: on a Jetson it comes with JetPack (sudo apt install python3-libnvinfer), "
                                "on a desktop GPU pip install 'irvis-fusion[trt]'; then run this command on the "
                                "machine that will run the engine") from None


def require_gpu(device: int = 0):
    """The CUDA helper for `device`, or a FusionError saying where to run."""
    from runtime.backends.tensorrt_engine import CudaError, open_cuda
    try:
        return open_cuda(device)
    except CudaError:
        raise FusionError(NO_GPU) from None


def engine_files(engine: Path) -> dict[str, Path]:
    return {suffix: engine.with_name(engine.name + suffix) for suffix in (".onnx", ".calib", ".trtexec.sh", ".json")}


# ------------------------------------------------------------------------------------------------------ calibrator
def make_entropy_calibrator(trt, cuda, inputs: Sequence, cache_path: Path):
    """An IInt8EntropyCalibrator2 feeding real pairs (batch 1, at the calibration shape) and keeping its cache.

    A cache present at `cache_path` is used as it is (TensorRT then skips calibration), so a rebuild, or trtexec
    with --calib, reproduces the same INT8 scales.
    """
    from export.onnx_export import make_readable
    from runtime.imageio import atomic_path

    class PairEntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.items = list(inputs)
            self.index = 0
            self.stream = cuda.stream()
            first = self.items[0]
            self.device = {name: cuda.malloc(array.nbytes) for name, array in first.feeds().items()}

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names):
            if self.index >= len(self.items):
                return None
            feeds = self.items[self.index].feeds()
            self.index += 1
            for name in names:
                cuda.copy_to_device(self.device[name], np.ascontiguousarray(feeds[name], dtype=np.float32),
                                    self.stream)
            cuda.synchronize(self.stream)
            if (self.index % 8) == 0 or self.index == len(self.items):
                print(f"calibrating: {self.index}/{len(self.items)} pairs", file=sys.stderr, flush=True)
            return [int(self.device[name]) for name in names]

        def read_calibration_cache(self):
            if cache_path.is_file():
                return cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache) -> None:
            with atomic_path(cache_path) as tmp:
                tmp.write_bytes(bytes(cache))
                make_readable(tmp)

        def release(self) -> None:
            for pointer in self.device.values():
                cuda.free(pointer)
            self.device = {}

    return PairEntropyCalibrator()


# ----------------------------------------------------------------------------------------------------------- build
def build_engine(onnx_path: Path, engine_path: Path, precision: str = "fp16", workspace_mib: int = 1024,
                 profile: Optional[dict] = None, dla_core: Optional[int] = None, calib_inputs=None,
                 calib_cache: Optional[Path] = None, qdq: bool = False, cuda=None) -> dict:
    """Build and write (atomically) a serialised engine. Returns what was built (seconds, builder settings).

    profile: {input: (min, opt, max)} for a dynamic ONNX; None for a static one.
    calib_inputs + calib_cache: implicit INT8 with the entropy calibrator (calibration shape = the profile's opt
    shape, or the static shape). qdq: the ONNX carries Q/DQ nodes (explicit INT8), no calibrator.
    """
    trt = import_tensorrt()
    from export.onnx_export import make_readable
    from runtime.imageio import atomic_path
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10 and hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise FusionError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {errors[:400]} (re-export with "
                          f"another --opset, or report it)")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # a true fp32 reference, not TF32 convolutions
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    calibrator = None
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        if not qdq:
            if not hasattr(trt, "IInt8EntropyCalibrator2"):
                raise FusionError(f"TensorRT {trt.__version__} has no implicit INT8 calibration; build from a QDQ "
                                  f"model with --int8-mode qdq")
            if not calib_inputs:
                raise FusionError("implicit INT8 needs calibration pairs; raise --calib-count")
            cuda = cuda or require_gpu()
            calibrator = make_entropy_calibrator(trt, cuda, calib_inputs, calib_cache)
            config.int8_calibrator = calibrator
    if profile:
        opt_profile = builder.create_optimization_profile()
        for name, (low, opt, high) in profile.items():
            opt_profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(opt_profile)
        if calibrator is not None:
            calib_shape = calib_inputs[0].feeds()
            calib_profile = builder.create_optimization_profile()
            for name in profile:
                shape = tuple(calib_shape[name].shape)
                calib_profile.set_shape(name, shape, shape, shape)
            config.set_calibration_profile(calib_profile)
    if dla_core is not None:
        available = int(getattr(builder, "num_DLA_cores", 0))
        if dla_core >= available:
            raise FusionError(f"--dla {dla_core}: this device has {available} DLA core(s) (Xavier and Orin have "
                              f"DLA; desktop GPUs have none); drop --dla")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(dla_core)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if calibrator is not None:
        calibrator.release()
    if serialized is None:
        raise FusionError(f"TensorRT could not build an engine from {onnx_path} (see the TensorRT messages above); "
                          f"try a larger --workspace, another precision, or no --dla")
    with atomic_path(engine_path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(memoryview(serialized))
        make_readable(tmp)
    return {"build_seconds": round(seconds, 1), "tensorrt": trt.__version__, "precision": precision,
            "workspace_mib": workspace_mib, "dla_core": dla_core, "profile": profile, "qdq": qdq,
            "calibration_cache": str(calib_cache) if calibrator is not None or (calib_cache and calib_cache.is_file())
            else None}


# ----------------------------------------------------------------------------------------------- checks and timing
def engine_outputs(engine_path: Path, inputs) -> list[np.ndarray]:
    """Outputs of a freshly built engine (its record beside it may still be the previous build's, so unchecked)."""
    from runtime.backends.tensorrt_engine import TensorRTEngine
    with TensorRTEngine(engine_path, check_metadata=False) as engine:
        return [engine.infer(item.ir, item.vis) for item in inputs]


def engine_latency(engine_path: Path, feeds: dict, runs: int = 100, warmup: int = 10) -> dict:
    """Median and p90 wall time of `infer` (copies in and out included), in ms, timed and summarised by
    runtime.timing like every other latency the project reports."""
    from runtime.backends.tensorrt_engine import TensorRTEngine
    from runtime.timing import time_callable
    with TensorRTEngine(engine_path, check_metadata=False) as engine:
        stats = time_callable(lambda: engine.infer(feeds["ir"], feeds["vis"]), runs=runs, warmup=warmup)
    return {"runs": stats.runs, "median_ms": stats.p50_ms, "p90_ms": stats.p90_ms,
            "input_shape": list(feeds["ir"].shape)}


def check_engine(engine_path: Path, fp32_onnx: Path, inputs, precision: str, fp16_psnr: float = 40.0) -> dict:
    """The engine's output against fp32 ONNX Runtime on real pairs; FusionError for fp32/fp16 outside tolerance."""
    from export.onnx_export import ParityError, compare_outputs
    from export.quantize import run_model
    reference = run_model(fp32_onnx, inputs)
    result = compare_outputs(reference, engine_outputs(engine_path, inputs), [i.name for i in inputs])
    if precision == "fp32":
        result["tolerance"] = FP32_ENGINE_TOLERANCE
        result["passed"] = bool(result["max_abs"] <= FP32_ENGINE_TOLERANCE)
    elif precision == "fp16":
        result["psnr_floor_db"] = fp16_psnr
        result["passed"] = bool(result["psnr_db"] >= fp16_psnr)
    else:
        result["passed"] = True  # reported, not enforced: INT8 quality is a trade-off the report shows
    if not result["passed"]:
        raise ParityError(f"the {precision} engine differs from fp32 ONNX Runtime on {result['pairs']} real pairs: "
                          f"PSNR {result['psnr_db']:.1f} dB, max abs {result['max_abs']:.3g} (worst pair "
                          f"{result['worst_pair']}); the engine was kept at {engine_path} for inspection, but do not "
                          f"deploy it (try --precision fp32, or report it)")
    return result


# ------------------------------------------------------------------------------------------------------------- CLI
def engine_command(config) -> int:
    """`fusion export --format engine` (config: export.config.ExportConfig); the resolved config and the report are
    written beside the engine."""
    from export.common import echo, load_student_weights, set_threads, write_report
    from export.onnx_export import export_onnx, summarize_parity, weights_metadata
    from export.pairs import default_data_dir, load_inputs, parse_imgsz, shown_path, split_file
    from export.trtexec import dynamic_profile, format_command, script_text, trtexec_argv
    from runtime.backends.tensorrt_engine import current_environment
    from runtime.imageio import write_text

    precision = config.resolved_precision
    if config.dla is not None and precision == "fp32":
        raise FusionError("DLA runs fp16 or int8 only; pass --precision fp16 or int8 with --dla")
    import_tensorrt()
    cuda = require_gpu()
    environment = current_environment(cuda=cuda)
    set_threads()

    model, folder = load_student_weights(config.weights)
    channels = model.config.vis_channels
    out = Path(config.out) if config.out else folder / "model.engine"
    files = engine_files(out)
    imgsz = config.imgsz_hw
    data = Path(config.data) if config.data else default_data_dir()
    profile = None
    if config.dynamic:
        profile = dynamic_profile(parse_imgsz(config.min_imgsz), imgsz, parse_imgsz(config.max_imgsz),
                                  max_batch=config.batch, vis_channels=channels)
    check_inputs = load_inputs(data, config.check_names, config.check_count, None if config.dynamic else imgsz,
                               channels)
    if config.dynamic:  # native sizes outside the profile are resized into it
        low, high = profile["ir"][0][2:], profile["ir"][2][2:]
        check_inputs = [i if all(lo <= s <= hi for s, lo, hi in zip(i.size, low, high))
                        else load_inputs(data, [i.name], None, imgsz, channels)[0] for i in check_inputs]
    if not config.dynamic and config.batch != 1:
        from export.pairs import stack_inputs
        check_inputs = [stack_inputs([i] * config.batch, config.batch) for i in check_inputs]

    # The fp32 reference ONNX, parity-checked against PyTorch; it is the engine's source unless --int8-mode qdq.
    fp32_onnx = files[".onnx"]
    if config.onnx:
        fp32_onnx = Path(config.onnx)
        if not fp32_onnx.is_file():
            raise FusionError(f"--onnx {fp32_onnx} not found")
        fp32_report = None
    else:
        echo(f"exporting the fp32 ONNX of {model.config.variant} to {fp32_onnx}")
        parity_pairs = load_inputs(data, config.check_names, config.check_count, None if config.dynamic else imgsz,
                                   channels)
        fp32_report = export_onnx(model, fp32_onnx, imgsz=imgsz, dynamic=config.dynamic, opset=config.opset,
                                  metadata=weights_metadata(folder), check_pairs=parity_pairs,
                                  simplify=config.simplify, tolerance=config.tolerance, batch=config.batch)
        echo(f"fp32 ONNX parity: {summarize_parity(fp32_report['parity'])}")

    source = fp32_onnx
    calib_inputs, calib_cache, qdq = None, None, False
    if precision == "int8":
        calib_data = Path(config.calib) if config.calib else data
        calib_names = config.calib_names or split_file(calib_data, "train")
        from export.pairs import check_disjoint
        check_disjoint(calib_names, split_file(data, "test") if (data / "test.txt").is_file() else [])
        calib_inputs = load_inputs(calib_data, calib_names, config.calib_count, imgsz, channels)
        if config.int8_mode == "qdq":
            from export.quantize import QuantRecipe, quantize_int8
            qdq = True
            source = out.with_name(out.name + ".qdq.onnx")
            echo(f"quantising {fp32_onnx} for TensorRT (symmetric QDQ) on {len(calib_inputs)} training pairs")
            quantize_int8(fp32_onnx, source, calib_inputs, QuantRecipe("minmax", target="tensorrt"))
            calib_inputs = None
        else:
            calib_cache = files[".calib"]

    argv = trtexec_argv(str(source), str(out), precision, config.workspace, profile,
                        str(calib_cache) if calib_cache else None, config.dla)
    portable = trtexec_argv(source.name if source.parent == out.parent else str(source), out.name, precision,
                            config.workspace, profile, calib_cache.name if calib_cache else None, config.dla)
    echo(f"building a {precision} TensorRT {environment['tensorrt']} engine for {environment['gpu']} "
         f"(sm {environment['compute_capability']}); the trtexec equivalent:\n  {format_command(argv)}")
    built = build_engine(source, out, precision, config.workspace, profile, config.dla, calib_inputs, calib_cache,
                         qdq, cuda=cuda)
    script = write_text(files[".trtexec.sh"], script_text(portable))
    os.chmod(script, 0o755)

    check = check_engine(out, fp32_onnx, check_inputs, precision, config.fp16_psnr)
    echo(f"{precision} engine vs fp32 ONNX Runtime on {check['pairs']} real pairs: PSNR {check['psnr_db']:.2f} dB, "
         f"max abs {check['max_abs']:.3g}")
    speed_feeds = load_inputs(data, split_file(data, "test"), 1, imgsz, channels)[0].feeds()
    if config.batch != 1 and not config.dynamic:
        speed_feeds = {k: np.repeat(v, config.batch, axis=0) for k, v in speed_feeds.items()}
    latency = engine_latency(out, speed_feeds)
    echo(f"latency ({latency['input_shape']}, copies included): median {latency['median_ms']:.3f} ms, p90 "
         f"{latency['p90_ms']:.3f} ms over {latency['runs']} runs")
    report = {
        "path": shown_path(out), "format": "engine", "weights": shown_path(folder),
        "settings": {"precision": precision, "imgsz": list(imgsz), "dynamic": config.dynamic, "batch": config.batch,
                     "workspace_mib": config.workspace, "dla_core": config.dla, "profile": profile,
                     "int8_mode": config.int8_mode if precision == "int8" else None, "source_onnx": str(source),
                     "calibration_pairs": [i.name for i in calib_inputs] if calib_inputs else None},
        "built_with": {k: environment[k] for k in ("tensorrt", "gpu", "compute_capability")},
        "build": built, "fp32_onnx_parity": fp32_report["parity"] if fp32_report else None,
        "check_vs_fp32": check, "latency": latency,
        "trtexec": format_command(argv), "trtexec_portable": f"sh {files['.trtexec.sh'].name}",
    }
    write_report(out, report, config)
    print(out)
    return 0
