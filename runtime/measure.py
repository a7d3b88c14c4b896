"""Where the CPU goes, stage by stage, per fused frame: `fusion run` at camera rate on 640x480, 1280x720 and 1920x1080
visible cameras beside a 640x512 thermal core.

    python -m runtime.measure                                   # vga, 720p, 1080p; 30 s each
    python -m runtime.measure --presets 480p --seconds 60 --out build/measure/480p.json
    python -m runtime.measure --repeats 3                       # each size three times, interleaved: medians
    python -m runtime.measure --backend torch-gpu               # the same table for another backend (GPU machines)
    python -m runtime.measure --presets vga --temporal-filter on   # with the temporal filter (its own row)
    python -m runtime.measure --presets vga --ir-motion off      # without IR motion compensation
    python -m runtime.measure --presets vga --ir-motion compare --repeats 3   # with and without, alternated: what it adds

For each preset it makes the sample clips when missing (`runtime/assets/make_samples.py --preset P`: the same LLVIP
training scenes and trajectory at every size; `480p` is the bundled RoadScene pair with a 320x240 IR camera), plays
them as cameras (`--realtime --loop`, VIS 30 fps, IR 9 fps, the rig's homography, output at the VIS camera's native
size) into an mp4 file and, with `--viewers N`, N MJPEG viewers. After a warm-up it reads every thread's CPU time
from /proc/self/task at the start and the end of the measured window and charges each thread to its stage:

    decode       the capture threads and FFmpeg's decoder threads
    pairing      matching each VIS frame with an IR frame
    preprocess   registration, resizing, IR motion compensation (also shown on its own, and by piece: the small
                 VIS frame, the flow with its check, the global fit over the tiles, the warp), float conversion
    inference    the inference workers (ONNX Runtime runs each frame on its worker's thread)
    output       colour restored at the output size, overlay, hand-off to each sink, statistics
    video encode the mp4 encoder thread (and FFmpeg's encoder threads)
    mjpeg        the HTTP server and its viewers' threads (JPEG encoding happens there, once per frame)
    other        the main thread (supervision, memory trimming) and anything else

CPU time is what the two cores must supply, so it is the figure that says whether camera rate can hold and how cost
grows with the frame size (wall-clock stage times overlap and wait on each other). Also printed: fused fps, capture
-> output latency, and stale pairs dropped. Linux only (/proc); timings on a shared machine are noisy: compare sizes
measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLES = Path(__file__).resolve().parent / "assets" / "samples"
STAGES = ("decode", "pairing", "preprocess", "inference", "output", "video encode", "mjpeg", "other")
MOTION_PIECES = ("small frame", "flow", "fit", "warp")    # IR motion's own series (runtime.stages.compensate_motion)
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def thread_cpu() -> Dict[int, tuple[str, float]]:
    """{native thread id: (kernel thread name, CPU seconds)} for every thread of this process."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue             # the thread ended meanwhile
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(tid)] = (stat[stat.index("(") + 1:stat.rindex(")")], (int(fields[11]) + int(fields[12])) / TICKS)
    return out


def stage_of(name: str) -> str:
    """The stage a thread works for, from its Python name or (native threads) its kernel name."""
    if name.startswith("capture-") or (name.startswith("av:") and ":df" in name):
        return "decode"
    if name == "pairing":
        return "pairing"
    if name == "preprocess":
        return "preprocess"
    if name.startswith("inference"):
        return "inference"
    if name == "output":
        return "output"
    if name == "encode-video" or name.startswith("av:"):
        return "video encode"
    if name.startswith("mjpeg") or "process_request_thread" in name:
        return "mjpeg"
    return "other"


