"""Run a TensorRT engine built by `fusion export --format engine` (or by trtexec), on a Jetson or any NVIDIA GPU.

    from runtime.backends.tensorrt_engine import TensorRTEngine
    with TensorRTEngine("runtime/models/default/model.engine") as engine:
        fused = engine.infer(ir, vis)        # ir (N, 1, H, W), vis (N, C, H, W) float32 [0, 1] -> (N, C, H, W)

One CUDA stream, pinned (page-locked) host buffers and device buffers allocated once and grown only when a larger
dynamic shape arrives, asynchronous host-to-device copies, `execute_async_v3`, an asynchronous copy back and a single
synchronisation per frame. CUDA comes from cuda-python (`cuda.bindings.runtime`, NVIDIA's official bindings, pip
installable and part of JetPack 6) or, failing that, pycuda.

Engines are specific to the GPU model and the TensorRT version that built them. The builder writes
`<engine>.json` beside the engine with both (`built_with`); this runner compares them with the machine it runs on and
refuses a mismatch with a message saying to rebuild, instead of letting TensorRT fail inside deserialisation. An
engine without that file (say, built by hand with trtexec) is loaded on trust, and a failed deserialisation gets the
same advice.

Nothing here imports tensorrt or CUDA at module import time: `import runtime.backends.tensorrt_engine` works on a
machine without either, and constructing an engine explains in one sentence what is missing.
"""
from __future__ import annotations

import ctypes
import json
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from runtime.errors import FusionError, MissingExtraError

INPUT_NAMES = ("ir", "vis")
OUTPUT_NAME = "fused"
METADATA_SUFFIX = ".json"

TENSORRT_MISSING = ("the TensorRT backend needs the 'tensorrt' Python package, which is not installed: on a Jetson "
                    "install JetPack's python3-libnvinfer (sudo apt install python3-libnvinfer), on a desktop GPU "
                    "pip install 'irvis-fusion[trt]', or use the ONNX Runtime backend instead")
CUDA_MISSING = ("the TensorRT backend needs CUDA from Python, and neither cuda-python nor pycuda is installed: "
                "pip install cuda-python (or pycuda), or use the ONNX Runtime backend instead")


def import_tensorrt():
    """The tensorrt module, or a one-sentence MissingExtraError saying how to install it."""
    try:
        import tensorrt
    except ImportError:
        raise MissingExtraError(TENSORRT_MISSING) from None
    return tensorrt


