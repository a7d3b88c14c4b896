"""Outputs as URIs (jetson-utils style): one factory, `open_sink(uri)`, several at once.

    display://0, display        a window with an overlay (FPS, per-stage latency, IR/VIS health); q or Esc quits
    out.mp4, out.avi, out.mkv   a video file, written under a temporary name and renamed when finalised, so it is
                                playable after Ctrl-C and never half-written under its final name
    OUTDIR/                     a folder of images (<frame name>.png: the input stems in folder mode)
    mjpeg://:8090, http://:8090 an MJPEG stream for browsers, bound to 127.0.0.1 unless --bind says otherwise; beyond
                                loopback every request needs the stream token (runtime.mjpeg)
    rtp://HOST:PORT, udp://...  H.264 over RTP/UDP through GStreamer (where OpenCV has it; runtime.gstreamer_sinks)
    rtsp://HOST:PORT/PATH       pushed to an RTSP server (e.g. mediamtx) through GStreamer's rtspclientsink
    "appsrc ! ... "             a raw GStreamer pipeline string

Sinks receive RGB uint8 frames and an `OutputInfo` (frame name, index, and what the overlay shows).

Output problems are FusionErrors of one line (exit 2): a path that cannot be created or written is found when the
sink opens, before any work; a disk that fills up during the run stops it, with what was written finalised (a video
keeps the frames written so far and stays playable; image files are written whole or not at all).
"""
from __future__ import annotations

import errno
import os
import queue
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np

from runtime.errors import FusionError
from runtime.imageio import write_image
from runtime.sink_base import OutputInfo, Sink
from runtime.sources import VIDEO_EXTENSIONS

LOOPBACK = ("127.0.0.1", "localhost", "::1")

_OS_REASONS = {
    errno.ENOSPC: "the disk is full (free some space or write elsewhere)",
    errno.EDQUOT: "the disk quota is used up (free some space or write elsewhere)",
    errno.EACCES: "no permission (choose a folder you can write to)",
    errno.EPERM: "no permission (choose a folder you can write to)",
    errno.EROFS: "the file system is read-only (choose another place)",
    errno.ENOENT: "a folder on the way does not exist and cannot be created there",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "that is a folder, not a file",
    errno.ENAMETOOLONG: "the name is too long",
}


def output_error(target, exc: OSError, action: str = "write", folder: Optional[Path] = None) -> FusionError:
    """One sentence for an OSError met while writing an output: what, where, and what to do. Short writes come
    without an errno (numpy's tofile: "N requested and M written"); with `folder` given, a nearly full disk there
    names the cause."""
    code = exc.errno
    if code is None and folder is not None:
        try:
            if free_bytes(folder) < 4 * 1024 * 1024:
                code = errno.ENOSPC
        except OSError:
            pass
    reason = _OS_REASONS.get(code, exc.strerror or str(exc))
    return FusionError(f"cannot {action} {target}: {reason}")