class ThreadLedger:
    """CPU seconds per stage between `start()` and `stop()`, following threads as they come and go."""

    def __init__(self, interval: float = 0.25):
        self.interval = interval
        self.names: Dict[int, str] = {}
        self.first: Dict[int, float] = {}
        self.last: Dict[int, float] = {}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _sample(self, baseline: bool = False) -> None:
        python_names = {t.native_id: t.name for t in threading.enumerate()}
        for tid, (comm, cpu) in thread_cpu().items():
            if tid not in self.names or tid in python_names:
                self.names[tid] = python_names.get(tid, comm)
            if baseline or tid not in self.first:
                self.first[tid] = cpu if baseline else 0.0
            self.last[tid] = cpu

    def start(self) -> None:
        self._sample(baseline=True)
        self._thread = threading.Thread(target=self._run, name="measure-ledger", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self) -> Dict[str, float]:
        self._stop.set()
        self._thread.join()
        self._sample()
        own = threading.current_thread().native_id
        totals = {stage: 0.0 for stage in STAGES}
        for tid, name in self.names.items():
            if name == "measure-ledger" or tid == own:
                continue          # the measurement itself
            totals[stage_of(name)] += self.last.get(tid, 0.0) - self.first.get(tid, 0.0)
        return totals


def clips_for(preset: str) -> Path:
    """The folder of `preset`'s clips, made (deterministically, from training pairs) when missing."""
    if preset == "480p":
        return SAMPLES
    folder = REPO / "build" / "samples" / preset
    if not (folder / "vis.mp4").is_file() or not (folder / "ir.mp4").is_file():
        from runtime.assets.make_samples import make_samples, PRESETS
        make_samples(REPO.parent / "shared" / "data" / PRESETS[preset].dataset, folder, preset)
    return folder


def measure(preset: str, seconds: float, warmup: float, model: str, backend: str, viewers: int,
            workdir: Path, temporal_filter: str = "off", ir_motion: str = "auto") -> dict:
    """One preset at camera rate: CPU ms per fused frame by stage, and the run's statistics."""
    from runtime.pipeline import FusionPipeline
    clips = clips_for(preset)
    homography = clips / "h.json"
    outputs = [str(workdir / f"{preset}.mp4")]
    token = "measure-run-token"
    if viewers:
        outputs.append("mjpeg://127.0.0.1:0")
    pipeline = FusionPipeline(ir=str(clips / "ir.mp4"), vis=str(clips / "vis.mp4"), model=model, backend=backend,
                              homography=str(homography) if homography.is_file() else None, output_size="native",
                              outputs=outputs, headless=True, realtime=True, loop=True, auth_token=token,
                              temporal_filter=temporal_filter, ir_motion=ir_motion, verbose=False)
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(report=pipeline.run()), name="measure-run", daemon=True)
    runner.start()
    while not pipeline.stats.counters.get("frames_out") and runner.is_alive():
        time.sleep(0.05)
    watchers = [Viewer(pipeline, token) for _ in range(viewers)]
    time.sleep(warmup)
    ledger = ThreadLedger()
    frames_before = pipeline.stats.counters.get("frames_out", 0)
    stale_before = pipeline.stats.counters.get("stale_dropped_pairs", 0)
    motion_before = pipeline.stats.total("motion")
    pieces_before = {piece: pipeline.stats.total(f"motion {piece}") for piece in MOTION_PIECES}
    temporal_before = pipeline.stats.total("temporal")
    t0 = time.monotonic()
    ledger.start()
    time.sleep(seconds)
    cpu = ledger.stop()
    elapsed = time.monotonic() - t0
    frames = pipeline.stats.counters.get("frames_out", 0) - frames_before
    stale = pipeline.stats.counters.get("stale_dropped_pairs", 0) - stale_before
    motion_s = pipeline.stats.total("motion") - motion_before
    pieces_s = {piece: pipeline.stats.total(f"motion {piece}") - before for piece, before in pieces_before.items()}
    temporal_s = pipeline.stats.total("temporal") - temporal_before
    recent = pipeline.stats.snapshot(recent=int(frames))
    for watcher in watchers:
        watcher.close()
    pipeline.stop()
    runner.join(60)
    per_frame = {stage: 1000.0 * value / max(frames, 1) for stage, value in cpu.items()}
    sizes = pipeline.work.sizes_used()
    return {"preset": preset, "frames": frames, "seconds": round(elapsed, 2), "fps": round(frames / elapsed, 2),
            "cpu_ms_per_frame": {k: round(v, 2) for k, v in per_frame.items()},
            "cpu_ms_total": round(sum(per_frame.values()), 2),
            "cores_busy": round(sum(cpu.values()) / elapsed, 2),
            "motion_ms_per_frame": round(1000.0 * motion_s / max(frames, 1), 2),
            "motion_pieces_ms_per_frame": {piece: round(1000.0 * s / max(frames, 1), 2)
                                           for piece, s in pieces_s.items()},
            "temporal_ms_per_frame": round(1000.0 * temporal_s / max(frames, 1), 2),
            "latency_ms": recent.get("latency_ms", {}), "stale_dropped": stale,
            "stale_share": round(stale / max(frames + stale, 1), 4),
            "view_and_model_size": [[list(view), list(model)] for view, model in sizes.items()],
            "backend": pipeline.backend.describe() if pipeline.backend is not None else None,
            "inference_workers": pipeline.inference_workers() if pipeline.backend is not None else None}


