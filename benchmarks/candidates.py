"""What `fusion bench` can time: one model in one runtime at one precision, behind one small interface.

    cand = OrtCandidate("student nano", "model.onnx", precision="fp32")
    run = cand.runner(feeds)            # a no-argument callable: one batch-1 forward pass on fixed inputs
    fused = cand.infer(ir, vis)         # (1, 1, H, W) float32 at any size, for the quality pass

Every candidate reports which backend really ran (an ONNX Runtime session silently falls back to the CPU when a GPU
provider fails to initialise; a row must never claim a GPU it did not use).
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from runtime.timing import ort_session


class Candidate(ABC):
    model: str = ""           # row name: "student nano (default)", "seafusion", ...
    role: str = "student"     # student | peer
    backend: str = ""         # torch-cpu, onnxruntime-cpu, onnxruntime-cuda, tensorrt
    precision: str = "fp32"
    device: str = "cpu"       # cpu | gpu: peers are compared with students on the same kind of device

    @abstractmethod
    def runner(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], object]:
        """A no-argument callable that runs the model once on `feeds` (what the timer calls)."""

    @abstractmethod
    def infer(self, ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
        """ir (1, 1, H, W), vis (1, C, H, W) float32 [0, 1] -> the fused output, for the quality columns."""

    @property
    def key(self) -> str:
        return f"{self.model}|{self.backend}|{self.precision}"


class TorchCandidate(Candidate):
    def __init__(self, model_name: str, module, device: str = "cpu", role: str = "student"):
        import torch
        self.model, self.role = model_name, role
        self.torch_device = device
        self.module = module.to(device).eval()
        self.backend = "torch-cuda" if device.startswith("cuda") else "torch-cpu"
        self.device = "gpu" if device.startswith("cuda") else "cpu"
        self._torch = torch

    def _tensors(self, ir: np.ndarray, vis: np.ndarray):
        t = self._torch
        return (t.from_numpy(np.ascontiguousarray(ir, dtype=np.float32)).to(self.torch_device),
                t.from_numpy(np.ascontiguousarray(vis, dtype=np.float32)).to(self.torch_device))

    def runner(self, feeds):
        torch = self._torch
        ir, vis = self._tensors(feeds["ir"], feeds["vis"])
        cuda = self.device == "gpu"

        def run():
            with torch.inference_mode():
                out = self.module(ir, vis)
            if cuda:
                torch.cuda.synchronize()
            return out
        return run

    def infer(self, ir, vis):
        with self._torch.inference_mode():
            return self.module(*self._tensors(ir, vis)).float().cpu().numpy()


class TorchGraphCandidate(TorchCandidate):
    """A torch module as `--backend torch-gpu` runs it: fp16 weights, and optionally one CUDA graph per input shape
    (runtime/backends/torch_fast.py). Rows: torch-cuda fp16 (eager) and torch-cuda-graph fp16. Off CUDA the same
    path runs eagerly in fp32 (only the tests use that)."""

    def __init__(self, model_name: str, module, device: str = "cuda", half: bool = True, graphs: bool = False,
                 role: str = "student"):
        import copy

        from runtime.backends.torch_fast import GraphRunner, half_module
        super().__init__(model_name, copy.deepcopy(module), device, role)
        cuda = device.startswith("cuda")
        self.half, self.graphs = half and cuda, graphs and cuda
        self.precision = "fp16" if self.half else "fp32"
        if self.graphs:
            self.backend = "torch-cuda-graph"
        self._run = GraphRunner(half_module(self.module, self.half), device, self.graphs)

    def runner(self, feeds):
        ir, vis = self._tensors(feeds["ir"], feeds["vis"])
        torch, cuda, run_model = self._torch, self.device == "gpu", self._run

        def run():
            out = run_model(ir, vis)
            if cuda:
                torch.cuda.synchronize()
            return out
        return run

    def infer(self, ir, vis):
        return self._run(*self._tensors(ir, vis)).float().cpu().numpy()


class OrtCandidate(Candidate):
    """An ONNX file in ONNX Runtime with one execution provider (CPU, CUDA or TensorRT)."""

    PROVIDER_BACKENDS = {"CPUExecutionProvider": ("onnxruntime-cpu", "cpu"),
                         "CUDAExecutionProvider": ("onnxruntime-cuda", "gpu"),
                         "TensorrtExecutionProvider": ("onnxruntime-trt", "gpu")}

    def __init__(self, model_name: str, path: str | os.PathLike, precision: str = "fp32", threads: int = 2,
                 provider: str = "CPUExecutionProvider", role: str = "student", provider_options: dict | None = None):
        self.model, self.role, self.precision = model_name, role, precision
        self.path = Path(path)
        providers = [(provider, provider_options)] if provider_options else [provider]
        if provider != "CPUExecutionProvider":
            providers.append("CPUExecutionProvider")
        self.session = ort_session(self.path, threads=threads, providers=providers)
        used = self.session.get_providers()[0]
        if used != provider:
            raise RuntimeError(f"ONNX Runtime could not start {provider} (it fell back to {used})")
        self.backend, self.device = self.PROVIDER_BACKENDS[provider]
        inputs = {i.name: i for i in self.session.get_inputs()}
        self._dtype = np.float16 if "float16" in inputs["ir"].type else np.float32
        self._output = self.session.get_outputs()[0].name

    def _feeds(self, ir, vis):
        return {"ir": np.ascontiguousarray(ir, dtype=self._dtype), "vis": np.ascontiguousarray(vis, dtype=self._dtype)}

    def runner(self, feeds):
        fixed = self._feeds(feeds["ir"], feeds["vis"])
        session, output = self.session, [self._output]

        def run():
            return session.run(output, fixed)
        return run

    def infer(self, ir, vis):
        return self.session.run([self._output], self._feeds(ir, vis))[0].astype(np.float32)


class EngineCandidate(Candidate):
    """A TensorRT engine file, run by the runtime's own TensorRT backend (what `fusion run` uses on a Jetson)."""

    def __init__(self, model_name: str, engine_path: str | os.PathLike, precision: str, role: str = "student"):
        from runtime.backends import TensorRTBackend
        self.model, self.role, self.precision = model_name, role, precision
        self.backend, self.device = "tensorrt", "gpu"
        self.engine_path = Path(engine_path)
        self.runtime_backend = TensorRTBackend(self.engine_path)

    def runner(self, feeds):
        ir = np.ascontiguousarray(feeds["ir"], dtype=np.float32)
        vis = np.ascontiguousarray(feeds["vis"], dtype=np.float32)
        backend = self.runtime_backend

        def run():  # the runner copies host -> device -> host and synchronises: a frame's real cost
            return backend.infer(ir, vis)
        return run

    def infer(self, ir, vis):
        return np.asarray(self.runtime_backend.infer(np.ascontiguousarray(ir, dtype=np.float32),
                                                     np.ascontiguousarray(vis, dtype=np.float32)), dtype=np.float32)
