"""Inference backends: one interface over ONNX Runtime, TensorRT and PyTorch.

    backend = create_backend("runtime/models/default", backend="auto")
    fused = backend(ir, vis)       # ir (N, 1, H, W), vis (N, C, H, W) float32 [0, 1] -> fused (N, C, H, W)

`auto` picks a TensorRT engine when one (model.engine / *.plan beside the model) and a GPU are present; else, on a
CUDA machine whose ONNX Runtime has no GPU provider, `torch-gpu` for a student folder (fp16, CUDA graphs, frames
converted on the GPU: runtime/backends/torch_fast.py); else ONNX Runtime with the best provider it offers (TensorRT
EP > CUDA EP > CPU), else PyTorch (only for a student folder without model.onnx). ONNX Runtime and TensorRT never
import torch; the torch backends import `distill` lazily.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from runtime.backends.base import Backend, TorchBackend
from runtime.errors import FusionError, require

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "default"


def default_model_path() -> Path:
    return DEFAULT_MODEL_DIR


# ------------------------------------------------------------------------------------------------------ ONNX Runtime
def best_providers(available: list[str], device: str = "auto") -> list[str]:
    """ONNX Runtime providers in order of preference among those installed (`device` "cpu" forces CPU)."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    preferred = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    chosen = [p for p in preferred if p in available]
    return chosen or ["CPUExecutionProvider"]


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise FusionError("the ONNX Runtime backend needs onnxruntime, which is not installed: pip install "
                          "onnxruntime (onnxruntime-gpu on a desktop GPU; the Jetson wheel on a Jetson)") from None
    return onnxruntime