class Viewer:
    """A client of the MJPEG stream reading every frame it is sent (as a browser would)."""

    def __init__(self, pipeline, token: str):
        import http.client
        server = next(s for s in pipeline.sinks if s.kind == "mjpeg").server
        self.connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        self.connection.request("GET", f"/stream.mjpg?token={token}")
        self.response = self.connection.getresponse()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._read, name="measure-viewer", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.response.read(65536):
                    return
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self.connection.close()


def median_row(runs: list) -> dict:
    """One preset's repeats as one row: the median of each figure (the first run's descriptive fields)."""
    if len(runs) == 1:
        return runs[0]
    row = dict(runs[0])
    for key in ("fps", "cpu_ms_total", "cores_busy", "motion_ms_per_frame", "temporal_ms_per_frame", "stale_share"):
        row[key] = float(np.median([r[key] for r in runs]))
    row["cpu_ms_per_frame"] = {stage: float(np.median([r["cpu_ms_per_frame"][stage] for r in runs]))
                               for stage in STAGES}
    row["motion_pieces_ms_per_frame"] = {piece: float(np.median([r.get("motion_pieces_ms_per_frame", {}).get(piece, 0.0)
                                                                  for r in runs])) for piece in MOTION_PIECES}
    row["latency_ms"] = {key: float(np.median([r["latency_ms"].get(key, 0.0) for r in runs]))
                         for key in ("p50", "p90", "p99")}
    return row


def format_table(rows: list) -> str:
    header = f"{'CPU ms per fused frame':<24}" + "".join(f"{r['preset']:>10}" for r in rows)
    lines = [header, "-" * len(header)]
    for stage in STAGES:
        lines.append(f"{stage:<24}" + "".join(f"{r['cpu_ms_per_frame'][stage]:>10.2f}" for r in rows))
        if stage == "preprocess":
            lines.append(f"{'  of which IR motion':<24}" + "".join(f"{r['motion_ms_per_frame']:>10.2f}" for r in rows))
            if any(r["motion_ms_per_frame"] for r in rows):
                for piece in MOTION_PIECES:
                    lines.append(f"{'    ' + piece:<24}" + "".join(
                        f"{r.get('motion_pieces_ms_per_frame', {}).get(piece, 0.0):>10.2f}" for r in rows))
        if stage == "output" and any(r.get("temporal_ms_per_frame") for r in rows):
            lines.append(f"{'  of which temporal filter':<24}" + "".join(
                f"{r.get('temporal_ms_per_frame', 0.0):>10.2f}" for r in rows))
    lines.append(f"{'total':<24}" + "".join(f"{r['cpu_ms_total']:>10.2f}" for r in rows))
    base = rows[0]
    lines.append(f"{'x first column':<24}" + "".join(f"{r['cpu_ms_total'] / base['cpu_ms_total']:>10.2f}"
                                                     for r in rows))
    lines.append(f"{'cores busy':<24}" + "".join(f"{r['cores_busy']:>10.2f}" for r in rows))
    lines.append(f"{'fused fps':<24}" + "".join(f"{r['fps']:>10.2f}" for r in rows))
    lines.append(f"{'latency p50 / p99 ms':<24}" + "".join(
        f"{r['latency_ms'].get('p50', 0):>5.0f}/{r['latency_ms'].get('p99', 0):<4.0f}" for r in rows))
    lines.append(f"{'stale pairs dropped':<24}" + "".join(f"{100 * r['stale_share']:>9.1f}%" for r in rows))
    return "\n".join(lines)


