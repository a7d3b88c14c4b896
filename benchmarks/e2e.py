"""End to end: the runtime pipeline (`runtime.FusionPipeline`, what `fusion run` is) on the bundled sample clips.

Two runs per backend, both capture -> pairing -> preprocess -> inference -> colour -> output, no sink attached:
- `throughput`: the clips are read as fast as the pipeline takes them (lossless): the sustainable FPS;
- `camera rate`: the clips are played at their recorded frame rate and stale frames are dropped, like live cameras:
  the capture-to-output latency a user would see (p50/p90 from the pipeline's own statistics).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Tuple


def samples_dir(cfg) -> Path:
    if cfg.clips:
        return Path(cfg.clips)
    import runtime
    return Path(runtime.__file__).resolve().parent / "assets" / "samples"


def find_clips(folder: Path) -> Optional[Tuple[Path, Path, dict]]:
    """(ir clip, vis clip, samples.json content) or None."""
    meta_path = folder / "samples.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    ir = folder / (meta.get("ir", {}).get("file") or "ir.mp4")
    vis = folder / (meta.get("vis", {}).get("file") or "vis.mp4")
    if ir.is_file() and vis.is_file():
        return ir, vis, meta
    return None


def run_e2e(cfg, model_path, backend: str = "onnxruntime", device: str = "cpu") -> Tuple[List[dict], List[str]]:
    """Rows ({clip, backend, mode, frames, fps, latency_p50_ms, latency_p90_ms, resolution}) and notes."""
    try:
        from runtime.pipeline import FusionPipeline, RunConfig
    except ImportError as exc:
        return [], [f"end-to-end rows absent: the runtime pipeline is not importable ({exc})"]
    folder = samples_dir(cfg)
    clips = find_clips(folder)
    if clips is None:
        return [], [f"end-to-end rows absent: no sample clips (ir.mp4 + vis.mp4) in {folder}"]
    ir, vis, meta = clips
    rows: List[dict] = []
    notes: List[str] = []
    size = meta.get("vis", {}).get("size")
    # The pipeline as `fusion run` runs it: its own choice of inference threads (one on a 2-core machine, leaving a
    # core to capture and colour), not the bench's --threads, which is for timing the model alone.
    from runtime.backends import default_threads
    threads = default_threads()
    for mode, realtime in (("throughput", False), ("camera rate", True)):
        run_config = RunConfig(ir=str(ir), vis=str(vis), outputs=[], model=str(model_path), backend=backend,
                               device=device, threads=0, max_frames=cfg.e2e_frames, headless=True,
                               realtime=realtime, verbose=False, overlay="off")
        try:
            report = FusionPipeline(run_config).run()
        except Exception as exc:  # noqa: BLE001 - report it, keep the rest of the table
            notes.append(f"end-to-end {mode} run failed: {str(exc).splitlines()[0][:200]}")
            continue
        # Capture-to-output latency means something only at camera rate: reading files losslessly as fast as
        # possible fills every queue, so there it measures queueing, not the pipeline.
        latency = report.get("latency_ms", {}) if realtime else {}
        rows.append({"clip": f"{ir.name} + {vis.name}", "backend": f"{backend}-{device}", "mode": mode,
                     "frames": report.get("frames", 0), "fps": float(report.get("fps", 0.0)),
                     "latency_p50_ms": latency.get("p50"), "latency_p90_ms": latency.get("p90"),
                     "resolution": f"{size[0]}x{size[1]}" if size else "-", "threads": threads,
                     "inference_share": report.get("inference_share")})
    return rows, notes
