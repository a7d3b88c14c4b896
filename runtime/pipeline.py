"""The fusion pipeline: capture -> pairing -> preprocess -> inference -> output, each stage on its own thread.

    from runtime import FusionPipeline
    pipe = FusionPipeline(ir="cam0", vis="cam1", outputs=["fused.mp4", "mjpeg://:8090"], sync_ms=40)
    report = pipe.run()              # blocks until the sources end, stop() is called, or SIGINT in the CLI
    rgb = pipe.fuse(ir, vis)         # or fuse one pair synchronously (arrays as read by runtime.imageio)

`fusion run` builds exactly this object from its arguments. This module wires the pieces, each in its own module:

    capture IR  ──> FrameBuffer ─┐                                 ┌> inference ─┐
                                 ├─ pairing ─> q ─> preprocess ─> q ┤  (workers)  ├> q ─> output (in order:
    capture VIS ──> FrameBuffer ─┘  latest IR carried to the VIS    └> inference ─┘      colour, sinks, stats)
                                    time, or nearest within sync_ms

    runtime.capture   capture threads, FrameBuffers, reconnection, looping
    runtime.pairing   timestamp matching and the sync window (folders: pairing by name)
    runtime.motion    IR motion compensation (--ir-motion): the VIS history and the optical-flow warp
    runtime.stages    Packet, the per-frame work (FrameProcessor), the queues' handoff, the output stage

All queues are bounded. Live sources keep only their newest frames (latency stays bounded when the model is
slower than the cameras); files and folders are read losslessly, so a video in gives every frame out. A camera that
disconnects is reopened with backoff while the other keeps streaming, passed through unfused.
"""
from __future__ import annotations

import dataclasses
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import cv2
import numpy as np

from runtime.capture import CaptureWorker, capture_workers, open_sources, primary_role
from runtime.errors import FusionError
from runtime.imageio import write_json
from runtime.pairing import Pairer, pairs_to_fuse, read_pair
from runtime.registration import Registration
from runtime.sinks import Sink, ensure_writable_folder, open_sink, output_error
from runtime.sources import Frame, Source
from runtime.memory import TRIM_EVERY_S, release_free_memory, tune_allocator
from runtime.stages import END, FrameProcessor, Handoff, OutputStage, Packet
from runtime.stats import LIVE_WINDOW, StatsRecorder, format_report


# ----------------------------------------------------------------------------------------------------------- config
@dataclass
class RunConfig:
    """Everything `fusion run` can be told (YAML: configs/runtime/*.yaml; CLI flags override)."""

    ir: str = ""                        # IR source URI
    vis: str = ""                       # VIS source URI
    outputs: List[str] = field(default_factory=list)   # sink URIs
    model: str = "default"              # .onnx / .engine / model folder / "default"
    backend: str = "auto"               # auto | tensorrt | onnxruntime | torch
    device: str = "auto"                # auto | cpu (ONNX Runtime providers / torch device)
    threads: int = 0                    # inference threads (0: the runtime's default)
    inference_workers: int = 0          # frames inferred at once (0: 2 for single-threaded ORT on 2+ cores, else 1)
    imgsz: str = "auto"                 # model input HxW, "native" (the VIS frame size), or auto
    output_size: str = "auto"           # model | native | auto (native in folder mode, model otherwise)
    sync_ms: float = 60.0               # largest IR/VIS time difference accepted as a pair
    primary: str = "auto"               # which camera drives the output: auto | ir | vis
    ir_motion: str = "auto"             # carry the IR frame to the VIS frame's time: auto | flow | off
    temporal_filter: str = "off"        # motion-compensated filter on the fused luminance: off | on | strength in [0, 1)
    homography: Optional[str] = None    # IR->VIS homography file from `fusion calibrate`
    crop: bool = True                   # crop to the IR/VIS overlap after warping
    clahe: bool = False                 # CLAHE after the 16-bit AGC of radiometric IR
    realtime: bool = False              # play files at their frame rate and drop frames like a camera
    loop: bool = False                  # restart finite sources at their end (demos, soak tests)
    fps: float = 30.0                   # nominal frame rate of image-folder sources
    ir_fps: float = 0.0                 # override the IR source's nominal rate (0: as reported)
    vis_fps: float = 0.0
    output_fps: float = 0.0             # frame rate written into video files (0: the driving camera's)
    segment_minutes: float = 0.0        # video files: a new file (NAME_0000.mp4, ...) every N minutes of video (0: one)
    max_frames: int = 0                 # stop after this many fused frames (0: no limit)
    duration_s: float = 0.0             # stop after this many seconds (0: no limit)
    record_pairs: Optional[str] = None  # save the synchronised raw pairs here (ir/ and vi/, same stems)
    stats: Optional[str] = None         # write the statistics JSON here at exit
    headless: bool = False              # no window
    bind: str = "127.0.0.1"             # address MJPEG outputs listen on
    auth_token: Optional[str] = None    # MJPEG stream token (else $FUSION_STREAM_TOKEN; generated beyond loopback)
    max_clients: int = 8                # concurrent MJPEG viewers (503 beyond)
    overlay: str = "auto"               # auto (display and MJPEG) | on | off
    image_ext: str = ".png"             # image-folder outputs
    queue_size: int = 0                 # depth of each inter-stage queue (0: 1 for live sources, 2 for files)
    reconnect_max_s: float = 5.0        # longest wait between reconnection attempts
    on_loss: str = "passthrough"        # while a camera is lost: passthrough (show the other) | pause
    resume: bool = False                # folder mode: skip pairs whose fused image already exists
    names: Optional[str] = None         # folder mode: a split file (one name per line) choosing and ordering pairs
    verbose: bool = True