def default_threads() -> int:
    """Inference threads when none are asked for: leave a core to capture, pre/post-processing and encoding.

    On two cores one thread is faster in the pipeline than two: with two, every parallel operator waits for a
    worker that the other stages (or other programs) keep off the CPU (measured: 80-100 ms per frame instead of
    25-35 ms on this 2-core machine under load, the model alone being unchanged).
    """
    cores = os.cpu_count() or 1
    return 1 if cores <= 2 else min(4, cores - 1)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, threads: int = 0, device: str = "auto", spin: bool = False):
        ort = _import_onnxruntime()
        path = Path(path)
        self.model_path = str(path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = threads or default_threads()
        self.threads = options.intra_op_num_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        if not spin:
            # The other pipeline stages share these cores: ONNX Runtime's worker threads must not burn them
            # spinning between frames.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers: list = best_providers(ort.get_available_providers(), device)
        if "TensorrtExecutionProvider" in providers:
            # Without a cache the TensorRT EP rebuilds its engines at every start (minutes on a Jetson).
            cache = path.parent / ".trt_cache"
            providers[providers.index("TensorrtExecutionProvider")] = (
                "TensorrtExecutionProvider", {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                                              "trt_fp16_enable": True})
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise FusionError(f"ONNX Runtime cannot load {path} ({str(exc).splitlines()[0][:160]}); is it an ONNX "
                              f"model written by `fusion export`?") from None
        self.provider = self.session.get_providers()[0]
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if set(inputs) != {"ir", "vis"} or "fused" not in outputs:
            raise FusionError(f"{path} has inputs {sorted(inputs)} and outputs {outputs}, but a fusion model takes "
                              f"'ir' and 'vis' and returns 'fused'; export it with `fusion export`")
        ir_shape, vis_shape = inputs["ir"].shape, inputs["vis"].shape
        if len(ir_shape) != 4 or len(vis_shape) != 4:
            raise FusionError(f"{path} takes inputs of rank {len(ir_shape)}/{len(vis_shape)}, expected (N, C, H, W)")
        self.vis_channels = vis_shape[1] if isinstance(vis_shape[1], int) else 1
        height, width = ir_shape[2], ir_shape[3]
        self.input_size = (height, width) if isinstance(height, int) and isinstance(width, int) else None
        self.batch = ir_shape[0] if isinstance(ir_shape[0], int) else None
        meta = self.session.get_modelmeta().custom_metadata_map or {}
        self.metadata = dict(meta)
        self.multiple = int(meta.get("multiple", 1) or 1)
        self._output = ["fused"]
        # Frames in flight at once (the pipeline's inference workers; session.run is thread-safe). On the CPU with one
        # thread per run, two frames at once use two cores without a parallel operator ever waiting for a core
        # that another stage holds: measured on 2 cores, 2 x 1 thread holds 30 fps where 1 x 2 threads did not.
        cores = os.cpu_count() or 1
        single_threaded_cpu = self.provider == "CPUExecutionProvider" and self.threads == 1
        self.parallel_frames = 2 if single_threaded_cpu and cores >= 2 else 1

    def infer(self, ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
        return self.session.run(self._output, {"ir": ir, "vis": vis})[0]


# ---------------------------------------------------------------------------------------------------------- TensorRT
def cuda_gpu_present() -> bool:
    """True when an NVIDIA GPU is visible (without importing torch or pycuda)."""
    if os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvhost-ctrl-gpu"):
        return True
    return False


def _tensorrt_runner_class():
    module = importlib.import_module("runtime.backends.tensorrt_engine")
    for name in ("TensorRTEngine", "TensorRTRunner", "TrtEngine", "TRTEngine", "TensorRTBackend", "EngineRunner"):
        if hasattr(module, name):
            return getattr(module, name)
    raise FusionError("runtime/backends/tensorrt_engine.py offers no engine runner class; reinstall the package")


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, path: str | os.PathLike):
        if not cuda_gpu_present():
            raise FusionError("the TensorRT backend needs an NVIDIA GPU and this machine has none; use "
                              "--backend onnxruntime with the model's .onnx file")
        try:
            runner_class = _tensorrt_runner_class()
        except ModuleNotFoundError:
            raise FusionError("the TensorRT runner (runtime/backends/tensorrt_engine.py) is not installed") from None
        self.model_path = str(path)
        self.runner = runner_class(str(path))
        self.provider = "TensorRT"
        shape = getattr(self.runner, "input_shape", None) or getattr(self.runner, "ir_shape", None)
        if shape is not None and len(shape) == 4 and all(isinstance(s, int) and s > 0 for s in shape[2:]):
            self.input_size = (int(shape[2]), int(shape[3]))
        self.vis_channels = int(getattr(self.runner, "vis_channels", 1))

    def infer(self, ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
        for method in ("infer", "run", "__call__"):
            if hasattr(self.runner, method):
                out = getattr(self.runner, method)(ir, vis)
                return out["fused"] if isinstance(out, dict) else out
        raise FusionError("the TensorRT runner has no infer() method")

    def close(self) -> None:
        if hasattr(self.runner, "close"):
            self.runner.close()


# ----------------------------------------------------------------------------------------------------------- PyTorch
# ------------------------------------------------------------------------------------------------------------ factory
@dataclass
class ModelFiles:
    """What a --model argument points at."""

    onnx: Optional[Path] = None
    engine: Optional[Path] = None
    student: Optional[Path] = None          # folder with config.json + model.safetensors
    given: str = ""
    extras: dict = field(default_factory=dict)


def shipped_model_dir(name: str) -> Path | None:
    """runtime/models/<name> when `name` is a plain name of a model folder shipped there, else None."""
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        return None
    folder = DEFAULT_MODEL_DIR.parent / name
    return folder if folder.is_dir() else None


def locate_model(model: str | os.PathLike | None) -> ModelFiles:
    """Resolve --model (a .onnx / .engine file, a model folder, "default", or the name of another model shipped in
    runtime/models/, e.g. "nano2") to the files it offers."""
    given = "default" if model in (None, "", "default") else str(model)
    path = DEFAULT_MODEL_DIR if given == "default" else Path(given)
    if given != "default" and not path.exists() and shipped_model_dir(given) is not None:
        path = shipped_model_dir(given)
    files = ModelFiles(given=given)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".onnx":
            files.onnx = path
        elif suffix in ENGINE_SUFFIXES:
            files.engine = path
        elif suffix == ".safetensors":
            files.student = path.parent
        else:
            raise FusionError(f"--model {path}: unknown model file type '{suffix}'; give a .onnx file, a TensorRT "
                              f".engine, or a model folder")
        folder = path.parent
    elif path.is_dir():
        folder = path
        onnx = sorted(folder.glob("*.onnx"))
        files.onnx = folder / "model.onnx" if (folder / "model.onnx").is_file() else (onnx[0] if onnx else None)
        if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
            files.student = folder
    else:
        if given == "default":
            raise FusionError(f"the default model is not installed ({DEFAULT_MODEL_DIR} is missing); build it with "
                              f"`make weights` or pass --model PATH")
        raise FusionError(f"model not found: {path} (give a .onnx file, a TensorRT .engine, or a model folder)")
    if files.engine is None:
        base = files.onnx.with_suffix("") if files.onnx else folder / "model"
        for suffix in ENGINE_SUFFIXES:
            if base.with_suffix(suffix).is_file():
                files.engine = base.with_suffix(suffix)
                break
    if files.onnx is None and files.engine is None and files.student is None:
        if given == "default":
            raise FusionError(f"the default model is not installed in {path}; build it with `make weights` or "
                              f"pass --model PATH")
        raise FusionError(f"{path} holds no model (model.onnx, a .engine, or config.json + model.safetensors)")
    return files


# ------------------------------------------------------------------------------------------------------- registry
BackendFactory = Callable[[ModelFiles, int, str], Backend]


@dataclass(frozen=True)
class BackendSpec:
    """One runtime backend: how to build it from the model's files, and whether `auto` may pick it here.

    `needs` is the sentence `--backend NAME` answers when the model offers nothing this backend loads (None: every
    model offers what it needs); `usable(files)` says whether `auto` can run the model with it on this machine, and
    `auto_rank` orders those checks (lower first; None: `auto` never picks it)."""

    name: str
    create: BackendFactory
    requires: Callable[[ModelFiles], bool]
    needs: str
    usable: Callable[[ModelFiles], bool]
    auto_rank: Optional[int] = None


_BACKENDS: dict[str, BackendSpec] = {}
AUTO = "auto"  # not a backend: the rule that picks one (_auto_backend)


def register_backend(name: str, *, requires: Callable[[ModelFiles], bool], needs: str,
                     usable: Callable[[ModelFiles], bool], auto_rank: Optional[int] = None):
    """Decorator adding a backend factory `(files, threads, device) -> Backend` under `name`; a name registered twice
    is a FusionError (two backends cannot answer to one `--backend`)."""
    def add(create: BackendFactory) -> BackendFactory:
        if name in _BACKENDS or name == AUTO:
            raise FusionError(f"backend '{name}' is already registered")
        _BACKENDS[name] = BackendSpec(name, create, requires, needs, usable, auto_rank)
        return create
    return add


def backend_names() -> tuple[str, ...]:
    """What `--backend` accepts: "auto", then every registered backend in registration order."""
    return (AUTO,) + tuple(_BACKENDS)


def backend_spec(name: str) -> BackendSpec:
    """The registered backend `name`; a FusionError listing the registered ones otherwise."""
    if name not in _BACKENDS:
        raise FusionError(f"unknown backend '{name}'; choose one of: {', '.join(backend_names())}")
    return _BACKENDS[name]


@register_backend("tensorrt", requires=lambda f: f.engine is not None, auto_rank=0,
                  needs="--backend tensorrt needs a TensorRT engine, and {given} offers {offered}; build one with "
                        "`fusion export --format engine`",
                  usable=lambda f: f.engine is not None and cuda_gpu_present() and _importable("tensorrt"))
def _tensorrt(files: ModelFiles, threads: int, device: str) -> Backend:
    return TensorRTBackend(files.engine)


@register_backend("onnxruntime", requires=lambda f: f.onnx is not None, auto_rank=2,
                  needs="--backend onnxruntime needs an .onnx model, and {given} offers {offered}; export one with "
                        "`fusion export --format onnx`",
                  usable=lambda f: f.onnx is not None and _importable("onnxruntime"))
def _onnxruntime(files: ModelFiles, threads: int, device: str) -> Backend:
    return OnnxRuntimeBackend(files.onnx, threads, device)


_STUDENT_NEEDED = ("--backend {name} needs a student folder (config.json + model.safetensors), and {given} offers "
                   "{offered}")


@register_backend("torch", requires=lambda f: f.student is not None, needs=_STUDENT_NEEDED, auto_rank=3,
                  usable=lambda f: f.student is not None and _importable("torch"))
def _torch(files: ModelFiles, threads: int, device: str) -> Backend:
    return TorchBackend(files.student, threads, device)


@register_backend("torch-gpu", requires=lambda f: f.student is not None, needs=_STUDENT_NEEDED, auto_rank=1,
                  usable=lambda f: (f.student is not None and cuda_gpu_present() and _torch_cuda()
                                    and not _ort_gpu_provider()))
def _torch_gpu(files: ModelFiles, threads: int, device: str) -> Backend:
    return _torch_gpu_backend()(files.student, threads, device)


BACKENDS = backend_names()  # the names at import time; backend_names() also sees backends registered later


def create_backend(model: str | os.PathLike | None = "default", backend: str = "auto", threads: int = 0,
                   device: str = "auto") -> Backend:
    """Load `model` with `backend` ("auto" or a registered name: see backend_names()); FusionError on a mismatch."""
    spec = None if backend == AUTO else backend_spec(backend)
    files = locate_model(model)
    if spec is None:
        return _auto_backend(files, threads, device)
    if not spec.requires(files):
        raise FusionError(spec.needs.format(name=spec.name, given=files.given, offered=_offered(files)))
    return spec.create(files, threads, device)


def _auto_backend(files: ModelFiles, threads: int, device: str) -> Backend:
    """`--backend auto`: the first registered backend, by auto_rank, that can run `files` on this machine."""
    for spec in sorted((s for s in _BACKENDS.values() if s.auto_rank is not None), key=lambda s: s.auto_rank):
        if spec.usable(files):
            return spec.create(files, threads, device)
    if files.onnx is not None:
        _import_onnxruntime()
    raise FusionError(f"no backend can run {files.given}: it offers "
                      f"{_offered(files)} and this machine lacks what those need (a GPU with TensorRT, "
                      f"onnxruntime, or torch)")


def _torch_gpu_backend():
    from runtime.backends.torch_fast import TorchGpuBackend
    return TorchGpuBackend


def _torch_cuda() -> bool:
    if not _importable("torch"):
        return False
    import torch
    return bool(torch.cuda.is_available())


def _ort_gpu_provider() -> bool:
    if not _importable("onnxruntime"):
        return False
    import onnxruntime
    return any(p in onnxruntime.get_available_providers()
               for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider"))


def _offered(files: ModelFiles) -> str:
    parts = [label for label, value in (("an ONNX model", files.onnx), ("a TensorRT engine", files.engine),
                                        ("PyTorch weights", files.student)) if value is not None]
    return " and ".join(parts) if parts else "nothing loadable"


def _importable(module: str) -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


__all__ = ["BACKENDS", "Backend", "BackendSpec", "backend_names", "backend_spec", "register_backend",
           "OnnxRuntimeBackend", "TensorRTBackend", "TorchBackend", "create_backend", "locate_model", "best_providers", "default_model_path", "ModelFiles"]
