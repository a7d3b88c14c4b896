"""Outputs as URIs (jetson-utils style): one factory, `open_sink(uri)`, several at once.

    display://0, display        a window with an overlay (FPS, per-stage latency, IR/VIS health); q or Esc quits
    out.mp4, out.avi, out.mkv   a video file, written under a temporary name and renamed when finalised, so it is
                                playable after Ctrl-C and never half-written under its final name
    OUTDIR/                     a folder of images (<frame name>.png: the input stems in folder mode)
    mjpeg://:8090, http://:8090 an MJPEG stream for browsers, bound to 127.0.0.1 unless --bind says otherwise
    rtp://HOST:PORT, udp://...  H.264 over RTP/UDP through GStreamer (where OpenCV has it)
    rtsp://HOST:PORT/PATH       pushed to an RTSP server (e.g. mediamtx) through GStreamer's rtspclientsink
    "appsrc ! ... "             a raw GStreamer pipeline string

Sinks receive RGB uint8 frames and an `OutputInfo` (frame name, index, and what the overlay shows).
"""
from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np

from runtime.errors import FusionError
from runtime.imageio import write_image
from runtime.sources import VIDEO_EXTENSIONS, gstreamer_available

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class OutputInfo:
    """What a sink knows about a frame besides its pixels."""

    index: int
    name: str
    fps: float = 0.0
    stages_ms: dict = field(default_factory=dict)
    health: dict = field(default_factory=dict)      # role -> "ok" / "lost" / "ended" / "reconnecting"
    pair_error_ms: Optional[float] = None
    mode: str = "fused"                             # "fused" or "ir only" / "vis only" while a camera is lost


STAGE_LABELS = {"preprocess": "pre", "inference": "infer", "postprocess": "post"}


def draw_overlay(rgb: np.ndarray, info: OutputInfo) -> np.ndarray:
    """A copy of `rgb` with the status drawn top-left on a dark band: rate and mode, per-stage milliseconds, pairing
    error, and each camera's health (green when streaming, red when lost or reconnecting)."""
    out = rgb.copy()
    scale = max(0.45, min(out.shape[1], 1920) / 1280.0)
    font, thickness = cv2.FONT_HERSHEY_SIMPLEX, 1 if scale < 0.9 else 2
    line_height = int(cv2.getTextSize("Ag", font, scale, thickness)[0][1] * 1.9) + 2
    white, green, red = (255, 255, 255), (90, 255, 90), (255, 70, 70)
    rows: list[list[tuple[str, tuple]]] = [[(f"{info.fps:.1f} fps  {info.mode}", white)]]
    if info.stages_ms:
        rows.append([("  ".join(f"{STAGE_LABELS.get(k, k)} {v:.1f}" for k, v in info.stages_ms.items()) + " ms",
                      white)])
    if info.pair_error_ms is not None:
        rows.append([(f"sync {info.pair_error_ms:+.0f} ms", white)])
    if info.health:
        rows.append([(f"{role.upper()} {state.upper()}", green if state == "ok" else red)
                     for role, state in info.health.items()])
    widths = [sum(cv2.getTextSize(t, font, scale, thickness)[0][0] + 14 for t, _ in row) for row in rows]
    band_w, band_h = min(out.shape[1], max(widths) + 10), min(out.shape[0], line_height * len(rows) + 8)
    out[:band_h, :band_w] = (out[:band_h, :band_w].astype(np.uint16) * 2 // 5).astype(out.dtype)
    y = line_height
    for row in rows:
        x = 8
        for text, colour in row:
            cv2.putText(out, text, (x, y), font, scale, colour, thickness, cv2.LINE_AA)
            x += cv2.getTextSize(text, font, scale, thickness)[0][0] + 14
        y += line_height
    return out


class Sink(ABC):
    uri: str = ""
    kind: str = "sink"
    wants_overlay: bool = False
    stop_requested: bool = False      # a display window closed by the user

    @abstractmethod
    def write(self, rgb: np.ndarray, info: OutputInfo) -> None:
        """Show, encode or send one fused RGB uint8 frame."""

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return f"{self.kind} {self.uri}"


# --------------------------------------------------------------------------------------------------------- video file
FOURCC_BY_SUFFIX = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "XVID"}


