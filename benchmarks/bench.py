"""`fusion bench`: every available backend and precision of the student, its peers and its teacher, in one run.

    from benchmarks.bench import BenchConfig, run_benchmark
    result = run_benchmark(BenchConfig(quick=True))
    result.rows          # list of dicts: model, backend, precision, resolution, p50_ms, ..., metric means

What is measured, and how (so that every number can be trusted on a shared, noisy machine):
- latency: batch 1, fixed real input (a training pair resized to the resolution), warm-up discarded, then p50/p90/p99
  of single calls; all rows of one resolution are timed interleaved, so ratios are side by side;
- params and GMACs: counted on the torch model (thop) at each resolution;
- quality: the foundation's metrics (distill/metrics.py) on a spread subset of test.txt at each pair's native size,
  computed on each backend's own output (INT8 and fp16 change the pixels), means per row;
- peers (`seafusion`, `densefuse`): random weights, latency and cost only, never quality;
- teacher cost: seconds per pair of the `em` teacher (and one `ddfm` sampling step) on the quality pairs, against
  the student's time on the same pairs, giving the speed-up factor;
- end to end: the runtime pipeline on the bundled sample clips (capture to fused output), when present.
Nothing here is an estimate. Rows that cannot run on this machine are left out, and the notes say why.
"""
from __future__ import annotations

import math
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from benchmarks.common import load_average
from export.onnx_export import static_input_size
from runtime.errors import FusionError

ALL_BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8", "onnxruntime-cuda", "torch-cuda", "torch-cuda-fp16",
                "torch-cuda-graph", "tensorrt-fp16", "tensorrt-int8")
# fp16 and fp16 + CUDA graph (runtime --backend torch-gpu), given to the student and the peers alike
TORCH_GPU_ROWS = {"torch-cuda-fp16": False, "torch-cuda-graph": True}
TABLE_METRICS = ("EN", "SD", "MI", "VIF", "Qabf", "SSIM")


@dataclass
class BenchConfig:
    weights: str = "default"          # student folder or "default"; falls back to a random nano (with a note)
    variant: str = ""                 # time a random-weight student of this registered variant instead
    onnx: str = ""                    # ONNX file for the student's ONNX Runtime rows (default: shipped or exported)
    imgsz: List[List[int]] = field(default_factory=lambda: [[480, 640], [512, 512]])  # (H, W) each
    backends: List[str] = field(default_factory=lambda: list(ALL_BACKENDS))
    threads: int = 2
    runs: int = 50
    warmup: int = 5
    peer_runs: int = 5
    peers: List[str] = field(default_factory=lambda: ["seafusion", "densefuse"])
    data: str = ""                    # dataset folder (ir/, vi/, train.txt, test.txt); default ../shared/data/roadscene
    quality_count: int = 10           # test pairs for the quality columns (0: none)
    teachers: List[str] = field(default_factory=lambda: ["em", "ddfm"])
    teacher_count: int = 2            # test pairs the teachers fuse (the first of the quality pairs)
    teacher_scale: float = 1.0        # fuse the teacher's pairs at this scale (quick: 0.5; the student is timed alike)
    ddfm_prior: str = ""              # DDFM prior folder; empty: a tiny random prior (timing of one step only)
    calib_count: int = 32             # training pairs calibrating INT8 (never test pairs)
    e2e: bool = True                  # the runtime pipeline on the bundled sample clips
    e2e_frames: int = 60
    clips: str = ""                   # folder of sample clips (default runtime/assets/samples)
    target_ms: float = 30.0
    plot_metric: str = "Qabf"
    quick: bool = False
    out: str = "runs/bench"
    json: str = ""
    plot: str = ""

    def apply_quick(self) -> "BenchConfig":
        """--quick: one resolution, fewer runs and pairs; keeps a CPU-only run under two minutes."""
        self.imgsz = self.imgsz[:1]
        self.runs = min(self.runs, 20)
        self.warmup = min(self.warmup, 2)
        self.peer_runs = min(self.peer_runs, 2)
        self.quality_count = min(self.quality_count, 3)
        self.teacher_count = min(self.teacher_count, 1)
        self.teacher_scale = min(self.teacher_scale, 0.5)
        self.calib_count = min(self.calib_count, 8)
        self.e2e_frames = min(self.e2e_frames, 30)
        return self