def redacted_config(config: RunConfig) -> dict:
    """The config as plain data for files and the stats page: the stream token is never written anywhere."""
    from runtime.config import config_to_dict
    data = config_to_dict(config)
    if data.get("auth_token"):
        data["auth_token"] = "<redacted>"
    return data


# --------------------------------------------------------------------------------------------------------- pipeline
class FusionPipeline:
    """IR + VIS sources in, fused colour frames out to any number of sinks. See the module docstring.

    Give a RunConfig, keyword overrides of its fields, or both. Ready-made objects can replace what the config
    would open: `ir_source`/`vis_source` (runtime.sources.Source), `backend` (runtime.backends.Backend), `sinks`.
    """

    def __init__(self, config: Optional[RunConfig] = None, *, ir_source: Optional[Source] = None,
                 vis_source: Optional[Source] = None, backend=None, sinks: Optional[List[Sink]] = None,
                 **overrides):
        if isinstance(backend, str):   # the backend's name (a config field), not a loaded Backend
            overrides["backend"], backend = backend, None
        config = dataclasses.replace(config or RunConfig(), **overrides) if overrides else (config or RunConfig())
        self.config = config
        tune_allocator()        # before the backend and the stage threads allocate (arenas are picked per thread)
        if config.on_loss not in ("passthrough", "pause"):
            raise FusionError(f"on_loss must be 'passthrough' or 'pause', got '{config.on_loss}'")
        if config.primary not in ("auto", "ir", "vis"):
            raise FusionError(f"primary must be auto, ir or vis, got '{config.primary}'")
        if config.output_size not in ("auto", "model", "native"):
            raise FusionError(f"output size must be auto, model or native, got '{config.output_size}'")
        if str(config.ir_motion).lower() not in ("auto", "flow", "off"):
            raise FusionError(f"--ir-motion must be auto, flow or off, got '{config.ir_motion}'")
        from runtime.temporal_filter import parse_strength
        self.temporal_strength = parse_strength(config.temporal_filter)
        if config.inference_workers < 0:
            raise FusionError(f"--inference-workers must be 0 (auto) or more, got {config.inference_workers}")
        if config.sync_ms <= 0:
            raise FusionError(f"--sync-ms must be positive, got {config.sync_ms}")
        if config.segment_minutes < 0:
            raise FusionError(f"--segment-minutes must be positive (0: one file), got {config.segment_minutes:g}")
        self.stats = StatsRecorder()
        self._stop = threading.Event()       # finish: stop capturing, drain what is in flight
        self._abort = threading.Event()      # fail: leave at once
        self._errors: List[BaseException] = []
        self._given_sources = (ir_source, vis_source)
        self._given_sinks = sinks
        self.backend = backend
        self._owns_backend = backend is None
        self.sinks: List[Sink] = []
        self.registration = Registration.from_file(config.homography, crop=config.crop)
        self.folder_mode = ir_source is None and vis_source is None and _is_dir(config.ir) and _is_dir(config.vis)
        if self.temporal_strength and self.folder_mode:
            raise FusionError("--temporal-filter smooths video; image folders are fused as independent pairs "
                              "(drop --temporal-filter)")
        if config.names and not self.folder_mode:
            raise FusionError("--names picks pairs of image folders; it needs --ir and --vis to be folders")
        if config.names and not Path(config.names).is_file():
            raise FusionError(f"--names {config.names} is not a file; give a list of pair names, one per line "
                              f"(like a dataset's test.txt)")
        self.work = FrameProcessor(backend, self.registration, clahe=config.clahe, output_size=config.output_size,
                              source_uris=(config.ir, config.vis))
        self.work.stats = self.stats
        self.history = None                  # runtime.motion.VisHistory while IR motion compensation is on
        self.output = OutputStage(self.work, self.sinks, self.stats, config, self._health, self.stop)
        self.workers: List[CaptureWorker] = []
        self.primary_role = "vis"
        self.live = False
        self._threads: List[threading.Thread] = []
        self.buffers: dict = {}
        self.handoff = Handoff(self._abort, self.stats, live=False)

    # -------------------------------------------------------------------------------------------------- public API
    def stop(self) -> None:
        """Finish cleanly: stop capturing, fuse what is in flight, finalise the outputs (safe from any thread)."""
        self._stop.set()

    def abort(self) -> None:
        """Leave as soon as possible, dropping frames in flight (outputs are still finalised)."""
        self._abort.set()
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def fuse(self, ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
        """Fuse one pair synchronously: raw arrays (uint8/uint16 or float [0, 1]; IR (H, W), VIS (H, W[, 3]) RGB).
        Returns RGB (or gray) float32 in [0, 1] at the output size."""
        self._ensure_backend()
        now = time.monotonic()
        packet = Packet(0, "pair", Frame(ir, 0.0, now, 0), Frame(vis, 0.0, now, 0), now)
        self.work.preprocess(packet)
        self.work.infer(packet)
        out = self.work.postprocess(packet)
        return out.astype(np.float32) / 255.0 if out.dtype == np.uint8 else out

    @property
    def recorded(self) -> int:
        """Pairs saved by --record-pairs so far."""
        return self.output.recorded

    def _health(self) -> dict:
        return {w.role: w.state for w in self.workers}

    @property
    def model_size(self) -> Optional[tuple[int, int]]:
        """The model input (H, W), or None when each frame runs at its own size."""
        return self.work.model_size

    def run(self) -> dict:
        """Run until the sources end, `max_frames`/`duration_s` is reached or `stop()` is called.
        Returns the statistics report (also written to `config.stats`). Raises the first error of any stage."""
        config = self.config
        tune_allocator()
        cv_threads = cv2.getNumThreads()
        if (os.cpu_count() or 1) <= 4:
            # One thread budget: the stages are the parallelism. OpenCV's own pool would split each resize or
            # remap across cores that inference holds, and wait for them (measured on 2 cores: IR motion 6.0 ms a
            # frame with OpenCV's 2 threads, 1.4 ms with 1).
            cv2.setNumThreads(1)
        try:
            self._check_output_paths()
            self._ensure_backend()
            self._open_sinks()
            stages = self._start_stages()
            deadline = time.monotonic() + config.duration_s if config.duration_s > 0 else None
            output_thread = stages[-1]
            next_trim = time.monotonic() + TRIM_EVERY_S
            while output_thread.is_alive():
                output_thread.join(0.1)
                if time.monotonic() >= next_trim:
                    release_free_memory()
                    next_trim = time.monotonic() + TRIM_EVERY_S
                if deadline is not None and time.monotonic() >= deadline:
                    self.stop()
                if any(getattr(sink, "stop_requested", False) for sink in self.sinks):
                    self.stop()
                if self._errors:
                    self._abort.set()
                    self._stop.set()
            for thread in stages:
                thread.join(5.0)
            for worker in self.workers:
                worker.join(5.0)
                if worker.error is not None and not isinstance(worker.error, (KeyboardInterrupt,)):
                    self._errors.append(worker.error)
        except BaseException:
            self.abort()
            for thread in self._threads:      # let the output stage leave before its sinks are closed
                thread.join(2.0)
            raise
        finally:
            cv2.setNumThreads(cv_threads)
            self._close_sinks()
            if self.output.progress is not None:
                self.output.progress.close()
        report = self.report()
        if self._owns_backend and self.backend is not None:
            self.backend.close()
        if config.stats:
            try:
                write_json(config.stats, report)
            except OSError as exc:
                self._errors.append(output_error(f"statistics {config.stats}", exc))
        if self._errors:
            raise self._errors[0]
        return report

    def _check_output_paths(self) -> None:
        """Statistics and recorded pairs are written to paths given up front: prove them writable before any work
        (a bad path is a one-line error now, not after an hour's run)."""
        config = self.config
        if config.stats:
            stats = Path(config.stats)
            if stats.is_dir():
                raise FusionError(f"--stats {stats} is a folder; give a file name such as {stats / 'stats.json'}")
            ensure_writable_folder(stats.parent, f"statistics {stats}")
        if config.record_pairs:
            for sub in ("ir", "vi"):
                ensure_writable_folder(Path(config.record_pairs, sub), f"recorded pairs to {config.record_pairs}")

    def report(self) -> dict:
        report = self.stats.snapshot()
        report["mode"] = "folder" if self.folder_mode else "stream"
        report["primary"] = self.primary_role
        report["model"] = self.backend.describe() if self.backend is not None else None
        report["model_size"] = list(self.model_size) if self.model_size else "native"
        report["sync_ms"] = self.config.sync_ms
        report["outputs"] = [sink.describe() for sink in self.sinks]
        if self.config.record_pairs:
            report["recorded_pairs"] = self.output.recorded
        report["config"] = redacted_config(self.config)
        return report

    def summary(self) -> str:
        return format_report(self.report())

    # --------------------------------------------------------------------------------------------------- set-up
    def _log(self, message: str) -> None:
        if self.config.verbose:
            print(message, flush=True)

    def _ensure_backend(self) -> None:
        if self.backend is None:
            from runtime.backends import create_backend
            self.backend = create_backend(self.config.model, self.config.backend, self.config.threads,
                                          self.config.device)
        self.work.backend = self.backend
        self.work.configure(self.config.imgsz, self.folder_mode)

    def _open_sinks(self) -> None:
        if self._given_sinks is not None:
            self.sinks = list(self._given_sinks)
            return
        fps = self.config.output_fps or 30.0
        outputs = list(self.config.outputs)
        if not outputs and not self.config.headless and not self.folder_mode:
            from runtime.sinks import gui_available
            if gui_available() and (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
                outputs = ["display://0"]
        opened: List[Sink] = []
        try:
            for uri in outputs:
                if self.config.headless and str(uri).startswith("display"):
                    continue
                sink = open_sink(uri, fps=fps, bind=self.config.bind, image_ext=self.config.image_ext,
                                 stats=self._live_stats, auth_token=self.config.auth_token,
                                 max_clients=self.config.max_clients,
                                 segment_s=60.0 * float(self.config.segment_minutes or 0.0))
                opened.append(sink)
                if sink.kind == "mjpeg":
                    if sink.token_generated:
                        print(sink.announcement(), flush=True)   # even with -q: nobody else knows the token
                    else:
                        self._log(sink.announcement())
                if getattr(sink, "warning", None):
                    print(sink.warning, file=sys.stderr, flush=True)
        except BaseException:
            for sink in opened:
                sink.close()
            raise
        if not opened and self.folder_mode:
            raise FusionError("folder mode writes one fused image per pair: give --output OUTDIR")
        self.sinks = opened

    def _live_stats(self) -> dict:
        report = self.stats.snapshot(recent=LIVE_WINDOW)
        report["window_samples"] = LIVE_WINDOW
        report["fps_live"] = round(self.stats.live_fps(), 2)
        report.pop("events", None)
        return report

    def _close_sinks(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # one broken sink must not keep the others from being finalised
                self._errors.append(exc)

    def _start_stages(self) -> List[threading.Thread]:
        if not self.folder_mode:
            self._start_capture()
        # Live: one slot per queue, so a frame never waits behind another for the slowest stage (latency); files:
        # two, so a stage never idles while the one before hands over (throughput).
        size = self.config.queue_size or (1 if (not self.folder_mode and self.live) else 2)
        q_pre: queue.Queue = queue.Queue(size)
        q_inf: queue.Queue = queue.Queue(size)
        q_out: queue.Queue = queue.Queue(size)
        self.handoff.live = self.live and not self.folder_mode
        self.output.sinks = self.sinks
        if self.folder_mode:
            producer = threading.Thread(target=self._guard, args=(self._folder_reader, q_pre), name="folder-reader",
                                        daemon=True)
        else:
            producer = threading.Thread(target=self._guard, args=(self._pair, q_pre), name="pairing", daemon=True)
        workers = self.inference_workers()
        # Live: a pair is prepared when a worker can take it (one waits prepared beside a single worker, so
        # preprocessing overlaps inference; with several workers a free one is usually there).
        self._slots = threading.Semaphore(workers + 1 if workers == 1 else workers)
        self._workers_left = workers
        self._workers_lock = threading.Lock()
        threads = [
            producer,
            threading.Thread(target=self._guard, args=(self._stage, q_pre, q_inf, self.work.preprocess, "preprocess"),
                             name="preprocess", daemon=True),
        ]
        threads += [threading.Thread(target=self._guard, args=(self._infer_worker, q_inf, q_out),
                                     name="inference" if n == 0 else f"inference-{n + 1}", daemon=True)
                    for n in range(workers)]
        threads.append(threading.Thread(target=self._guard, args=(self.output.run, self.handoff, q_out),
                                        name="output", daemon=True))
        self._threads = threads
        for thread in threads:
            thread.start()
        return threads

    def _start_capture(self) -> None:
        config = self.config
        ir_source, vis_source = open_sources(config, *self._given_sources)
        self.primary_role = primary_role(config, ir_source, vis_source)
        rate = (config.ir_fps or ir_source.fps) if self.primary_role == "ir" else (config.vis_fps or vis_source.fps)
        if not config.output_fps:
            for sink in self.sinks:
                if hasattr(sink, "fps") and rate:
                    sink.fps = rate
        if not self.sinks:
            self._log("no outputs: fusing for the statistics only (add --output to keep the frames)")
        self._log(f"IR:  {ir_source.describe()}\nVIS: {vis_source.describe()}\n"
                  f"model: {self.backend.label()}  pairing on {self.primary_role.upper()} within "
                  f"{config.sync_ms:g} ms")
        self.workers, self.buffers = capture_workers(config, {"ir": ir_source, "vis": vis_source}, self.primary_role,
                                                     self.stats, self._stop)
        self._setup_motion(config.ir_fps or ir_source.fps, config.vis_fps or vis_source.fps)
        self._setup_temporal_filter()
        self.live = any(w.source.live or config.realtime for w in self.workers)
        for worker in self.workers:
            worker.start()

    def _setup_motion(self, ir_fps: float, vis_fps: float) -> None:
        """--ir-motion: with a VIS camera driving and (auto) a slower IR camera, pair each VIS frame with the latest
        IR frame and carry it to the VIS frame's time (runtime.motion)."""
        from runtime.motion import IrMotionCompensator, VisHistory, resolve_mode
        self.history = None
        self.work.motion = None
        if resolve_mode(self.config.ir_motion, ir_fps, vis_fps, self.primary_role):
            self.history = VisHistory()
            self.work.motion = IrMotionCompensator()
            self.work.max_ref_gap_s = 0.75 / (vis_fps or 30.0)
            self._log(f"IR motion compensation on (IR {ir_fps:g} fps, VIS {vis_fps:g} fps): each VIS frame takes the "
                      f"latest IR frame, moved to its time with optical flow (--ir-motion off: nearest-time pairing)")

    def _setup_temporal_filter(self) -> None:
        """--temporal-filter: the output stage blends each fused luminance with the previous output moved along the
        VIS motion (runtime.temporal_filter)."""
        self.work.temporal = None
        if not self.temporal_strength:
            return
        if getattr(self.backend, "fuses_frames", False):
            raise FusionError(f"--temporal-filter works on the fused luminance on the CPU; the {self.backend.name} "
                              f"backend makes whole output frames on its device: use --backend onnxruntime or "
                              f"tensorrt with it, or drop --temporal-filter")
        if getattr(self.backend, "vis_channels", 1) != 1:
            raise FusionError("--temporal-filter works on the fused luminance; this model fuses RGB (3 channels in and "
                              "out): use a luminance model (the shipped ones are) or drop --temporal-filter")
        from runtime.temporal_filter import TemporalFilter
        self.work.temporal = TemporalFilter(self.temporal_strength)
        self._log(f"temporal filter on (strength {self.temporal_strength:g}): each fused frame is blended with the "
                  f"previous one moved along the VIS motion where they differ by less than the threshold")

    def _guard(self, target, *args) -> None:
        try:
            target(*args)
        except BaseException as exc:
            self._errors.append(exc)
            self._abort.set()
            self._stop.set()
        finally:
            # Always pass the end marker on so the downstream stages finish and the sinks get closed.
            out_queue = args[-1] if target in (self._pair, self._folder_reader) else (
                args[1] if target == self._stage else None)
            if out_queue is not None:
                self.handoff.put(out_queue, END, force=True)

    # -------------------------------------------------------------------------------------------------- stages
    def _folder_reader(self, out_queue: queue.Queue) -> None:
        from runtime.sinks import ImageFolderSink
        done_folders = [sink for sink in self.sinks if isinstance(sink, ImageFolderSink)]
        pairs, skipped = pairs_to_fuse(self.config, done_folders)
        if skipped:
            self.stats.count("skipped_done", skipped)
        self._log(f"folder mode: {len(pairs)} pairs to fuse ({skipped} already done) from "
                  f"{self.config.ir} and {self.config.vis}; model: {self.backend.label()}")
        if self.config.verbose:
            from tqdm import tqdm
            self.output.progress = tqdm(total=len(pairs), unit="pair", desc="fusing", leave=False)
        for index, pair in enumerate(pairs):
            if self._stop.is_set() or (self.config.max_frames and index >= self.config.max_frames):
                break
            if not self.handoff.put(out_queue, read_pair(index, pair, self.stats)):
                return

    def _pair(self, out_queue: queue.Queue) -> None:
        pairer = Pairer(self.config, self.stats, self.buffers, {w.role: w for w in self.workers}, self.primary_role,
                        self.live, self._stop, lambda packet: self.handoff.emit(out_queue, packet), self.stop,
                        history=self.history)
        pairer.run()

    def inference_workers(self) -> int:
        """How many frames are inferred at once (--inference-workers; 0: what the backend suggests). Each worker runs
        one frame on its own thread; the output stage writes them in order."""
        return self.config.inference_workers or max(1, int(getattr(self.backend, "parallel_frames", 1) or 1))

    def _stage(self, in_queue: queue.Queue, out_queue: queue.Queue, work: Callable[[Packet], None], name: str):
        pull = self.live and not self.folder_mode and name == "preprocess"
        seq = 0
        while True:
            if pull:
                # Live: prepare a pair only when an inference worker is free to take it at once, so it is the newest
                # pair when inference starts (what waits, waits as a capture, not in a queue).
                while not self._slots.acquire(timeout=0.1):
                    if self._abort.is_set():
                        return
            packet = self.handoff.get(in_queue)
            if packet is END:
                return
            t0 = time.perf_counter()
            work(packet)
            self.stats.add(name, time.perf_counter() - t0)
            packet.seq, seq = seq, seq + 1
            if not self.handoff.put(out_queue, packet):
                return

    def _infer_worker(self, in_queue: queue.Queue, out_queue: queue.Queue) -> None:
        """One inference worker. The end marker is passed on to the next worker; the last one out forwards it."""
        gated = self.live and not self.folder_mode
        try:
            while True:
                packet = self.handoff.get(in_queue)
                if packet is END:
                    self.handoff.put(in_queue, END, force=True)
                    return
                t0 = time.perf_counter()
                self.work.infer(packet)
                self.stats.add("inference", time.perf_counter() - t0)
                if gated:
                    self._slots.release()
                if not self.handoff.put(out_queue, packet):
                    return
        finally:
            with self._workers_lock:
                self._workers_left -= 1
                last = self._workers_left == 0
            if last:
                self.handoff.put(out_queue, END, force=True)

def _is_dir(uri: str) -> bool:
    return bool(uri) and "://" not in str(uri) and Path(uri).is_dir()
