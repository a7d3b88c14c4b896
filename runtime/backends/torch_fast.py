"""The student in PyTorch made fast on a GPU: fp16 weights, one CUDA graph per input shape, and whole frames handled on
the device (`--backend torch-gpu`).

    backend = TorchGpuBackend("runtime/models/default")          # cuda: fp16 + CUDA graphs; CPU: fp32, eager
    fused = backend.infer(ir, vis)                                # the Backend interface (float32 arrays)
    rgb = backend.fuse_frames(ir_u8, vis_u8, (480, 640), (480, 640))   # raw frames in, uint8 RGB out

Why: on an H100 the eager student is launch-bound (hundreds of tiny kernels: 6.7 ms fp16, slower than a bigger peer)
and the runtime's CPU pre/post-processing took 74% of the frame time (issue 13). Here a frame costs one upload of the
uint8 images, one graph replay (integer->float, resize, BT.601 split, the model, chroma merge, float->uint8, all
captured together) and one download of the uint8 result.

On a machine without CUDA the same code runs eagerly in fp32 on the CPU (no graphs, no half precision), and gives the
torch backend's output within rounding: tests/test_runtime_torch_gpu.py holds it to that.
Frames the device path does not convert (16-bit IR, CLAHE, 3-channel IR) get the runtime's CPU conversion
(`ir_to_float`) first and are uploaded as float.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

import numpy as np

from runtime.backends.base import TorchBackend
from runtime.color import KB, KG, KR


class GraphRunner:
    """Calls `fn(*tensors)` on a device; on CUDA (graphs=True) through a CUDA graph captured the first time each
    input signature (shapes, dtypes) is seen. The graph's output tensors are reused by the next replay: consume
    them (copy to the host) before calling again. Not thread-safe: one caller at a time."""

    def __init__(self, fn: Callable, device, graphs: bool, warmup: int = 3):
        import torch
        self.torch = torch
        self.fn = fn
        self.device = torch.device(device)
        self.graphs = bool(graphs) and self.device.type == "cuda"
        self.warmup = warmup
        self._cache: dict = {}

    def __call__(self, *inputs):
        torch = self.torch
        if not self.graphs:
            with torch.inference_mode():
                return self.fn(*inputs)
        key = tuple((tuple(t.shape), t.dtype) for t in inputs)
        entry = self._cache.get(key)
        if entry is None:
            entry = self._cache[key] = self._capture(inputs)
        graph, static_in, static_out = entry
        for buffer, value in zip(static_in, inputs):
            buffer.copy_(value, non_blocking=True)
        graph.replay()
        return static_out

    def _capture(self, inputs):
        torch = self.torch
        static_in = [t.detach().clone() for t in inputs]
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(self.warmup):  # cuDNN/cuBLAS pick their kernels and allocate workspaces outside the graph
                self.fn(*static_in)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            static_out = self.fn(*static_in)
        return graph, static_in, static_out

    @property
    def captured(self) -> int:
        return len(self._cache)


def half_module(module, half: bool):
    """A callable (ir, vis) -> float32 output: the module as it is, or in fp16 with the inputs cast to it."""
    module = module.eval()
    if not half:
        return module
    module = module.half()

    def run(ir, vis):
        return module(ir.half(), vis.half()).float()
    return run


def resize(x, size_hw):
    """(N, C, H, W) float -> size_hw as the runtime resizes (cv2 INTER_AREA when shrinking, INTER_LINEAR when
    enlarging). Shrinking uses antialiased bilinear: at the non-integer ratios of camera frames it is 5-8x closer to
    INTER_AREA than torch's "area" (adaptive average pooling with whole-pixel windows), measured on RoadScene."""
    import torch.nn.functional as F
    if tuple(x.shape[-2:]) == tuple(size_hw):
        return x
    if x.shape[-2] > size_hw[0]:
        return F.interpolate(x, size=tuple(size_hw), mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(x, size=tuple(size_hw), mode="bilinear", align_corners=False)


def to_unit(x):
    """An uploaded frame (H, W[, C]) of uint8 / uint16 / float -> (1, C, H, W) float32 in [0, 1]."""
    import torch
    if x.dtype == torch.uint8:
        y = x.float() / 255.0
    elif x.dtype == torch.int32:           # 16-bit frames travel as int32 (see TorchGpuBackend._upload)
        y = x.float() / 65535.0
    else:
        y = x.float().clamp(0.0, 1.0)
    return y[None, None] if y.ndim == 2 else y.permute(2, 0, 1)[None]


class TorchGpuBackend(TorchBackend):
    """`--backend torch-gpu`: see the module docstring. half/graphs default to "on when the device is CUDA"."""

    name = "torch-gpu"
    fuses_frames = True   # the pipeline hands raw frames to fuse_frames() instead of doing its CPU conversions

    def __init__(self, path: str | os.PathLike, threads: int = 0, device: str = "auto",
                 half: Optional[bool] = None, graphs: Optional[bool] = None):
        super().__init__(path, threads, device)
        torch = self.torch
        self.device = torch.device(self.device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        cuda = self.device.type == "cuda"
        self.half = cuda if half is None else bool(half) and cuda
        self.graphs = cuda if graphs is None else bool(graphs) and cuda
        self.net = half_module(self.model, self.half)
        self.provider = (f"torch {self.device}, {'fp16' if self.half else 'fp32'}"
                         f"{', CUDA graphs' if self.graphs else ''}, frames on the device")
        self._infer_runner = GraphRunner(self.net, self.device, self.graphs)
        self._frame_runners: dict = {}
        self._staging: dict = {}

    def describe(self) -> dict:
        return {**super().describe(), "precision": "fp16" if self.half else "fp32", "cuda_graphs": self.graphs}

    # ------------------------------------------------------------------------------------- Backend interface
    def infer(self, ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
        torch = self.torch
        ir_t = torch.from_numpy(np.ascontiguousarray(ir, dtype=np.float32)).to(self.device, non_blocking=True)
        vis_t = torch.from_numpy(np.ascontiguousarray(vis, dtype=np.float32)).to(self.device, non_blocking=True)
        return self._infer_runner(ir_t, vis_t).float().cpu().numpy()

    # ------------------------------------------------------------------------------------------ frame path
    def _upload(self, frame: np.ndarray):
        """The frame on the device, as it is (uint8 stays uint8: a quarter of the float32 bytes). On CUDA through a
        pinned staging buffer kept per shape (allocating pinned memory per frame costs more than the copy); the
        caller's download synchronises before the buffer is reused."""
        torch = self.torch
        if frame.dtype == np.uint16:
            frame = frame.astype(np.int32)   # torch lacks uint16 arithmetic on many builds
        frame = np.ascontiguousarray(frame)
        if self.device.type != "cuda":
            return torch.from_numpy(frame)
        key = (frame.shape, frame.dtype.str)
        staging = self._staging.get(key)
        if staging is None:
            staging = self._staging[key] = torch.from_numpy(frame.copy()).pin_memory()
        staging.numpy()[...] = frame
        return staging.to(self.device, non_blocking=True)

    def fuse_frames(self, ir: np.ndarray, vis: np.ndarray, model_hw, out_hw, clahe: bool = False) -> np.ndarray:
        """Registered raw frames -> the fused frame at `out_hw`: uint8 (H, W, 3) RGB, or (H, W) for a gray VIS.

        ir: (H, W) uint8 (others are converted by the runtime's ir_to_float first); vis: (H', W'[, 3]) uint8,
        uint16 or float RGB. The model runs at `model_hw`; the chroma comes from VIS at the output size."""
        if not (ir.dtype == np.uint8 and ir.ndim == 2) or clahe:
            from runtime.imageio import ir_to_float
            ir = ir_to_float(ir, clahe=clahe)
        if vis.ndim == 3 and vis.shape[2] == 4:
            vis = vis[..., :3]
        key = (tuple(model_hw), tuple(out_hw))
        runner = self._frame_runners.get(key)
        if runner is None:
            runner = self._frame_runners[key] = GraphRunner(self._frame_function(tuple(model_hw), tuple(out_hw)),
                                                            self.device, self.graphs)
        return runner(self._upload(ir), self._upload(vis)).cpu().numpy()

    def _frame_function(self, model_hw, out_hw):
        torch = self.torch
        net, vis_channels = self.net, self.vis_channels

        def fuse(ir_raw, vis_raw):
            ir = resize(to_unit(ir_raw), model_hw)
            vis_full = to_unit(vis_raw)
            vis = resize(vis_full, model_hw)
            colour = vis.shape[1] == 3
            if vis_channels == 3:
                model_vis = vis if colour else vis.expand(-1, 3, -1, -1)
            else:
                model_vis = KR * vis[:, :1] + KG * vis[:, 1:2] + KB * vis[:, 2:3] if colour else vis
            fused = net(ir, model_vis.contiguous()).float()
            if fused.shape[1] == 3:
                rgb = resize(fused.clamp(0.0, 1.0), out_hw)
            else:
                y = resize(fused, out_hw)
                if colour:
                    source = vis if tuple(out_hw) == tuple(model_hw) else resize(vis_full, out_hw)
                    # BT.601 full range (runtime.color): chroma of the VIS frame, luminance of the fusion
                    # (R - Y and B - Y are what Cr and Cb store, up to their scales, which cancel here)
                    r, g, b = source[:, :1], source[:, 1:2], source[:, 2:3]
                    source_y = KR * r + KG * g + KB * b
                    red, blue = y + (r - source_y), y + (b - source_y)
                    green = (y - KR * red - KB * blue) / KG
                    rgb = torch.cat((red, green, blue), dim=1)
                else:
                    rgb = y
            out = (rgb.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)[0]
            return out.permute(1, 2, 0).contiguous() if out.shape[0] == 3 else out[0]
        return fuse


__all__ = ["GraphRunner", "TorchGpuBackend", "half_module", "resize", "to_unit"]
