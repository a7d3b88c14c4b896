"""Video sources as URIs (jetson-utils style): one factory, `open_source(uri)`, for every kind of input.

    0, cam0, /dev/video0        a V4L2/UVC camera through OpenCV
    v4l2:///dev/video1          the same, explicitly; `--ir` cameras are opened as 16-bit Y16 when they offer it
                                (FLIR Boson/Lepton radiometric streams), with OpenCV's RGB conversion turned off
    csi://0                     a Jetson CSI camera through a GStreamer nvarguscamerasrc pipeline
    rtsp://host:8554/stream     a network stream (OpenCV's FFmpeg backend, GStreamer when built in)
    file://clip.mp4, clip.mp4   a video file
    DIR/                        a folder of images, in file-name order (the stem becomes the frame name)
    "v4l2src ! ... ! appsink"   a raw GStreamer pipeline string (anything containing '!')

Every source returns `Frame`s: the image as captured (uint8 or uint16; RGB for colour, (H, W) for gray), the media
timestamp used for pairing, the wall-clock capture time used for latency, a running index and a name. A camera's
media time is its capture time; a file's is its position in the file, so pairing two files is deterministic and
does not depend on how fast this machine decodes them.
"""
from __future__ import annotations

import os
import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from runtime.errors import FusionError
from runtime.imageio import IMAGE_EXTENSIONS, read_raw

if not os.environ.get("FUSION_DEBUG"):
    # OpenCV and FFmpeg print their own warnings for every failed open or dropped connection; the runtime reports
    # those itself, in one line, so keep the terminal for that (FUSION_DEBUG=1 brings them back).
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except AttributeError:
        pass

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".ts", ".wmv", ".flv")
ROLES = ("ir", "vis")


@dataclass
class Frame:
    """One captured frame."""

    image: np.ndarray                 # uint8/uint16; (H, W) gray or (H, W, 3) RGB
    t_media: float                    # seconds; pairing compares these
    t_capture: float                  # time.monotonic() when the frame was read; latency starts here
    index: int                        # running index within its source (across reconnects)
    name: str = ""                    # file stem for image folders, else the zero-padded index
    meta: dict = field(default_factory=dict)


class Source(ABC):
    """A video source. `read()` returns the next Frame, or None at the end of a finite source.

    A live source raises `SourceLost` when the device stops answering; the capture thread then calls `reopen()`
    with backoff. Finite sources (files, folders) are read without dropping frames.
    """

    uri: str = ""
    kind: str = "source"
    live: bool = True
    fps: float = 0.0                  # nominal frame rate (0 when unknown)

    @abstractmethod
    def open(self) -> None:
        """Open the device, stream or file (raises FusionError or SourceLost when it cannot)."""

    @abstractmethod
    def read(self) -> Optional[Frame]:
        """The next Frame, or None at the end of a finite source."""

    def close(self) -> None:
        pass

    def reopen(self) -> None:
        self.close()
        self.open()

    def describe(self) -> str:
        rate = f" @ {self.fps:.3g} fps" if self.fps else ""
        return f"{self.kind} {self.uri}{rate}"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SourceLost(Exception):
    """A live source stopped delivering frames (unplugged, network drop); the pipeline reconnects."""


def _to_rgb_or_gray(img: np.ndarray, role: str) -> np.ndarray:
    """OpenCV's BGR frames to the project's convention: RGB for visible, single channel for IR."""
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3:
        if img.shape[2] == 4:
            img = img[:, :, :3]
        if role == "ir":
            # Thermal video stored as a colour file is gray in three channels (or a false-colour palette, which
            # has no inverse); the luminance is what `runtime.imageio.ir_to_float` would take too.
            return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return img