def metadata_path(engine_path: str | os.PathLike) -> Path:
    """`model.engine` -> `model.engine.json`: the build record (settings, checks, TensorRT version, GPU)."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + METADATA_SUFFIX)


# ------------------------------------------------------------------------------------------------------------ CUDA
class CudaError(FusionError):
    """A CUDA call failed (no GPU, driver too old, out of memory)."""


class _CudaPython:
    """The few CUDA runtime calls the runner needs, through cuda-python (`cuda.bindings.runtime` or `cuda.cudart`)."""

    name = "cuda-python"

    def __init__(self, device: int = 0):
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # cuda-python < 12.6
        self.cudart = cudart
        self.device = device
        self._check(cudart.cudaSetDevice(device), f"select CUDA device {device}")

    def _check(self, result, what: str):
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            name = getattr(err, "name", str(err))
            raise CudaError(f"CUDA could not {what} ({name}); check that an NVIDIA GPU and its driver are present "
                            f"(nvidia-smi, or tegrastats on a Jetson)")
        return values[0] if len(values) == 1 else (values or None)

    def device_properties(self) -> dict:
        props = self._check(self.cudart.cudaGetDeviceProperties(self.device), "read the device properties")
        name = props.name
        name = name.decode(errors="replace") if isinstance(name, (bytes, bytearray)) else str(name)
        return {"gpu": name.split("\x00", 1)[0].strip(), "compute_capability": f"{props.major}.{props.minor}",
                "total_memory_mib": int(props.totalGlobalMem) >> 20}

    def stream(self):
        return self._check(self.cudart.cudaStreamCreate(), "create a stream")

    @staticmethod
    def stream_handle(stream) -> int:
        return int(stream)

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self.cudart.cudaMalloc(max(nbytes, 1)), f"allocate {nbytes} bytes on the GPU"))

    def free(self, pointer: int) -> None:
        self.cudart.cudaFree(pointer)

    def pinned(self, count: int, dtype) -> tuple[Any, np.ndarray]:
        """Page-locked host memory as a flat numpy array (asynchronous copies need it)."""
        dtype = np.dtype(dtype)
        pointer = int(self._check(self.cudart.cudaMallocHost(max(count * dtype.itemsize, 1)),
                                  f"allocate {count * dtype.itemsize} bytes of pinned host memory"))
        buffer = (ctypes.c_byte * (count * dtype.itemsize)).from_address(pointer)
        return pointer, np.frombuffer(buffer, dtype=dtype, count=count)

    def free_pinned(self, handle) -> None:
        self.cudart.cudaFreeHost(handle)

    def copy_to_device(self, device_pointer: int, host: np.ndarray, stream) -> None:
        self._check(self.cudart.cudaMemcpyAsync(device_pointer, host.ctypes.data, host.nbytes,
                                                self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, stream),
                    "copy an input to the GPU")

    def copy_to_host(self, host: np.ndarray, device_pointer: int, stream) -> None:
        self._check(self.cudart.cudaMemcpyAsync(host.ctypes.data, device_pointer, host.nbytes,
                                                self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream),
                    "copy the output from the GPU")

    def synchronize(self, stream) -> None:
        self._check(self.cudart.cudaStreamSynchronize(stream), "finish the stream")

    def destroy_stream(self, stream) -> None:
        self.cudart.cudaStreamDestroy(stream)

    def close(self) -> None:
        pass


class _PyCuda:
    """The same calls through pycuda (JetPack 4/5 images often ship it), on the device's primary context, which is
    the one TensorRT's runtime API uses."""

    name = "pycuda"

    def __init__(self, device: int = 0):
        import pycuda.driver as cuda
        self.cuda = cuda
        try:
            cuda.init()
            self.dev = cuda.Device(device)
            self.context = self.dev.retain_primary_context()
            self.context.push()
        except cuda.Error as exc:
            raise CudaError(f"CUDA could not open device {device} ({exc}); check that an NVIDIA GPU and its driver "
                            f"are present") from None
        self._allocations: dict[int, Any] = {}

    def device_properties(self) -> dict:
        major, minor = self.dev.compute_capability()
        return {"gpu": self.dev.name().strip(), "compute_capability": f"{major}.{minor}",
                "total_memory_mib": int(self.dev.total_memory()) >> 20}

    def stream(self):
        return self.cuda.Stream()

    @staticmethod
    def stream_handle(stream) -> int:
        return int(stream.handle)

    def malloc(self, nbytes: int) -> int:
        allocation = self.cuda.mem_alloc(max(nbytes, 1))
        self._allocations[int(allocation)] = allocation
        return int(allocation)

    def free(self, pointer: int) -> None:
        allocation = self._allocations.pop(int(pointer), None)
        if allocation is not None:
            allocation.free()

    def pinned(self, count: int, dtype) -> tuple[Any, np.ndarray]:
        array = self.cuda.pagelocked_empty(max(count, 1), dtype)
        return array, array[:count]

    def free_pinned(self, handle) -> None:
        base = getattr(handle, "base", None)
        if base is not None and hasattr(base, "free"):
            base.free()

    def copy_to_device(self, device_pointer: int, host: np.ndarray, stream) -> None:
        self.cuda.memcpy_htod_async(device_pointer, host, stream)

    def copy_to_host(self, host: np.ndarray, device_pointer: int, stream) -> None:
        self.cuda.memcpy_dtoh_async(host, device_pointer, stream)

    def synchronize(self, stream) -> None:
        stream.synchronize()

    def destroy_stream(self, stream) -> None:
        pass

    def close(self) -> None:
        try:
            self.context.pop()
        except self.cuda.Error:
            pass


def open_cuda(device: int = 0):
    """cuda-python if installed, else pycuda; a one-sentence error when neither is."""
    try:
        return _CudaPython(device)
    except ImportError:
        pass
    try:
        return _PyCuda(device)
    except ImportError:
        raise MissingExtraError(CUDA_MISSING) from None