class VideoFileSink(Sink):
    """A video file, opened on the first frame (its size), finalised and renamed into place by `close()`."""

    kind = "video file"

    def __init__(self, path: str | os.PathLike, fps: float = 30.0, fourcc: Optional[str] = None):
        self.path = Path(path)
        self.uri = str(path)
        suffix = self.path.suffix.lower()
        if suffix not in VIDEO_EXTENSIONS:
            raise FusionError(f"cannot write video '{self.path}': use one of {', '.join(FOURCC_BY_SUFFIX)}")
        self.fourcc = fourcc or FOURCC_BY_SUFFIX.get(suffix, "mp4v")
        self.fps = fps if fps and fps > 0 else 30.0
        parent = self.path.parent
        if parent and not parent.exists():
            parent.mkdir(parents=True, exist_ok=True)
        if not os.access(parent or ".", os.W_OK):
            raise FusionError(f"cannot write to {parent}: no permission")
        self.tmp_path = self.path.with_name(f".{self.path.stem}.partial{suffix}")
        self.writer: Optional[cv2.VideoWriter] = None
        self.size: Optional[tuple[int, int]] = None
        self.frames = 0

    def write(self, rgb: np.ndarray, info: OutputInfo) -> None:
        height, width = rgb.shape[:2]
        if self.writer is None:
            self.size = (width, height)
            self.writer = cv2.VideoWriter(str(self.tmp_path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*self.fourcc),
                                          float(self.fps), (width, height))
            if not self.writer.isOpened():
                self.writer = None
                raise FusionError(f"OpenCV cannot write {self.path.suffix} video with codec {self.fourcc}; use .mp4 "
                                  f"or .avi")
        elif (width, height) != self.size:
            rgb = cv2.resize(rgb, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else cv2.cvtColor(
            rgb, cv2.COLOR_GRAY2BGR))
        self.frames += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()  # writes the container index (the mp4 moov atom): the file becomes playable
            self.writer = None
            os.replace(self.tmp_path, self.path)


# ------------------------------------------------------------------------------------------------------- image folder
class ImageFolderSink(Sink):
    """One image per frame, named after the frame (the input stem in folder mode, else the frame index)."""

    kind = "image folder"

    def __init__(self, folder: str | os.PathLike, ext: str = ".png"):
        self.folder = Path(folder)
        self.uri = str(folder)
        self.ext = ext if ext.startswith(".") else f".{ext}"
        if self.folder.exists() and not self.folder.is_dir():
            raise FusionError(f"output {self.folder} exists and is not a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.frames = 0

    def write(self, rgb: np.ndarray, info: OutputInfo) -> None:
        write_image(self.folder / f"{info.name}{self.ext}", rgb)
        self.frames += 1


# ------------------------------------------------------------------------------------------------------------ display
def gui_available() -> bool:
    """True when this OpenCV can open windows (the pip `headless` wheel cannot)."""
    match = re.search(r"GUI:\s*(\S+)", cv2.getBuildInformation())
    return bool(match and match.group(1).upper() not in ("NONE", "NO"))


class DisplaySink(Sink):
    kind = "display"
    wants_overlay = True

    def __init__(self, title: str = "IR+VIS fusion"):
        if not gui_available():
            raise FusionError("this OpenCV has no window support (opencv-python-headless); use --headless with "
                              "--output mjpeg://:8090 to watch in a browser, or install opencv-python")
        if os.name == "posix" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise FusionError("no display to open a window on (DISPLAY is not set); use --headless, or "
                              "--output mjpeg://:8090 to watch in a browser")
        self.title = title
        self.uri = "display://0"
        cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)

    def write(self, rgb: np.ndarray, info: OutputInfo) -> None:
        cv2.imshow(self.title, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), 27):
            self.stop_requested = True
        try:
            if cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
                self.stop_requested = True
        except cv2.error:
            pass

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)
        except cv2.error:
            pass


# -------------------------------------------------------------------------------------------------------------- MJPEG
class MjpegSink(Sink):
    kind = "mjpeg"
    wants_overlay = True

    def __init__(self, host: str, port: int, stats: Optional[Callable[[], dict]] = None, quality: int = 80):
        from runtime.mjpeg import MjpegServer
        self.server = MjpegServer(host, port, quality=quality, stats=stats)
        self.uri = self.server.url

    def write(self, rgb: np.ndarray, info: OutputInfo) -> None:
        self.server.publish(rgb)

    def close(self) -> None:
        self.server.close()


# ---------------------------------------------------------------------------------------------------------- GStreamer
def gstreamer_encoder() -> str:
    """The H.264 encoder element: the Jetson hardware one when its plugin exists, else x264."""
    if os.path.exists("/usr/lib/aarch64-linux-gnu/gstreamer-1.0/libgstnvvideo4linux2.so"):
        return "nvvidconv ! nvv4l2h264enc insert-sps-pps=true idrinterval=30 ! h264parse"
    return "x264enc tune=zerolatency speed-preset=ultrafast bitrate=4000 key-int-max=30 ! h264parse"