def motion_added(rows: list) -> str:
    """`--ir-motion compare`: per preset, what IR motion compensation adds, as the difference of the preprocessing
    stage (and of the total) between the runs with it and without it. The `IR motion` row itself also counts the
    registration it replaces (the IR frame is registered and moved in one resampling), so it overstates the cost."""
    lines = []
    for on in rows:
        off = next((r for r in rows if r["preset"] == f"{on['preset']} off"), None)
        if off is None:
            continue
        added = on["cpu_ms_per_frame"]["preprocess"] - off["cpu_ms_per_frame"]["preprocess"]
        lines.append(f"{on['preset']}: IR motion compensation adds {added:.2f} ms of preprocessing CPU a fused frame "
                     f"({off['cpu_ms_per_frame']['preprocess']:.2f} -> {on['cpu_ms_per_frame']['preprocess']:.2f}; "
                     f"total {off['cpu_ms_total']:.2f} -> {on['cpu_ms_total']:.2f}; its own row "
                     f"{on['motion_ms_per_frame']:.2f}, registration included)")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="vga,720p,1080p",
                        help="comma-separated clip presets (vga, 720p, 1080p: LLVIP scenes with a 640x512 IR camera; "
                             "480p: the bundled clips)")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window per preset (default 30)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds run before measuring (default 5)")
    parser.add_argument("--model", default="default", help="model (default: the shipped student)")
    parser.add_argument("--backend", default="auto", help="backend (auto, onnxruntime, tensorrt, torch, torch-gpu)")
    parser.add_argument("--viewers", type=int, default=0, help="MJPEG viewers watching the stream (default 0)")
    parser.add_argument("--repeats", type=int, default=1, help="measure every preset this many times, interleaved, "
                                                                   "and report medians (default 1)")
    parser.add_argument("--temporal-filter", default="off", metavar="S",
                        help="run with `fusion run --temporal-filter S` (off, on or a strength; default off)")
    parser.add_argument("--ir-motion", choices=("auto", "flow", "off", "compare"), default="auto",
                        help="IR motion compensation (default auto: on, the IR clips are 9 fps); off without it; "
                             "compare: each preset with and without it, alternated, and what it adds")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.seconds <= 0:
        parser.error("--repeats must be at least 1 and --seconds positive")
    if not Path("/proc/self/task").is_dir():
        raise SystemExit("runtime.measure reads per-thread CPU time from /proc: Linux only")
    from runtime.assets.make_samples import PRESETS
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        raise SystemExit(f"unknown preset(s) {', '.join(unknown)}; choose from {', '.join(PRESETS)}")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        compare = args.ir_motion == "compare"
        for repeat in range(args.repeats):
            for preset in presets:     # sizes interleaved: a busy spell on a shared machine hits them alike
                modes = ("auto", "off") if compare else (args.ir_motion,)
                for mode in (modes if repeat % 2 == 0 else modes[::-1]):     # and the order alternated
                    row = measure(preset, args.seconds, args.warmup, args.model, args.backend, args.viewers,
                                  Path(tmp), args.temporal_filter, mode)
                    row["repeat"], row["ir_motion"] = repeat + 1, mode
                    if compare and mode == "off":
                        row["preset"] = f"{preset} off"
                    runs.append(row)
                    print(f"{row['preset']} (repeat {repeat + 1}): {row['fps']:.1f} fps, {row['cpu_ms_total']:.1f} "
                          f"CPU ms per frame", flush=True)
    labels = list(dict.fromkeys(r["preset"] for r in runs))
    rows = [median_row([r for r in runs if r["preset"] == label]) for label in labels]
    print(format_table(rows) + (f"\n(medians of {args.repeats} repeats)" if args.repeats > 1 else ""))
    if compare:
        print(motion_added(rows))
    if args.out:
        from runtime.imageio import write_json
        write_json(args.out, {"presets": rows, "runs": runs, "seconds": args.seconds, "model": args.model,
                              "backend": args.backend, "viewers": args.viewers,
                              "temporal_filter": args.temporal_filter, "ir_motion": args.ir_motion,
                              "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