def current_environment(device: int = 0, cuda=None) -> dict:
    """The TensorRT version and GPU of this machine, as recorded in an engine's `built_with`."""
    trt = import_tensorrt()
    cuda = cuda or open_cuda(device)
    env = {"tensorrt": trt.__version__, **cuda.device_properties()}
    return env


# ------------------------------------------------------------------------------------------------- metadata check
def check_compatible(engine_path: str | os.PathLike, environment: dict) -> Optional[dict]:
    """Compare an engine's recorded TensorRT version and GPU with `environment`; FusionError (rebuild) on a mismatch.

    Returns the engine's metadata, or None when the engine has no metadata file (it is then loaded on trust).
    """
    meta_file = metadata_path(engine_path)
    if not meta_file.is_file():
        return None
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FusionError(f"cannot read the engine record {meta_file} ({exc}); rebuild the engine with "
                          f"`fusion export --format engine`") from None
    built = meta.get("built_with") or {}
    problems = []
    if built.get("tensorrt") and built["tensorrt"] != environment.get("tensorrt"):
        problems.append(f"TensorRT {built['tensorrt']} (this machine has {environment.get('tensorrt')})")
    if built.get("compute_capability") and built["compute_capability"] != environment.get("compute_capability"):
        problems.append(f"compute capability {built['compute_capability']} (this GPU is "
                        f"{environment.get('compute_capability')})")
    if built.get("gpu") and built["gpu"] != environment.get("gpu"):
        problems.append(f"the GPU '{built['gpu']}' (this one is '{environment.get('gpu')}')")
    if problems:
        rebuild = meta.get("trtexec_portable") or meta.get("trtexec") or "fusion export --format engine ..."
        raise FusionError(f"the TensorRT engine {engine_path} was built for {' and '.join(problems)}, and an engine "
                          f"only runs with the TensorRT version and GPU model that built it; rebuild it on this "
                          f"machine: {rebuild}")
    return meta