@dataclass
class BenchResult:
    rows: List[dict]
    notes: List[str]
    machine: dict
    config: dict
    teacher: dict = field(default_factory=dict)
    e2e: List[dict] = field(default_factory=list)
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------------------ helpers
def _log(message: str) -> None:
    print(f"[bench] {message}", flush=True, file=__import__("sys").stderr)


def resolution_label(hw) -> str:
    """(H, W) -> 'WxH', the way camera resolutions are spoken of (640x480)."""
    return f"{hw[1]}x{hw[0]}"


def machine_info(threads: int) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "threads": threads,
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "gpu": None}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    for module in ("torch", "onnxruntime", "tensorrt"):
        try:
            info[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - absent or broken: simply not reported
            info[module] = None
    try:
        import torch
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001
        pass
    info["date_utc"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    return info


def _gpu_available() -> bool:
    try:
        import torch
        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


def _ort_providers() -> list:
    try:
        import onnxruntime
        return list(onnxruntime.get_available_providers())
    except Exception:  # noqa: BLE001
        return []


# ------------------------------------------------------------------------------------------------------ the student
def resolve_student(cfg: BenchConfig):
    """(torch model, row name, folder or None, note)."""
    from distill.models import create_student, load_student, resolve_weights
    if cfg.variant:
        return create_student(cfg.variant).eval(), f"{cfg.variant} (random weights)", None, \
            f"student '{cfg.variant}' has random weights: its latency is real, its quality columns are not"
    try:
        folder = resolve_weights(cfg.weights)
        model = load_student(folder)
        name = "default" if cfg.weights == "default" else folder.name
        return model, f"{model.config.variant} ({name})", folder, ""
    except FusionError as exc:
        if cfg.weights != "default":
            raise
        return create_student("nano").eval(), "nano (random weights)", None, \
            (f"{exc} -- timing a random-weight nano student instead: its latency is real, its quality columns "
             f"are not")


def student_onnx(cfg: BenchConfig, model, folder: Optional[Path], work: Path, vis_channels: int) -> tuple:
    """(path of an fp32 ONNX for the student, note). Prefer --onnx, then the shipped model.onnx when it takes any
    size, else a fresh dynamic export of the torch model."""
    from distill.eval_profile import export_for_timing
    if cfg.onnx:
        path = Path(cfg.onnx)
        if not path.is_file():
            raise FusionError(f"--onnx {path} does not exist; give the student's .onnx file or leave --onnx out")
        return path, f"ONNX Runtime rows run {path}"
    if folder is not None and (folder / "model.onnx").is_file():
        shipped = folder / "model.onnx"
        if static_input_size(shipped) is None:
            return shipped, f"ONNX Runtime rows run the shipped {shipped}"
        note = f"{shipped} has a fixed input size, so a dynamic ONNX was exported from the same weights for the bench"
    else:
        note = ""
    path = export_for_timing(model, work / "student.onnx", (480, 640), vis_channels, dynamic=True)
    return path, note


def student_int8(cfg: BenchConfig, fp32_path: Path, folder: Optional[Path], work: Path, vis_channels: int,
                 data: Optional[Path]) -> tuple:
    """(path of a QDQ INT8 ONNX or None, note). The shipped model.int8.onnx when present, else quantised here with
    the export package's static quantiser, calibrated on training pairs (never test pairs)."""
    if folder is not None and (folder / "model.int8.onnx").is_file() and not cfg.onnx:
        return folder / "model.int8.onnx", f"INT8 rows run the shipped {folder / 'model.int8.onnx'}"
    try:
        from export.pairs import load_inputs
        from export.quantize import QuantRecipe, quantize_int8
    except ImportError as exc:
        return None, f"onnxruntime int8 row absent: the export package's quantiser is not importable ({exc})"
    if data is None:
        return None, "onnxruntime int8 row absent: INT8 calibration needs real training pairs and no dataset was found"
    calib = load_inputs(data, data / "train.txt", cfg.calib_count, tuple(cfg.imgsz[0]), vis_channels)
    out = work / "student.int8.onnx"
    done = quantize_int8(fp32_path, out, calib, QuantRecipe())
    return out, (f"INT8: quantised here ({done['label']}, {len(calib)} training pairs at "
                 f"{resolution_label(cfg.imgsz[0])}, {done['seconds']:.0f} s); `fusion export --format onnx-int8` "
                 f"picks its recipe more carefully")


def tensorrt_engines(cfg: BenchConfig, fp32_path: Path, work: Path, imgsz, notes: list) -> Dict[str, Path]:
    """{precision: engine path} built for this machine's GPU with an optimisation profile around imgsz."""
    from benchmarks import trt_build
    wanted = [p for p in ("fp16", "int8") if f"tensorrt-{p}" in cfg.backends]
    if not wanted:
        return {}
    reason = trt_build.unavailable_reason()
    if reason:
        notes.append(f"tensorrt rows absent: {reason}")
        return {}
    engines = {}
    for precision in wanted:
        try:
            engines[precision] = trt_build.build_engine(fp32_path, work / f"student.{precision}.{imgsz[0]}x{imgsz[1]}"
                                                        f".engine", precision, imgsz, data=cfg.data or None,
                                                        calib_count=cfg.calib_count)
        except Exception as exc:  # noqa: BLE001 - one failed build should not sink the whole table
            notes.append(f"tensorrt {precision} row absent at {resolution_label(imgsz)}: the engine build failed "
                         f"({str(exc).splitlines()[0][:200]})")
    return engines


# ------------------------------------------------------------------------------------------------------ quality
def quality_pairs(data: Optional[Path], count: int, vis_channels: int) -> list:
    """[(name, ir (1,1,H,W), vis (1,C,H,W), ir255, vis255)] for `count` pairs spread over test.txt."""
    if data is None or count <= 0:
        return []
    from export.pairs import spread
    from distill.metrics import read_gray_for_metrics
    from runtime.color import luminance
    from runtime.imageio import discover_pairs, read_names, read_pair
    names = spread(read_names(data / "test.txt"), count)
    items = []
    for pair in discover_pairs(data, names=names):
        ir, vis = read_pair(pair)
        if vis_channels == 1:
            vis = luminance(vis) if vis.ndim == 3 else vis
            vis_in = vis[None, None]
        else:
            vis_in = (np.repeat(vis[..., None], 3, axis=2) if vis.ndim == 2 else vis).transpose(2, 0, 1)[None]
        items.append((pair.name, np.ascontiguousarray(ir[None, None], dtype=np.float32),
                      np.ascontiguousarray(vis_in, dtype=np.float32),
                      read_gray_for_metrics(pair.ir), read_gray_for_metrics(pair.vis)))
    return items


def _fused_to_gray255(fused: np.ndarray) -> np.ndarray:
    """(1, C, H, W) float [0, 1] -> what a written 8-bit file would hold, as float (H, W) in [0, 255]."""
    from runtime.color import luminance
    img = fused[0, 0] if fused.shape[1] == 1 else luminance(fused[0].transpose(1, 2, 0))
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.float32)


def score_outputs(pairs: list, outputs: List[np.ndarray]) -> dict:
    from distill.metrics import fusion_metrics
    per_pair = [fusion_metrics(p[3], p[4], _fused_to_gray255(out)) for p, out in zip(pairs, outputs)]
    return {k: float(np.mean([m[k] for m in per_pair])) for k in per_pair[0]} if per_pair else {}


def candidate_quality(candidate, pairs: list) -> tuple:
    """(metric means, per-pair seconds) of one candidate on the quality pairs at native size."""
    candidate.infer(pairs[0][1], pairs[0][2])  # warm the session for this input size class
    outputs, seconds = [], []
    for _, ir, vis, _, _ in pairs:
        t0 = time.perf_counter()
        outputs.append(candidate.infer(ir, vis))
        seconds.append(time.perf_counter() - t0)
    return score_outputs(pairs, outputs), seconds


# ------------------------------------------------------------------------------------------------------ teachers
def scale_pairs(pairs: list, scale: float) -> list:
    """Quality pairs resized by `scale` (area interpolation), metric copies included."""
    if scale == 1.0:
        return pairs
    import cv2

    def rs(img):
        h, w = img.shape[-2:]
        size = (max(16, round(w * scale)), max(16, round(h * scale)))
        if img.ndim == 2:
            return cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(np.stack([cv2.resize(c, size, interpolation=cv2.INTER_AREA)
                                              for c in img[0]])[None])
    return [(name, rs(ir), rs(vis), np.round(rs(ir255)), np.round(rs(vis255))) for name, ir, vis, ir255, vis255 in
            pairs]


def teacher_costs(cfg: BenchConfig, pairs: list, notes: list, student=None) -> List[dict]:
    """Rows for the teachers: seconds per pair (em) and per sampling step (ddfm), measured here. `student` (a
    candidate) is timed on exactly the pairs the em teacher fused, for the speed-up factor."""
    rows = []
    pairs = scale_pairs(pairs[:max(cfg.teacher_count, 0)], cfg.teacher_scale)
    if not pairs:
        if cfg.teachers:
            notes.append("teacher rows absent: they fuse real test pairs and no dataset was found (or "
                         "--teacher-count 0)")
        return rows
    if "em" in cfg.teachers:
        try:
            row = _em_cost(pairs)
            if cfg.teacher_scale != 1.0:
                row["metrics"] = {}  # other sizes than the student's quality pairs: not comparable, not shown
                row["detail"] = (row["detail"] + "; " if row["detail"] else "") + \
                    f"pairs downscaled x{cfg.teacher_scale:g} to keep --quick short"
            if student is not None:
                seconds = []
                for _, ir, vis, _, _ in pairs:
                    student.infer(ir, vis)  # a new input size re-plans the session: not part of a frame's cost
                    timed = []
                    for _ in range(3):
                        t0 = time.perf_counter()
                        student.infer(ir, vis)
                        timed.append(time.perf_counter() - t0)
                    seconds.append(statistics.median(timed))
                row["student_backend"] = f"{student.backend} {student.precision}"
                row["student_s_per_pair"] = statistics.median(seconds)
                row["speedup"] = row["per_unit_s"] / row["student_s_per_pair"]
            row["size"] = f"{pairs[0][1].shape[3]}x{pairs[0][1].shape[2]}"
            rows.append(row)
        except Exception as exc:  # noqa: BLE001
            notes.append(f"teacher em row absent: {str(exc).splitlines()[0][:200]}")
    if "ddfm" in cfg.teachers:
        try:
            rows.append(_ddfm_step_cost(cfg, pairs[0]))
        except Exception as exc:  # noqa: BLE001
            notes.append(f"teacher ddfm row absent: {str(exc).splitlines()[0][:200]}")
    return rows


def _teacher_device() -> str:
    """Teachers run where a user would run them: on the GPU when there is one."""
    return "cuda" if _gpu_available() else "cpu"


def _em_cost(pairs: list) -> dict:
    from teacher.registry import load_teacher_class
    device = _teacher_device()
    teacher = load_teacher_class("em", "fusion")(device=device)
    outputs, seconds, iterations = [], [], []
    for name, ir, vis, _, _ in pairs:
        _log(f"teacher em on {name} ({ir.shape[3]}x{ir.shape[2]})")
        t0 = time.perf_counter()
        fused = teacher.fuse(ir[0, 0], vis[0, 0])  # returns a CPU array: the time includes the device sync
        seconds.append(time.perf_counter() - t0)
        iterations.append(getattr(getattr(teacher, "last_result", None), "iterations", None))
        outputs.append(fused[None, None])
    iters = [i for i in iterations if i is not None]
    return {"model": "teacher em", "backend": f"torch-{device}", "precision": "fp32", "unit": "pair",
            "seconds": seconds, "per_unit_s": statistics.median(seconds), "pairs": [p[0] for p in pairs],
            "metrics": score_outputs(pairs, outputs),
            "detail": f"EM to convergence, median {statistics.median(iters):.0f} iterations" if iters else ""}


def _ddfm_step_cost(cfg: BenchConfig, pair) -> dict:
    """One DDFM sampling step (diffusion prior forward + EM likelihood step) on one native-size pair."""
    from benchmarks import ddfm_probe
    return ddfm_probe.step_cost(cfg.ddfm_prior or None, pair, device=_teacher_device())


# ------------------------------------------------------------------------------------------------------ main
def _data_dir(cfg: BenchConfig) -> Optional[Path]:
    from benchmarks.latency import default_data_dir
    root = Path(cfg.data) if cfg.data else default_data_dir()
    if root.is_dir() and (root / "test.txt").is_file():
        return root
    if cfg.data:
        raise FusionError(f"--data {root} is not a dataset folder (ir/, vi/, train.txt, test.txt)")
    return None


def build_candidates(cfg: BenchConfig, model, name: str, fp32_onnx: Path, int8_onnx: Optional[Path],
                     notes: list) -> list:
    """The student's candidates for the backends asked for and present here (notes say why others are absent)."""
    from benchmarks.candidates import OrtCandidate, TorchCandidate
    providers = _ort_providers()
    gpu = _gpu_available()
    out = []
    if "torch" in cfg.backends:
        out.append(TorchCandidate(name, model, "cpu"))
    if "onnxruntime" in cfg.backends:
        out.append(OrtCandidate(name, fp32_onnx, "fp32", cfg.threads))
    if "onnxruntime-int8" in cfg.backends and int8_onnx is not None:
        out.append(OrtCandidate(name, int8_onnx, "int8", cfg.threads))
    if "onnxruntime-cuda" in cfg.backends:
        if "CUDAExecutionProvider" in providers:
            try:
                out.append(OrtCandidate(name, fp32_onnx, "fp32", cfg.threads, "CUDAExecutionProvider"))
            except Exception as exc:  # noqa: BLE001
                notes.append(f"onnxruntime-cuda row absent: {str(exc).splitlines()[0][:200]}")
        else:
            notes.append("onnxruntime-cuda row absent: this onnxruntime has no CUDAExecutionProvider "
                         "(install onnxruntime-gpu on a CUDA machine; the Jetson wheel on a Jetson)")
    if "torch-cuda" in cfg.backends:
        if gpu:
            import copy
            out.append(TorchCandidate(name, copy.deepcopy(model), "cuda"))
        else:
            notes.append("torch-cuda row absent: torch sees no CUDA GPU on this machine")
    out += torch_gpu_candidates(cfg, name, model, notes)
    return out


def torch_gpu_candidates(cfg: BenchConfig, name: str, model, notes: list, role: str = "student") -> list:
    """The torch-cuda fp16 and CUDA-graph rows asked for (TORCH_GPU_ROWS), or a note saying why they are absent."""
    from benchmarks.candidates import TorchGraphCandidate
    wanted = [b for b in TORCH_GPU_ROWS if b in cfg.backends]
    if not wanted:
        return []
    if not _gpu_available():
        note = f"{' and '.join(wanted)} rows absent: torch sees no CUDA GPU on this machine"
        if note not in notes:
            notes.append(note)
        return []
    return [TorchGraphCandidate(name, model, "cuda", half=True, graphs=TORCH_GPU_ROWS[b], role=role) for b in wanted]


def peer_candidates(cfg: BenchConfig, work: Path, notes: list) -> list:
    """Peers on the CPU (ONNX Runtime fp32, like the student's main row) and on the first GPU runtime present."""
    from benchmarks.candidates import OrtCandidate, TorchCandidate
    from distill.eval_profile import export_for_timing
    from distill.peers import create_peer
    out = []
    for name in cfg.peers:
        peer = create_peer(name)
        path = export_for_timing(peer, work / f"{name}.onnx", (480, 640), 1, dynamic=True)
        out.append(OrtCandidate(name, path, "fp32", cfg.threads, role="peer"))
        if "CUDAExecutionProvider" in _ort_providers():
            try:
                out.append(OrtCandidate(name, path, "fp32", cfg.threads, "CUDAExecutionProvider", role="peer"))
                continue
            except Exception as exc:  # noqa: BLE001
                notes.append(f"{name} on onnxruntime-cuda absent: {str(exc).splitlines()[0][:160]}")
        if _gpu_available():
            out.append(TorchCandidate(name, peer, "cuda", role="peer"))
    for name in cfg.peers:   # the student's fp16 / CUDA-graph treatment, so the comparison stays fair
        out += torch_gpu_candidates(cfg, name, create_peer(name), notes, role="peer")
    return out


def bench_row(model: str, role: str, backend: str, precision: str, resolution: str, height, width, p50_ms: float,
              p90_ms, p99_ms, fps, runs: int, params, gmacs, vs_seafusion, target_ms: float, **extra) -> dict:
    """One row of the table (every row has these columns, in this order; `extra`: quality means, a teacher's unit)."""
    return {"model": model, "role": role, "backend": backend, "precision": precision, "resolution": resolution,
            "height": height, "width": width, "p50_ms": p50_ms, "p90_ms": p90_ms, "p99_ms": p99_ms, "fps": fps,
            "runs": runs, "params": params, "gmacs": gmacs, "vs_seafusion": vs_seafusion,
            "meets_target": bool(p50_ms <= target_ms), "measured": True, **extra}


def latency_rows(cfg: BenchConfig, hw: tuple, stats: dict, these: list, peers: list, model, vis_channels: int,
                 quality: Dict[str, dict]) -> List[dict]:
    """The rows of one resolution from its interleaved timings, with each model's cost and the ratio to SeAFusion."""
    from distill.cost import count_macs, count_params
    from distill.peers import create_peer
    # Registered students: thop's convs + linears plus the cross-attention matrix products thop cannot
    # see (the count `fusion distill eval` and benchmarks.student_speed report); peers: thop alone.
    params, gmacs = count_params(model), count_macs(model, *hw, vis_channels)["gmacs"]
    peer_cost = {name: (count_params(create_peer(name)), count_macs(create_peer(name), *hw, 1)["gmacs"])
                 for name in cfg.peers}
    reference = {p.device: stats[p.key].p50_ms for p in peers if p.model == "seafusion"}
    # a GPU row is compared with SeAFusion under the same treatment (fp16, CUDA graph) when it has one
    same = {(p.backend, p.precision): stats[p.key].p50_ms for p in peers if p.model == "seafusion"}
    rows = []
    for cand in [*these, *peers]:
        s = stats[cand.key]
        is_peer = cand.role == "peer"
        vs_seafusion = (same.get((cand.backend, cand.precision), reference.get(cand.device)) / s.p50_ms
                        if cand.device in reference else None)
        rows.append(bench_row(cand.model, cand.role, cand.backend, cand.precision, resolution_label(hw), hw[0], hw[1],
                              s.p50_ms, s.p90_ms, s.p99_ms, s.fps, s.runs,
                              peer_cost[cand.model][0] if is_peer else params,
                              peer_cost[cand.model][1] if is_peer else gmacs, vs_seafusion, cfg.target_ms,
                              **quality.get(cand.key, {})))
    return rows


def teacher_rows(cfg: BenchConfig, qpairs: list, candidates: list, notes: List[str]) -> tuple[List[dict], dict]:
    """(the teachers' rows, {teacher: its cost record}): seconds per pair on the first quality pairs, against the
    student on the same pairs, on the same kind of device as the teacher: fp32 on the GPU when there is one, else
    ORT CPU."""
    on_gpu = [c for c in candidates if c.device == "gpu" and c.precision == "fp32"]
    reference = (on_gpu[0] if on_gpu and _teacher_device() == "cuda" else
                 next((c for c in candidates if c.backend == "onnxruntime-cpu" and c.precision == "fp32"),
                      candidates[0] if candidates else None))
    rows, teacher = [], {}
    resolution = "native" if cfg.teacher_scale == 1.0 else f"native x{cfg.teacher_scale:g}"
    for t in teacher_costs(cfg, qpairs, notes, reference):
        per_unit_ms = t["per_unit_s"] * 1000.0
        rows.append(bench_row(t["model"], "teacher", t["backend"], t["precision"], resolution, None, None,
                              per_unit_ms, None, None, 1.0 / t["per_unit_s"] if t["unit"] == "pair" else None,
                              len(t["seconds"]), t.get("params"), None, None, cfg.target_ms, unit=t["unit"],
                              **t.get("metrics", {})))
        teacher[t["model"]] = {k: v for k, v in t.items() if k != "metrics"}
    return rows, teacher


def run_benchmark(cfg: BenchConfig) -> BenchResult:
    from runtime.errors import require
    for module in ("torch", "thop", "onnx", "onnxruntime", "matplotlib"):  # one clear message, not a traceback
        require(module, "fusion bench")
    from benchmarks.latency import real_feeds, set_torch_threads
    from runtime.config import config_to_dict
    from runtime.timing import time_interleaved
    started = time.perf_counter()
    if cfg.quick:
        cfg.apply_quick()
    unknown = [b for b in cfg.backends if b not in ALL_BACKENDS]
    if unknown:
        raise FusionError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(ALL_BACKENDS)}")
    set_torch_threads(cfg.threads)
    load_start = load_average()
    notes: List[str] = []
    data = _data_dir(cfg)
    if data is None:
        notes.append("no dataset found (pass --data or set FUSION_DATA): latency used noise inputs, and the quality, "
                     "teacher and INT8 rows are absent")
    model, student_name, folder, note = resolve_student(cfg)
    if note:
        notes.append(note)
    vis_channels = int(model.config.vis_channels)
    rows: List[dict] = []
    with tempfile.TemporaryDirectory(prefix="fusion-bench-") as work_dir:
        work = Path(work_dir)
        _log(f"student {student_name}: preparing ONNX models")
        fp32_onnx, onnx_note = student_onnx(cfg, model, folder, work, vis_channels)
        if onnx_note:
            notes.append(onnx_note)
        int8_onnx = None
        if "onnxruntime-int8" in cfg.backends:
            int8_onnx, int8_note = student_int8(cfg, fp32_onnx, folder, work, vis_channels, data)
            if int8_note:
                notes.append(int8_note)
        candidates = build_candidates(cfg, model, student_name, fp32_onnx, int8_onnx, notes)
        peers = peer_candidates(cfg, work, notes)
        fixed_size = static_input_size(fp32_onnx)

        # ---- quality on native-size test pairs (per backend: INT8/fp16 change pixels)
        qpairs = []
        try:
            qpairs = quality_pairs(data, cfg.quality_count, vis_channels)
        except ImportError as exc:
            notes.append(f"quality columns absent: distill.metrics is not importable ({exc})")
        quality: Dict[str, dict] = {}
        student_pair_seconds: Dict[str, List[float]] = {}
        if qpairs and fixed_size is None:
            for cand in candidates:
                _log(f"quality of {cand.backend} {cand.precision} on {len(qpairs)} test pairs")
                quality[cand.key], student_pair_seconds[cand.key] = candidate_quality(cand, qpairs)
        elif qpairs:
            notes.append(f"quality columns absent: {fp32_onnx} only takes {fixed_size[1]}x{fixed_size[0]} inputs")

        # ---- latency, one resolution at a time, every row interleaved
        for hw in cfg.imgsz:
            hw = (int(hw[0]), int(hw[1]))
            label = resolution_label(hw)
            feeds, source = real_feeds(hw, data=data, vis_channels=vis_channels)
            these = [c for c in candidates if fixed_size is None or c.backend.startswith("torch")
                     or tuple(fixed_size) == hw]
            engines = tensorrt_engines(cfg, fp32_onnx, work, hw, notes) if fixed_size is None else {}
            from benchmarks.candidates import EngineCandidate
            for precision, engine in engines.items():
                try:
                    cand = EngineCandidate(student_name, engine, precision)
                except Exception as exc:  # noqa: BLE001
                    notes.append(f"tensorrt {precision} row absent: {str(exc).splitlines()[0][:200]}")
                    continue
                these.append(cand)
                if qpairs and cand.key not in quality:  # the profile covers the native sizes of the test pairs
                    _log(f"quality of tensorrt {precision} on {len(qpairs)} test pairs")
                    quality[cand.key], _ = candidate_quality(cand, qpairs)
            runners = {c.key: c.runner(feeds) for c in these}
            peer_feeds = {"ir": feeds["ir"], "vis": feeds["vis"][:, :1]}
            runners.update({p.key: p.runner(peer_feeds) for p in peers})
            runs = {c.key: cfg.runs for c in these} | {p.key: cfg.peer_runs for p in peers}
            warm = {c.key: cfg.warmup for c in these} | {p.key: 1 for p in peers}
            _log(f"timing {len(runners)} rows at {label} ({source})")
            stats = time_interleaved(runners, runs=runs, warmup=warm)
            rows += latency_rows(cfg, hw, stats, these, peers, model, vis_channels, quality)

        # ---- end to end, with the same fp32 ONNX the ONNX Runtime rows use
        e2e: List[dict] = []
        if cfg.e2e:
            from benchmarks import e2e as e2e_module
            _log("end to end: runtime pipeline on the sample clips")
            e2e, e2e_notes = e2e_module.run_e2e(cfg, fp32_onnx)
            notes.extend(e2e_notes)

    # ---- teachers, on the first quality pairs, against the student on the same pairs
    rows_of_teachers, teacher = teacher_rows(cfg, qpairs, candidates, notes)
    rows += rows_of_teachers

    notes.append("no Jetson numbers are printed: this table holds only what was measured on this machine; run "
                 "`fusion bench` on the Jetson itself (docs/jetson.md)")
    notes = list(dict.fromkeys(notes))  # one note per reason, not one per resolution
    machine = machine_info(cfg.threads)
    machine["load_avg_start"] = load_start
    machine["load_avg_end"] = load_average()
    return BenchResult(rows=rows, notes=notes, machine=machine, config=config_to_dict(cfg),
                       teacher=teacher, e2e=e2e, seconds=time.perf_counter() - started)


def finite(value) -> bool:
    return value is not None and not (isinstance(value, float) and (math.isnan(value) or math.isinf(value)))
