"""The stages' per-frame work and what flows between them: preprocess -> inference -> postprocess, on Packets.

    pairing ─> queue ─> preprocess ─> queue ─> inference ─> queue ─> output (colour, sinks, stats)

`FrameProcessor` holds what the three stages do to a frame (registration, resizing to the model size, float conversion,
inference, colour restored from the VIS chroma); `Handoff` moves Packets between the stage threads through bounded
queues (lossless for files, newest-wins for live sources). The orchestration is runtime.pipeline's.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np

from runtime.color import merge_ycrcb, split_ycrcb
from runtime.config import parse_hw
from runtime.errors import FusionError
from runtime.imageio import ir_to_float, to_uint8, vis_to_float, write_image
from runtime.sinks import OutputInfo, draw_overlay, output_error
from runtime.sources import Frame
from runtime.stats import StatsRecorder


@dataclass
class Packet:
    """One unit of work flowing through the stages."""

    index: int
    name: str
    ir: Optional[Frame]
    vis: Optional[Frame]
    t_capture: float                   # when the driving frame was captured (latency starts here)
    mode: str = "fused"                # fused | ir only | vis only
    pair_error_ms: Optional[float] = None
    model_ir: Any = None               # (1, 1, h, w) float32
    model_vis: Any = None              # (1, C, h, w) float32
    ycrcb: Any = None                  # VIS as YCrCb float32 at the output size, (H, W, 3) (its Y is replaced by
                                       # the fused one), or None for gray VIS
    ycrcb8: Any = None                 # instead, VIS as YCrCb uint8 at a native size above the model's
    out_size: Optional[tuple[int, int]] = None   # (H, W) of the output
    passthrough: Any = None            # RGB float image while a camera is lost
    fused: Any = None                  # model output
    vis_ref: Optional[Frame] = None    # IR motion compensation: the VIS frame taken nearest the IR frame's time
    seq: int = -1                      # order of leaving preprocessing (outputs are written in this order)


END = object()               # the end-of-stream marker passed down the queues


def parse_size(text: str) -> Optional[tuple[int, int]]:
    """'480x640' (H x W) -> (480, 640); 'native'/'auto'/'model' -> None."""
    return parse_hw(text, minimum=16, keywords=("", "none", "auto", "model", "native"))


class FrameProcessor:
    """What preprocess, inference and postprocess do to one Packet, for one backend and registration."""

    def __init__(self, backend, registration, clahe: bool = False, output_size: str = "auto",
                 source_uris: tuple = (None, None)):
        self.backend, self.registration = backend, registration
        self.clahe, self.output_size = clahe, output_size
        self.source_uris = source_uris            # (IR, VIS) as given, for the one-time aspect-ratio warning
        self.model_size: Optional[tuple[int, int]] = None
        self.output_native = False
        self.motion = None                 # runtime.motion.IrMotionCompensator when IR motion compensation is on
        self.temporal = None               # runtime.temporal_filter.TemporalFilter with --temporal-filter
        self.max_ref_gap_s = 0.025         # largest |t(VIS reference) - t(IR)| the compensation trusts
        self.stats: Optional[StatsRecorder] = None
        self._fit_aspect = False
        self._sizes: dict = {}

    def configure(self, imgsz: str, folder_mode: bool) -> None:
        """The model input size from the backend and --imgsz (raising for a mismatch), and the output size."""
        requested = parse_size(imgsz)
        fixed = self.backend.input_size
        native_requested = str(imgsz).strip().lower() == "native"
        if fixed is not None:
            if requested is not None and tuple(requested) != tuple(fixed):
                raise FusionError(f"the model takes {fixed[0]}x{fixed[1]} inputs but --imgsz is "
                                  f"{requested[0]}x{requested[1]}; drop --imgsz or export the model at that size "
                                  f"(or with --dynamic)")
            if native_requested:
                raise FusionError(f"--imgsz native needs a model exported with dynamic sizes; this one takes "
                                  f"{fixed[0]}x{fixed[1]} only")
            self.model_size = tuple(fixed)
        elif requested is not None:
            self.model_size = requested
        elif native_requested or (folder_mode and str(imgsz).lower() == "auto"):
            self.model_size = None      # each pair at its own size
        else:
            self.model_size = (480, 640)
            # A model that takes any size gets the camera's aspect ratio (640 wide), not a squashed 4:3 frame.
            self._fit_aspect = True
        output_size = self.output_size
        self.output_native = output_size == "native" or (output_size == "auto" and folder_mode)

    def resize(self, img: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
        """Output-side resizing (fused frames to the output size): area averaging when shrinking, else bilinear."""
        if img.shape[:2] == tuple(size_hw):
            return img
        shrinking = img.shape[0] > size_hw[0]
        return cv2.resize(img, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_AREA if shrinking else
                          cv2.INTER_LINEAR)

    def preprocess(self, packet: Packet) -> None:
        """Register, resize to the model size, IR to float (16-bit AGC), VIS to luminance + chroma."""
        if packet.mode != "fused":
            self.prepare_passthrough(packet)
            return
        self.registration.warn_if_stretched(packet.ir.image, packet.vis.image, *self.source_uris)
        fuses_frames = getattr(self.backend, "fuses_frames", False)   # torch-gpu converts raw frames on its device
        native_hw = self.registration.view_size(packet.ir.image, packet.vis.image)
        model_hw, out_native = self.sizes_for(native_hw)
        moving = self.motion is not None and packet.vis_ref is not None
        view = None
        if moving and self.registration.enabled and not fuses_frames:
            # Registered and moved in one resampling (runtime.motion): the raw IR frame goes to the compensation.
            view = self.registration.view_matrix(packet.ir.image, packet.vis.image, model_hw)
            ir, vis = packet.ir.image, self.registration.crop_vis(packet.vis.image)
        else:
            ir, vis = self.registration.apply(packet.ir.image, packet.vis.image,
                                              ir_hw=None if fuses_frames else model_hw)
        vis_model = vis if fuses_frames else resize_frame(vis, model_hw)
        if moving:
            # Warp at the smaller of the IR frame and the model input (the same result, less work).
            if view is None and ir.shape[0] * ir.shape[1] > model_hw[0] * model_hw[1] and not fuses_frames:
                ir = resize_frame(ir, model_hw)
            ir = self.compensate_motion(packet, ir, vis_model, model_hw, view)
        if self.temporal is not None:
            self._small_gray(packet.vis, vis_model)      # what the output stage measures the motion on
        if fuses_frames:
            packet.model_ir, packet.model_vis = ir, vis
            packet.out_size = native_hw if out_native else model_hw
            return
        ir_small = ir_to_float(resize_frame(ir, model_hw), clahe=self.clahe)
        vis_small = vis_to_float(vis_model)
        channels = self.backend.vis_channels
        packet.ycrcb8 = None
        if channels == 3:
            if vis_small.ndim == 2:
                vis_small = np.repeat(vis_small[:, :, None], 3, axis=2)
            packet.model_vis = np.ascontiguousarray(vis_small.transpose(2, 0, 1)[None])
            packet.ycrcb = None
        elif vis_small.ndim == 3:
            ycrcb_small = split_ycrcb(vis_small)
            packet.model_vis = np.ascontiguousarray(ycrcb_small[None, None, :, :, 0])
            if out_native and native_hw != model_hw:
                if vis.dtype == np.uint8 and native_hw[0] * native_hw[1] > model_hw[0] * model_hw[1]:
                    # Colour at the native size from the 8-bit frame: one uint8 conversion here and one back after
                    # the fused luminance is put in (4x less memory traffic than float at 720p/1080p).
                    packet.ycrcb8 = cv2.cvtColor(vis, cv2.COLOR_RGB2YCrCb)
                    packet.ycrcb = None
                else:
                    packet.ycrcb = split_ycrcb(vis_to_float(vis))
            else:
                packet.ycrcb = ycrcb_small
        else:
            packet.model_vis = np.ascontiguousarray(vis_small[None, None], dtype=np.float32)
            packet.ycrcb = None
        packet.model_ir = np.ascontiguousarray(ir_small[None, None], dtype=np.float32)
        packet.out_size = native_hw if out_native else model_hw

    def compensate_motion(self, packet: Packet, ir: np.ndarray, vis_model: np.ndarray, model_hw: tuple,
                          view: Optional[tuple] = None) -> np.ndarray:
        """The IR frame carried from its capture time to the VIS frame's (runtime.motion), or as held where the
        motion cannot be trusted. Counts `ir_motion_applied` / `ir_motion_held`; the `motion` series is its CPU time
        (this thread's: what it costs, not how long other stages kept it waiting). `vis_model` is the VIS view at the
        model size (the flow is measured on it, made smaller). With `view` (a homography's), `ir` is the raw frame and
        the series includes its registration, which it replaces."""
        t0 = time.thread_time()
        motion, ref = self.motion, packet.vis_ref
        now_small = self._small_gray(packet.vis, vis_model)
        t_small = time.thread_time() - t0
        if ref is packet.vis:
            ref_small = now_small
        else:
            ref_small = ref.meta.get("motion_small")
            if ref_small is None:      # a VIS frame that was never fused itself (dropped as stale)
                ref_small = self._small_gray(ref, resize_frame(self.registration.crop_vis(ref.image), model_hw))
        ir, result = motion.compensate(ir, vis_model, ref.image, packet.vis.t_media, ref.t_media, packet.ir.t_media,
                                       self.max_ref_gap_s, now_small=now_small, ref_small=ref_small, view=view)
        if self.stats is not None:
            self.stats.count("ir_motion_applied" if result.applied else "ir_motion_held")
            self.stats.add("motion", time.thread_time() - t0)
            self.stats.add("motion small frame", t_small)
            for piece, seconds in (result.cpu or {}).items():     # flow, fit, warp (runtime.measure prints them)
                self.stats.add(f"motion {piece}", seconds)
        return ir

    def _small_gray(self, frame: Frame, view: np.ndarray) -> np.ndarray:
        """The VIS frame at the flow resolution, made once per frame (it serves as `now` and later as a reference)."""
        small = frame.meta.get("motion_small")
        if small is None:
            small_gray = self.motion.small_gray if self.motion is not None else self.temporal.small_gray
            small = frame.meta["motion_small"] = small_gray(view)
        return small

    def filter_temporally(self, packet: Packet, y: np.ndarray) -> np.ndarray:
        """--temporal-filter on the fused luminance at the model size (runtime.temporal_filter), in output order.
        Counts `temporal_filtered` / `temporal_restarted`; the `temporal` series is its CPU time."""
        t0 = time.thread_time()
        small = packet.vis.meta.get("motion_small") if packet.vis is not None else None
        if small is None:
            self.temporal.reset()
            return y
        y, what = self.temporal.apply(y, small, packet.vis.t_media)
        if self.stats is not None:
            self.stats.count("temporal_filtered" if what == "filtered" else "temporal_restarted")
            self.stats.add("temporal", time.thread_time() - t0)
        return y

    def sizes_for(self, native_hw: tuple) -> tuple:
        """(model input (H, W), whether the output is at the native size) for frames of `native_hw`, cached.

        Dynamic models at the default size keep the frame's aspect ratio (640 wide, height rounded to the model's
        multiple). A fixed-size model fed a frame of another aspect ratio returns its output to the native size
        (output_size auto), so the fused stream is never squashed."""
        sizes = self._sizes.get(native_hw)
        if sizes is None:
            model_hw = self.model_size or native_hw
            if self._fit_aspect:
                multiple = max(8, int(getattr(self.backend, "multiple", 1) or 1))
                width = model_hw[1]
                height = max(multiple, int(round(width * native_hw[0] / native_hw[1] / multiple)) * multiple)
                model_hw = (height, width)
            out_native = self.output_native
            if self.output_size == "auto" and not out_native:
                aspect_model, aspect_native = model_hw[1] / model_hw[0], native_hw[1] / native_hw[0]
                out_native = abs(aspect_model / aspect_native - 1.0) > 0.02
            sizes = self._sizes[native_hw] = (tuple(model_hw), out_native)
        return sizes

    def sizes_used(self) -> dict:
        """{frame (H, W): model input (H, W)} for every frame size seen so far."""
        return {native: sizes[0] for native, sizes in self._sizes.items()}

    def prepare_passthrough(self, packet: Packet) -> None:
        frame = packet.ir if packet.ir is not None else packet.vis
        img = frame.image
        model_hw, out_native = self.sizes_for(tuple(img.shape[:2]))
        size = tuple(img.shape[:2]) if out_native else model_hw
        img = self.resize(img, size)
        packet.passthrough = ir_to_float(img) if packet.ir is not None else vis_to_float(img)
        packet.out_size = tuple(size)

    def infer(self, packet: Packet) -> None:
        if packet.mode != "fused":
            return
        if getattr(self.backend, "fuses_frames", False):   # uint8 RGB at the output size, made on the device
            model_hw, _ = self.sizes_for(tuple(packet.model_vis.shape[:2]))
            packet.fused = self.backend.fuse_frames(packet.model_ir, packet.model_vis, model_hw, packet.out_size,
                                                    clahe=self.clahe)
            return
        fused = self.backend.infer(packet.model_ir, packet.model_vis)
        expected = packet.model_vis.shape
        if fused.ndim != 4 or fused.shape[0] != 1 or fused.shape[1] != expected[1]:
            raise FusionError(f"the model returned an output of shape {tuple(fused.shape)} for inputs "
                              f"{tuple(expected)}; it is not a fusion model of this project")
        packet.fused = fused[0]

    def postprocess(self, packet: Packet) -> np.ndarray:
        """Fused luminance + VIS chroma -> RGB float32 [0, 1] at the output size."""
        if packet.mode != "fused":
            if self.temporal is not None:
                self.temporal.reset()          # a camera lost: the filter starts afresh when fusion resumes
            img = packet.passthrough
            return np.repeat(img[:, :, None], 3, axis=2) if img.ndim == 2 else img
        if packet.fused.dtype == np.uint8:   # already the output frame (torch-gpu)
            return packet.fused
        out_hw = packet.out_size
        if packet.fused.shape[0] == 3:
            rgb = np.clip(packet.fused.transpose(1, 2, 0), 0.0, 1.0)
            return self.resize(rgb, out_hw)
        y = packet.fused[0]
        if self.temporal is not None:
            y = self.filter_temporally(packet, y)
        if y.shape != tuple(out_hw):
            y = self.resize(y, out_hw)
        if packet.ycrcb8 is not None:
            ycrcb8 = packet.ycrcb8
            ycrcb8[..., 0] = cv2.convertScaleAbs(y, alpha=255.0)     # y is in [0, 1]: the model clamps it
            return cv2.cvtColor(ycrcb8, cv2.COLOR_YCrCb2RGB)
        if packet.ycrcb is None:
            return np.clip(y, 0.0, 1.0)
        return merge_ycrcb(y, packet.ycrcb)


def resize_frame(img: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """A camera frame to the model input size (H, W): bilinear up, and down to half the size; beyond that bilinear to
    twice the size and an exact 2x box filter.

    Area averaging is what a downscale wants, but OpenCV's INTER_AREA is fast only for integer factors: a 1256x706 VIS
    view (a 720p camera cropped to the IR overlap) to 640x352 took 5.1 ms, bilinear 0.5 ms. Down to half the size a
    bilinear tap already averages the 2x2 pixels around each sample (and at exactly 2x it *is* the box filter: equal
    to INTER_AREA, measured); further down (1080p) one bilinear step to twice the size and one exact 2x INTER_AREA
    step (its fast path) keep the anti-aliasing for ~1 ms instead of 3.6."""
    height, width = img.shape[:2]
    if (height, width) == tuple(size_hw):
        return img
    out_h, out_w = size_hw
    if height > 2 * out_h or width > 2 * out_w:
        img = cv2.resize(img, (2 * out_w, 2 * out_h), interpolation=cv2.INTER_LINEAR)
        return cv2.resize(img, (out_w, out_h), interpolation=cv2.INTER_AREA)
    return cv2.resize(img, (out_w, out_h), interpolation=cv2.INTER_LINEAR)


def unit_to_uint8(img: np.ndarray) -> np.ndarray:
    """float in [0, 1] -> uint8 in one OpenCV pass: the same values as runtime.imageio.to_uint8 (x255, rounded half
    to even, saturated), 0.05 ms instead of 0.3-3 ms at 640x480. Only for images already in [0, 1] (everything
    `_postprocess` returns): OpenCV takes |x| first, so negatives would not clip to 0; anything else goes to
    to_uint8."""
    if img.dtype == np.uint8:
        return img
    if img.dtype not in (np.float32, np.float64):
        return to_uint8(img)
    return cv2.convertScaleAbs(img, alpha=255.0)


class Handoff:
    """Moves Packets between the stage threads through bounded queues, and leaves at once on `abort`."""

    def __init__(self, abort: threading.Event, stats: StatsRecorder, live: bool):
        self.abort, self.stats, self.live = abort, stats, live

    def put(self, q: queue.Queue, item, force: bool = False) -> bool:
        while True:
            if self.abort.is_set() and not force:
                return False
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                if self.abort.is_set():
                    # Make room for the end marker: nothing in flight matters once we abort.
                    try:
                        q.get_nowait()
                    except queue.Empty:
                        pass

    def emit(self, q: queue.Queue, packet: Packet) -> bool:
        """Hand a pair to preprocessing. Files: wait for room (lossless). Live: replace a pair still waiting there,
        so preprocessing always starts from the newest frames (stale pairs are dropped and counted)."""
        if not self.live:
            return self.put(q, packet)
        while not self.abort.is_set():
            try:
                q.put_nowait(packet)
                return True
            except queue.Full:
                try:
                    q.get_nowait()
                    self.stats.count("stale_dropped_pairs")
                except queue.Empty:
                    pass
        return False

    def get(self, q: queue.Queue):
        while True:
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                if self.abort.is_set():
                    return END


class OutputStage:
    """The last stage: fused output to RGB uint8, the overlay where wanted, every sink, recorded pairs, and the
    statistics of each frame that came out. `health` gives each camera's state; `stop` ends the run at max_frames."""

    def __init__(self, work: FrameProcessor, sinks: list, stats: StatsRecorder, config, health, stop):
        self.work, self.sinks, self.stats, self.config = work, sinks, stats, config
        self.health, self.stop = health, stop
        self.recorded = 0
        self.progress = None            # a tqdm bar (folder mode), updated per frame

    def run(self, handoff: Handoff, in_queue: queue.Queue) -> None:
        """Write each packet, in the order preprocessing numbered them (`seq`): with several inference workers a
        later frame can finish first and waits here for the one before it."""
        pending: dict = {}
        next_seq = 0
        while True:
            packet = handoff.get(in_queue)
            if packet is END:
                return
            pending[packet.seq] = packet
            while next_seq in pending:
                self.write(pending.pop(next_seq))
                next_seq += 1

    def write(self, packet: Packet) -> None:
        """One frame out: RGB uint8, the overlay where wanted, every sink, the recorded pair, the statistics."""
        config = self.config
        if config.max_frames and self.stats.counters.get("frames_out", 0) >= config.max_frames:
            self.stop()           # live pipelines still have frames in flight: drain them unwritten
            return
        t0 = time.perf_counter()
        rgb = unit_to_uint8(self.work.postprocess(packet))
        t1 = time.perf_counter()
        self.stats.add("postprocess", t1 - t0)
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[:, :, None], 3, axis=2)
        info = self.info(packet) if self.sinks else None
        overlaid = None
        for sink in self.sinks:
            if config.overlay == "on" or (config.overlay == "auto" and sink.wants_overlay):
                overlaid = draw_overlay(rgb, info) if overlaid is None else overlaid
                sink.write(overlaid, info)
            else:
                sink.write(rgb, info)
        if config.record_pairs and packet.mode == "fused":
            record_pair(Path(config.record_pairs), f"{self.recorded:06d}", packet)
            self.recorded += 1
        now = time.monotonic()
        self.stats.add("output", time.perf_counter() - t1)
        self.stats.add("latency", now - packet.t_capture)
        self.stats.output_done(now)
        if self.progress is not None:
            self.progress.update(1)

    def info(self, packet: Packet) -> OutputInfo:
        info = OutputInfo(packet.index, packet.name, mode=packet.mode, pair_error_ms=packet.pair_error_ms)
        info.fps = self.stats.live_fps()
        info.stages_ms = {name: self.stats.recent_ms(name) for name in ("preprocess", "inference", "postprocess")}
        info.health = self.health()
        return info


def record_pair(root: Path, name: str, packet: Packet) -> None:
    """`--record-pairs`: the raw pair as captured (16-bit kept) to ROOT/ir and ROOT/vi under the same name."""
    try:
        write_image(root / "ir" / f"{name}.png", packet.ir.image)
        write_image(root / "vi" / f"{name}.png", packet.vis.image)
    except OSError as exc:
        raise output_error(f"recorded pair {name} to {root}", exc, folder=root) from None