# ---------------------------------------------------------------------------------------------------- OpenCV capture
class CaptureSource(Source):
    """Anything `cv2.VideoCapture` opens: cameras, files, network streams, GStreamer pipelines."""

    def __init__(self, uri: str, target, role: str = "vis", api: int = cv2.CAP_ANY, live: bool = True,
                 kind: str = "camera", y16: bool = False, width: int = 0, height: int = 0, fps: float = 0.0,
                 read_timeout_s: float = 2.0):
        self.uri, self.target, self.role, self.api = uri, target, role, api
        self.live, self.kind, self.y16 = live, kind, y16
        self.width, self.height, self.requested_fps = width, height, fps
        self.read_timeout_s = read_timeout_s
        self.capture: Optional[cv2.VideoCapture] = None
        self.fps = 0.0
        self.frame_count = 0
        self._index = 0             # running frame index (names), across reopens
        self._position = 0          # frame position in the file since the last open (files' media time)
        self._opened_once = False

    def open(self) -> None:
        if self.kind == "stream":
            # A network camera that hangs must not hang its capture thread: bounded open and read waits make a
            # silent stream a lost one, which the pipeline then reconnects.
            timeout_ms = int(self.read_timeout_s * 1000)
            capture = cv2.VideoCapture(self.target, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms,
                                                                     cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms])
        else:
            capture = cv2.VideoCapture(self.target, self.api)
        if not capture.isOpened():
            capture.release()
            raise (SourceLost if self._opened_once else FusionError)(self._open_error())
        if self.y16:
            # Radiometric thermal cameras: ask for raw 16-bit Y16 and keep OpenCV from converting it to 8-bit BGR.
            # A camera without Y16 keeps its own format, and then OpenCV's conversion must stay on (raw YUYV bytes
            # would otherwise come through as a garbled frame).
            capture.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"Y16 "))
            granted = int(capture.get(cv2.CAP_PROP_FOURCC)) & 0xFFFFFFFF
            if granted == cv2.VideoWriter_fourcc(*"Y16 "):
                capture.set(cv2.CAP_PROP_CONVERT_RGB, 0)
            else:
                self.y16 = False
        if self.width and self.height:
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        if self.requested_fps:
            capture.set(cv2.CAP_PROP_FPS, self.requested_fps)
        fps = capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and np.isfinite(fps) and 0 < fps < 1000 else 0.0
        self.frame_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if not self.live else 0
        self.capture = capture
        self._position = 0
        self._opened_once = True

    def _open_error(self) -> str:
        if self.kind == "video file":
            return f"cannot open video file {self.target} (not a video, or a codec OpenCV's FFmpeg cannot decode)"
        if self.kind == "gstreamer":
            return (f"cannot open GStreamer pipeline '{self.target}' (check it with gst-launch-1.0; it must end in "
                    f"appsink)")
        if self.kind == "stream":
            return f"cannot open stream {self.uri} (unreachable, wrong path, or credentials missing)"
        return f"cannot open camera {self.uri} (not connected, busy in another program, or no permission)"

    def read(self) -> Optional[Frame]:
        if self.capture is None:
            self.open()
        ok, img = self.capture.read()
        t_capture = time.monotonic()
        if not ok or img is None:
            if not self.live:
                return None
            raise SourceLost(f"{self.uri} stopped delivering frames")
        if self.y16 and img.dtype == np.uint8:
            # Some V4L2 backends hand Y16 over as a flat byte buffer; view it as the 16-bit counts it is.
            width = int(self.capture.get(cv2.CAP_PROP_FRAME_WIDTH))
            height = int(self.capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
            if width * height * 2 == img.size:
                img = np.ascontiguousarray(img).reshape(-1).view(np.uint16).reshape(height, width)
        img = _to_rgb_or_gray(img, self.role)
        index = self._index
        self._index += 1
        if self.live:
            t_media = t_capture
        else:
            # The position in the file, restarting at 0 when the file is reopened (a loop): the capture thread
            # continues the timeline across restarts; a running index here would jump a whole pass ahead each time.
            t_media = self._position / (self.fps or 30.0)
            self._position += 1
        return Frame(img, t_media, t_capture, index, f"{index:06d}")

    def close(self) -> None:
        if self.capture is not None:
            self.capture.release()
            self.capture = None


# ------------------------------------------------------------------------------------------------------ image folder
class ImageFolderSource(Source):
    """The images of a folder in file-name order, at a nominal `fps` (media time = index / fps)."""

    kind = "image folder"
    live = False

    def __init__(self, folder: str | os.PathLike, role: str = "vis", fps: float = 30.0):
        self.folder = Path(folder)
        self.uri = str(folder)
        self.role = role
        self.fps = fps
        self.files: list[Path] = []
        self._next = 0

    def open(self) -> None:
        if not self.folder.is_dir():
            raise FusionError(f"image folder not found: {self.folder}")
        self.files = sorted(p for p in self.folder.iterdir()
                            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not self.files:
            raise FusionError(f"no images in {self.folder} (looked for {', '.join(IMAGE_EXTENSIONS)})")
        self._next = 0

    @property
    def frame_count(self) -> int:
        return len(self.files)

    def read(self) -> Optional[Frame]:
        if not self.files:
            self.open()
        if self._next >= len(self.files):
            return None
        path = self.files[self._next]
        img = read_raw(path)
        if self.role == "ir" and img.ndim == 3:
            img = _to_rgb_or_gray(img[:, :, ::-1], "ir")  # read_raw gives RGB; _to_rgb_or_gray expects BGR
        index = self._next
        self._next += 1
        now = time.monotonic()
        return Frame(img, index / self.fps, now, index, path.stem)


# ------------------------------------------------------------------------------------------------------------ parsing
def gstreamer_available() -> bool:
    info = cv2.getBuildInformation()
    match = re.search(r"GStreamer:\s*(\w+)", info)
    return bool(match and match.group(1).upper() == "YES")


def csi_pipeline(sensor_id: int, width: int = 1280, height: int = 720, fps: int = 30) -> str:
    """The nvarguscamerasrc pipeline that hands a Jetson CSI camera to OpenCV as BGR frames."""
    return (f"nvarguscamerasrc sensor-id={sensor_id} ! video/x-raw(memory:NVMM), width={width}, height={height}, "
            f"framerate={fps}/1, format=NV12 ! nvvidconv ! video/x-raw, format=BGRx ! videoconvert ! "
            f"video/x-raw, format=BGR ! appsink drop=true max-buffers=1 sync=false")


def _require_gstreamer(what: str) -> None:
    if not gstreamer_available():
        raise FusionError(f"{what} needs OpenCV built with GStreamer, and this OpenCV has none; on a Jetson use the "
                          f"JetPack OpenCV (python3-opencv), not the pip wheel")


def parse_camera_index(uri: str) -> Optional[int]:
    """0 / cam0 / /dev/video0 / v4l2:///dev/video0 -> 0; None when `uri` is not a camera."""
    match = re.fullmatch(r"(?:cam)?(\d+)|(?:v4l2://)?/dev/video(\d+)", uri.strip())
    if not match:
        return None
    return int(match.group(1) if match.group(1) is not None else match.group(2))


def open_source(uri: str, role: str = "vis", fps: float = 30.0, width: int = 0, height: int = 0,
                y16: Optional[bool] = None, live: Optional[bool] = None) -> Source:
    """A Source for `uri` (opened, so a bad URI fails here with a FusionError). See the module docstring.

    role: "ir" or "vis" (IR frames come out single-channel; IR cameras are asked for Y16).
    fps: the nominal rate of image folders (and the requested rate of cameras when width/height are given).
    y16: force (True) or forbid (False) the 16-bit Y16 request; None: only for IR cameras given as v4l2://.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    uri = str(uri).strip()
    if not uri:
        raise FusionError(f"empty {role.upper()} source; give a camera index, a device, a URL, a file or a folder")
    source = _make_source(uri, role, fps, width, height, y16)
    if live is not None:
        source.live = live
    source.open()
    return source


def _make_source(uri: str, role: str, fps: float, width: int, height: int, y16: Optional[bool]) -> Source:
    index = parse_camera_index(uri)
    if index is not None:
        explicit_v4l2 = uri.startswith("v4l2://")
        use_y16 = y16 if y16 is not None else (role == "ir" and explicit_v4l2)
        if uri.startswith(("/dev/", "v4l2://")):
            device = uri[len("v4l2://"):] if explicit_v4l2 else uri
            if not os.path.exists(device):
                raise FusionError(f"camera device {device} does not exist (list cameras with `v4l2-ctl "
                                  f"--list-devices`)")
        api = cv2.CAP_V4L2 if os.name == "posix" and os.path.exists("/dev") else cv2.CAP_ANY
        return CaptureSource(uri, index, role, api=api, live=True, kind="camera", y16=use_y16,
                             width=width, height=height, fps=fps if (width and height) else 0.0)
    if uri.startswith("v4l2://"):
        raise FusionError(f"'{uri}' is not a V4L2 device; use v4l2:///dev/videoN")
    if uri.startswith("csi://"):
        match = re.fullmatch(r"csi://(\d+)", uri)
        if not match:
            raise FusionError(f"'{uri}' is not a CSI camera; use csi://N with N the sensor id (csi://0)")
        _require_gstreamer(f"the CSI camera {uri}")
        pipeline = csi_pipeline(int(match.group(1)), width or 1280, height or 720, int(fps or 30))
        return CaptureSource(uri, pipeline, role, api=cv2.CAP_GSTREAMER, live=True, kind="csi camera")
    if re.match(r"^(rtsp|rtsps|rtmp|http|https|udp|rtp|tcp)://", uri):
        return CaptureSource(uri, uri, role, api=cv2.CAP_ANY, live=True, kind="stream")
    if "!" in uri:
        _require_gstreamer("a GStreamer pipeline source")
        return CaptureSource(uri, uri, role, api=cv2.CAP_GSTREAMER, live=True, kind="gstreamer")
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if "://" in uri:
        scheme = uri.split("://", 1)[0]
        raise FusionError(f"unknown source scheme '{scheme}://' in '{uri}'; use a camera index, /dev/videoN, "
                          f"v4l2://, csi://, rtsp://, a video file, an image folder or a GStreamer pipeline")
    path = Path(uri)
    if path.is_dir():
        return ImageFolderSource(path, role, fps=fps or 30.0)
    if path.is_file():
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            raise FusionError(f"{path} is a single image; give the folder that holds the {role.upper()} images")
        return CaptureSource(str(path), str(path), role, api=cv2.CAP_FFMPEG, live=False, kind="video file")
    raise FusionError(f"{role.upper()} source '{uri}' not found: it is no file, folder, camera index, /dev/videoN "
                      f"or URL")