def network_pipeline(uri: str) -> str:
    """The appsrc pipeline streaming to rtp://, udp:// or rtsp:// (RTSP needs a server to push to)."""
    match = re.fullmatch(r"(rtp|udp|rtsp)://([^:/]+)?:(\d+)(/.*)?", uri)
    if not match:
        raise FusionError(f"output '{uri}' should look like rtp://HOST:PORT, udp://HOST:PORT or rtsp://HOST:PORT/PATH")
    scheme, host, port, path = match.group(1), match.group(2) or "127.0.0.1", match.group(3), match.group(4) or ""
    head = f"appsrc ! videoconvert ! {gstreamer_encoder()}"
    if scheme == "rtsp":
        return f"{head} ! rtspclientsink location=rtsp://{host}:{port}{path}"
    return f"{head} ! rtph264pay config-interval=1 pt=96 ! udpsink host={host} port={port} sync=false async=false"


class GStreamerSink(Sink):
    kind = "gstreamer"

    def __init__(self, uri: str, pipeline: str, fps: float = 30.0):
        if not gstreamer_available():
            raise FusionError(f"output '{uri}' needs OpenCV built with GStreamer, and this OpenCV has none; use "
                              f"--output mjpeg://:8090 instead, or the JetPack OpenCV on a Jetson")
        self.uri, self.pipeline, self.fps = uri, pipeline, fps or 30.0
        self.writer: Optional[cv2.VideoWriter] = None

    def write(self, rgb: np.ndarray, info: OutputInfo) -> None:
        if self.writer is None:
            height, width = rgb.shape[:2]
            self.writer = cv2.VideoWriter(self.pipeline, cv2.CAP_GSTREAMER, 0, float(self.fps), (width, height))
            if not self.writer.isOpened():
                raise FusionError(f"GStreamer could not start '{self.pipeline}' (check it with gst-launch-1.0)")
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None


# ------------------------------------------------------------------------------------------------------------ factory
def parse_http_uri(uri: str) -> tuple[Optional[str], int]:
    match = re.fullmatch(r"(?:mjpeg|http)://(\[[^\]]+\]|[^:/]*)?(?::(\d+))?/?.*", uri)
    if not match:
        raise FusionError(f"output '{uri}' should look like mjpeg://:8090 or http://127.0.0.1:8090")
    host = (match.group(1) or "").strip("[]") or None
    return host, int(match.group(2) or 8090)


def open_sink(uri: str, fps: float = 30.0, bind: Optional[str] = None, image_ext: str = ".png",
              stats: Optional[Callable[[], dict]] = None) -> Sink:
    """A Sink for `uri` (see the module docstring). `bind` is the address MJPEG listens on (default loopback)."""
    uri = str(uri).strip()
    if not uri:
        raise FusionError("empty --output; give a video file, a folder, display://0 or mjpeg://:8090")
    if uri in ("display", "display://") or uri.startswith("display://"):
        return DisplaySink()
    if uri.startswith(("mjpeg://", "http://")):
        host, port = parse_http_uri(uri)
        address = bind or "127.0.0.1"
        if host and host not in (address,) + (LOOPBACK if address in LOOPBACK else ()):
            raise FusionError(f"output {uri} would serve on {host}, but the stream is only served on {address}; "
                              f"pass --bind {host} to serve beyond this machine")
        return MjpegSink(address if not host or host == address else host, port, stats=stats)
    if uri.startswith(("rtp://", "udp://", "rtsp://")):
        return GStreamerSink(uri, network_pipeline(uri), fps)
    if "!" in uri:
        return GStreamerSink(uri, uri, fps)
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if "://" in uri:
        raise FusionError(f"unknown output scheme '{uri.split('://', 1)[0]}://'; use a video file, a folder, "
                          f"display://0, mjpeg://:PORT, rtp://HOST:PORT or rtsp://HOST:PORT/PATH")
    path = Path(uri)
    if path.suffix.lower() in VIDEO_EXTENSIONS:
        return VideoFileSink(path, fps)
    if path.suffix and not path.is_dir() and not uri.endswith(("/", os.sep)):
        raise FusionError(f"output '{uri}' has an unknown extension '{path.suffix}'; use a video file "
                          f"({', '.join(FOURCC_BY_SUFFIX)}) or a folder for images")
    return ImageFolderSink(path, image_ext)