# ----------------------------------------------------------------------------------------------------------- runner
class TensorRTEngine:
    """A deserialised engine with its execution context, stream and buffers.

    input_shape: the `ir` shape (N, 1, H, W), with -1 for dynamic dimensions; vis_channels: C of `vis`.
    profile: for dynamic engines, {input: (min, opt, max)} of optimisation profile 0.
    """

    def __init__(self, engine_path: str | os.PathLike, device: int = 0, check_metadata: bool = True):
        trt = import_tensorrt()
        self.path = Path(engine_path)
        if not self.path.is_file():
            raise FusionError(f"TensorRT engine not found: {self.path} (build one with `fusion export --format "
                              f"engine`)")
        self.trt = trt
        self.cuda = open_cuda(device)
        self.environment = {"tensorrt": trt.__version__, **self.cuda.device_properties()}
        self.metadata = check_compatible(self.path, self.environment) if check_metadata else None
        self.logger = trt.Logger(trt.Logger.ERROR)
        try:
            trt.init_libnvinfer_plugins(self.logger, "")
        except Exception:  # plugins are optional for this network
            pass
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise FusionError(f"TensorRT {trt.__version__} could not load the engine {self.path}: it was built by "
                              f"another TensorRT version or for another GPU, or the file is damaged; rebuild it on "
                              f"this machine with `fusion export --format engine` (or trtexec)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if sorted(inputs) != sorted(INPUT_NAMES) or OUTPUT_NAME not in names:
            raise FusionError(f"{self.path} has tensors {names}, but a fusion engine takes 'ir' and 'vis' and "
                              f"returns 'fused'; build it from an ONNX written by `fusion export`")
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.input_shape = tuple(int(d) for d in self.engine.get_tensor_shape("ir"))
        self.vis_shape = tuple(int(d) for d in self.engine.get_tensor_shape("vis"))
        self.vis_channels = int(self.vis_shape[1]) if self.vis_shape[1] > 0 else 1
        self.dynamic = any(d < 0 for d in self.input_shape)
        self.profile = {}
        if self.dynamic:
            for name in INPUT_NAMES:
                shapes = self.engine.get_tensor_profile_shape(name, 0)
                self.profile[name] = tuple(tuple(int(d) for d in s) for s in shapes)
        self.stream = self.cuda.stream()
        self._buffers: dict[str, tuple[int, Any, np.ndarray, int]] = {}  # name -> (device, pinned, host, count)

    # ------------------------------------------------------------------------------------------------- buffers
    def _buffer(self, name: str, count: int):
        """Device and pinned host buffers for `count` elements of tensor `name`, grown when too small."""
        current = self._buffers.get(name)
        if current is not None and current[3] >= count:
            return current
        if current is not None:
            self.cuda.free(current[0])
            self.cuda.free_pinned(current[1])
        dtype = self.dtypes[name]
        device = self.cuda.malloc(count * dtype.itemsize)
        handle, host = self.cuda.pinned(count, dtype)
        self._buffers[name] = (device, handle, host, count)
        return self._buffers[name]

    def _check_shape(self, name: str, shape: tuple) -> None:
        if len(shape) != 4:
            raise FusionError(f"'{name}' must be (N, C, H, W), got shape {shape}")
        if not self.dynamic:
            expected = self.input_shape if name == "ir" else self.vis_shape
            if tuple(shape) != expected:
                raise FusionError(f"the engine {self.path.name} takes '{name}' of shape {expected} only, got "
                                  f"{tuple(shape)}; resize the frames or build a dynamic engine (fusion export "
                                  f"--format engine --dynamic)")
            return
        low, _, high = self.profile[name]
        if any(s < lo or s > hi for s, lo, hi in zip(shape, low, high)):
            raise FusionError(f"'{name}' of shape {tuple(shape)} is outside the engine's optimisation profile "
                              f"{low}..{high}; rebuild with --min-imgsz/--max-imgsz covering it")

    # --------------------------------------------------------------------------------------------------- run
    def infer(self, ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
        """Fuse a batch: ir (N, 1, H, W), vis (N, C, H, W) float32 [0, 1] -> fused (N, C, H, W) float32."""
        feeds = {"ir": ir, "vis": vis}
        for name, array in feeds.items():
            self._check_shape(name, array.shape)
        if ir.shape[0] != vis.shape[0] or ir.shape[2:] != vis.shape[2:]:
            raise FusionError(f"ir {ir.shape} and vis {vis.shape} differ in batch or size")
        for name, array in feeds.items():
            if self.dynamic:
                self.context.set_input_shape(name, tuple(int(d) for d in array.shape))
            device, _, host, _ = self._buffer(name, array.size)
            staged = host[:array.size].reshape(array.shape)
            np.copyto(staged, array, casting="same_kind" if array.dtype.kind == "f" else "unsafe")
            self.cuda.copy_to_device(device, staged, self.stream)
            self.context.set_tensor_address(name, device)
        out_shape = tuple(int(d) for d in self.context.get_tensor_shape(OUTPUT_NAME))
        count = int(np.prod(out_shape))
        device, _, host, _ = self._buffer(OUTPUT_NAME, count)
        self.context.set_tensor_address(OUTPUT_NAME, device)
        if not self.context.execute_async_v3(self.cuda.stream_handle(self.stream)):
            raise FusionError(f"TensorRT failed to run {self.path.name} on inputs of shape {ir.shape}")
        result = host[:count].reshape(out_shape)
        self.cuda.copy_to_host(result, device, self.stream)
        self.cuda.synchronize(self.stream)
        return result.astype(np.float32, copy=True)  # the pinned buffer is reused by the next call

    __call__ = infer

    def describe(self) -> dict:
        return {"engine": str(self.path), "dynamic": self.dynamic, "input_shape": list(self.input_shape),
                "profile": {k: [list(s) for s in v] for k, v in self.profile.items()},
                "cuda": self.cuda.name, **self.environment}

    def close(self) -> None:
        for device, handle, _, _ in self._buffers.values():
            self.cuda.free(device)
            self.cuda.free_pinned(handle)
        self._buffers.clear()
        if getattr(self, "stream", None) is not None:
            self.cuda.destroy_stream(self.stream)
            self.stream = None
        self.context = None
        self.engine = None
        self.cuda.close()

    def __enter__(self) -> "TensorRTEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