def ensure_writable_folder(folder: Path, what) -> None:
    """Create `folder` if needed and prove it takes a file (a real probe: permission bits say little as root, on
    read-only mounts or in /proc), or raise the one-line FusionError for `what`."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise FusionError(f"cannot write {what}: {folder} exists and is not a folder") from None
    except OSError as exc:
        raise output_error(what, exc) from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".fusion-write-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise output_error(what, exc) from None


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


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


# --------------------------------------------------------------------------------------------------------- video file
FOURCC_BY_SUFFIX = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "XVID"}


class VideoFileSink(Sink):
    """A video file, opened on the first frame (its size), finalised and renamed into place by `close()`.

    Frames are encoded on a thread of the sink's own ("encode-video"), behind a short queue: the output stage hands a
    frame over and goes on (4-10 ms of mpeg4 encoding per frame at 720p-1080p left the frame path). Every frame is
    still written (a full queue makes `write` wait), and an encoding error surfaces at the next `write` or at
    `close`.

    `segment_s` > 0 records in segments of that much video (`--segment-minutes`): NAME_0000.mp4, NAME_0001.mp4, ...,
    each finalised (index written, renamed into place) as soon as it is full. For recordings left running: an mp4's
    index (the moov atom) is written at its end and kept in memory until then, 113 KB per minute of 30 fps video
    (measured: the whole memory drift of an hour's soak), and a power cut loses the file it is in; a segment bounds
    both to one segment."""

    kind = "video file"

    # Stop (and finalise) when the disk holding the video has less than this left: the container index written at
    # the end needs room, and a full disk would otherwise go unnoticed (OpenCV's writer reports no write errors).
    RESERVE_BYTES = 16 * 1024 * 1024
    CHECK_EVERY = 15                  # frames between free-space checks
    QUEUE_FRAMES = 4                  # frames waiting for the encoder thread

    def __init__(self, path: str | os.PathLike, fps: float = 30.0, fourcc: Optional[str] = None,
                 segment_s: float = 0.0):
        self.path = Path(path)
        self.uri = str(path)
        suffix = self.path.suffix.lower()
        if suffix not in VIDEO_EXTENSIONS:
            raise FusionError(f"cannot write video '{self.path}': use one of {', '.join(FOURCC_BY_SUFFIX)}")
        self.fourcc = fourcc or FOURCC_BY_SUFFIX.get(suffix, "mp4v")
        self.fps = fps if fps and fps > 0 else 30.0
        if self.path.is_dir():
            raise FusionError(f"cannot write video {self.path}: that is a folder, not a file")
        self.folder = self.path.parent
        ensure_writable_folder(self.folder, f"video {self.path}")
        self._check_space()
        if segment_s < 0:
            raise FusionError(f"segment length must be positive (0: one file), got {segment_s:g} s")
        self.segment_frames = max(1, int(round(segment_s * self.fps))) if segment_s else 0
        self.segments: list[Path] = []          # finalised files so far (segmented recording)
        self._segment = 0                       # index of the segment being written
        self._segment_written = 0               # frames in it (counted on the encoder thread)
        self.tmp_path = self.path.with_name(f".{self.path.stem}.partial{suffix}")
        self.writer: Optional[cv2.VideoWriter] = None
        self.size: Optional[tuple[int, int]] = None
        self.frames = 0
        self._queue: "queue.Queue" = queue.Queue(self.QUEUE_FRAMES)
        self._encoder: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    def _check_space(self) -> None:
        try:
            left = free_bytes(self.folder)
        except OSError:
            return
        if left < self.RESERVE_BYTES:
            written = getattr(self, "frames", 0)
            kept = f"; the {written} frames written so far are finalised in it" if written else ""
            raise FusionError(f"the disk holding {self.path} is full ({left // (1024 * 1024)} MB left){kept}; free "
                              f"some space or write elsewhere")

    def write(self, rgb: np.ndarray, info: OutputInfo) -> None:
        if self._error is not None:
            raise self._error
        height, width = rgb.shape[:2]
        if self._encoder is None:
            self.size = (width, height)
            self._open_writer()
            self._encoder = threading.Thread(target=self._encode, name="encode-video", daemon=True)
            self._encoder.start()
        if self.frames % self.CHECK_EVERY == 0:
            self._check_space()
        self._queue.put(rgb)          # the output stage made this array for this frame: nobody writes to it again
        self.frames += 1

    def target(self) -> Path:
        """Where the file being written goes once finalised (the path itself, or the current segment's)."""
        if not self.segment_frames:
            return self.path
        return self.path.with_name(f"{self.path.stem}_{self._segment:04d}{self.path.suffix}")

    def _open_writer(self) -> None:
        self.writer = cv2.VideoWriter(str(self.tmp_path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*self.fourcc),
                                      float(self.fps), self.size)
        if not self.writer.isOpened():
            self.writer = None
            raise FusionError(f"OpenCV cannot write {self.path.suffix} video with codec {self.fourcc}; use .mp4 "
                              f"or .avi")
        self._segment_written = 0

    def _finalise(self) -> None:
        """Write the open file's index and rename it into place."""
        self.writer.release()  # writes the container index (the mp4 moov atom): the file becomes playable
        self.writer = None
        target = self.target()
        try:
            os.replace(self.tmp_path, target)
        except OSError as exc:
            raise output_error(f"video {target} (kept as {self.tmp_path})", exc, "finalise") from None
        self.segments.append(target)

    def _encode(self) -> None:
        while True:
            rgb = self._queue.get()
            if rgb is None:
                return
            if self._error is not None:
                continue              # drain: the pipeline hears of the error at its next write
            try:
                if self.writer is None:           # the previous segment is full and finalised
                    self._segment += 1
                    self._open_writer()
                if (rgb.shape[1], rgb.shape[0]) != self.size:
                    rgb = cv2.resize(rgb, self.size, interpolation=cv2.INTER_AREA)
                self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else cv2.cvtColor(
                    rgb, cv2.COLOR_GRAY2BGR))
                self._segment_written += 1
                if self.segment_frames and self._segment_written >= self.segment_frames:
                    self._finalise()              # playable now, not when the next frame comes
            except BaseException as exc:  # surfaced in write()/close() on the pipeline's thread
                self._error = exc

    def close(self) -> None:
        if self._encoder is not None:
            self._queue.put(None)
            self._encoder.join()
            self._encoder = None
        if self.writer is not None:
            self._finalise()
        if self._error is not None:
            error, self._error = self._error, None
            raise error


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
        ensure_writable_folder(self.folder, f"images to {self.folder}")
        self.frames = 0

    def write(self, rgb: np.ndarray, info: OutputInfo) -> None:
        target = self.folder / f"{info.name}{self.ext}"
        try:
            write_image(target, rgb)        # atomic: a failed write leaves no partial image behind
        except OSError as exc:
            kept = f" ({self.frames} images written before it are complete)" if self.frames else ""
            raise FusionError(f"{output_error(target, exc, folder=self.folder)}{kept}") from None
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

    def __init__(self, host: str, port: int, stats: Optional[Callable[[], dict]] = None, quality: int = 80,
                 token: Optional[str] = None, max_clients: int = 8, token_generated: bool = False):
        from runtime.mjpeg import MjpegServer
        self.server = MjpegServer(host, port, quality=quality, stats=stats, token=token, max_clients=max_clients)
        self.uri = self.server.url
        self.token_generated = token_generated

    def announcement(self) -> str:
        """The line telling the user where to watch (with the token only when it was generated here: nobody else
        knows it)."""
        server = self.server
        if not server.token:
            return f"streaming MJPEG at {server.url}"
        if self.token_generated:
            return (f"streaming MJPEG at {server.viewing_url} (token generated for this run; anyone with this URL "
                    f"can watch; set --auth-token or $FUSION_STREAM_TOKEN to choose it)")
        return f"streaming MJPEG at {server.url} (token required: ?token=... or Authorization: Bearer)"

    def write(self, rgb: np.ndarray, info: OutputInfo) -> None:
        self.server.publish(rgb)

    def close(self) -> None:
        self.server.close()


# ------------------------------------------------------------------------------------------------------------ factory
def parse_http_uri(uri: str) -> tuple[Optional[str], int]:
    match = re.fullmatch(r"(?:mjpeg|http)://(\[[^\]]+\]|[^:/]*)?(?::(\d+))?/?.*", uri)
    if not match:
        raise FusionError(f"output '{uri}' should look like mjpeg://:8090 or http://127.0.0.1:8090")
    host = (match.group(1) or "").strip("[]") or None
    return host, int(match.group(2) or 8090)


def open_sink(uri: str, fps: float = 30.0, bind: Optional[str] = None, image_ext: str = ".png",
              stats: Optional[Callable[[], dict]] = None, auth_token: Optional[str] = None,
              max_clients: int = 8, segment_s: float = 0.0) -> Sink:
    """A Sink for `uri` (see the module docstring). `bind` is the address MJPEG listens on (default loopback).

    auth_token: the stream token (else $FUSION_STREAM_TOKEN; an MJPEG server beyond loopback generates one, see
    runtime.mjpeg.stream_token). max_clients: concurrent MJPEG viewers. segment_s: video files are written in
    segments of this much video (0: one file; VideoFileSink)."""
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
        from runtime.mjpeg import stream_token
        listen = address if not host or host == address else host
        token, generated = stream_token(listen, auth_token)
        return MjpegSink(listen, port, stats=stats, token=token, max_clients=max_clients, token_generated=generated)
    if uri.startswith(("rtp://", "udp://", "rtsp://")):
        from runtime.gstreamer_sinks import GStreamerSink, network_pipeline, network_warning
        token = auth_token or os.environ.get("FUSION_STREAM_TOKEN") or None
        return GStreamerSink(uri, network_pipeline(uri, token), fps, warning=network_warning(uri, token))
    if "!" in uri:
        from runtime.gstreamer_sinks import GStreamerSink
        return GStreamerSink(uri, uri, fps)
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if "://" in uri:
        raise FusionError(f"unknown output scheme '{uri.split('://', 1)[0]}://'; use a video file, a folder, "
                          f"display://0, mjpeg://:PORT, rtp://HOST:PORT or rtsp://HOST:PORT/PATH")
    path = Path(uri)
    if path.suffix.lower() in VIDEO_EXTENSIONS:
        return VideoFileSink(path, fps, segment_s=segment_s)
    if path.suffix and not path.is_dir() and not uri.endswith(("/", os.sep)):
        raise FusionError(f"output '{uri}' has an unknown extension '{path.suffix}'; use a video file "
                          f"({', '.join(FOURCC_BY_SUFFIX)}) or a folder for images")
    return ImageFolderSink(path, image_ext)
