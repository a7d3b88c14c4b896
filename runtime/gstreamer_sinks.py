"""Outputs through GStreamer (where OpenCV has it): H.264 over RTP/UDP, pushed to an RTSP server, or any appsrc
pipeline. Opened by `runtime.sinks.open_sink` for rtp://, udp://, rtsp:// and pipeline strings.

Beyond loopback, RTP/UDP carries no authentication at all (a warning says so); an RTSP push authenticates with the
URL's credentials or the stream token, and the RTSP server decides who may watch.
"""
from __future__ import annotations

import os
import re
from typing import Optional

import cv2
import numpy as np

from runtime.errors import FusionError
from runtime.sink_base import OutputInfo, Sink
from runtime.sources import gstreamer_available


def gstreamer_encoder() -> str:
    """The H.264 encoder element: the Jetson hardware one when its plugin exists, else x264."""
    if os.path.exists("/usr/lib/aarch64-linux-gnu/gstreamer-1.0/libgstnvvideo4linux2.so"):
        return "nvvidconv ! nvv4l2h264enc insert-sps-pps=true idrinterval=30 ! h264parse"
    return "x264enc tune=zerolatency speed-preset=ultrafast bitrate=4000 key-int-max=30 ! h264parse"


def parse_network_uri(uri: str) -> tuple[str, Optional[str], Optional[str], str, str, str]:
    """rtp://HOST:PORT, udp://HOST:PORT, rtsp://[USER:PASSWORD@]HOST:PORT/PATH -> (scheme, user, password, host,
    port, path)."""
    match = re.fullmatch(r"(rtp|udp|rtsp)://(?:([^:@/]+):([^@/]+)@)?([^:/@]+)?:(\d+)(/.*)?", uri)
    if not match:
        raise FusionError(f"output '{uri}' should look like rtp://HOST:PORT, udp://HOST:PORT or "
                          f"rtsp://[USER:PASSWORD@]HOST:PORT/PATH")
    scheme, user, password, host, port, path = match.groups()
    return scheme, user, password, host or "127.0.0.1", port, path or ""


def network_pipeline(uri: str, token: Optional[str] = None) -> str:
    """The appsrc pipeline streaming to rtp://, udp:// or rtsp:// (RTSP needs a server to push to). An RTSP push
    authenticates with the URL's credentials, else with user 'fusion' and `token` as the password when given."""
    scheme, user, password, host, port, path = parse_network_uri(uri)
    head = f"appsrc ! videoconvert ! {gstreamer_encoder()}"
    if scheme == "rtsp":
        if user is None and token:
            user, password = "fusion", token
        credentials = f" user-id={user} user-pw={password}" if user is not None else ""
        return f"{head} ! rtspclientsink location=rtsp://{host}:{port}{path}{credentials}"
    return f"{head} ! rtph264pay config-interval=1 pt=96 ! udpsink host={host} port={port} sync=false async=false"


def network_warning(uri: str, token: Optional[str] = None) -> Optional[str]:
    """What the user must know about a network output beyond this machine, or None. RTP/UDP carries no
    authentication at all; an RTSP server decides itself who may watch what is pushed to it."""
    from runtime.mjpeg import is_loopback
    scheme, user, _, host, _, _ = parse_network_uri(uri)
    if is_loopback(host):
        return None
    if scheme in ("rtp", "udp"):
        return (f"warning: {uri} sends the fused video unencrypted and without authentication to {host}; anyone "
                f"on the way can watch it (use mjpeg:// with a token, or rtsp:// to a server that requires "
                f"credentials)")
    if user is None and not token:
        return (f"warning: {uri} is pushed without credentials; who may watch is up to that RTSP server (give "
                f"rtsp://USER:PASSWORD@... or --auth-token, and require read credentials on the server)")
    return None


class GStreamerSink(Sink):
    kind = "gstreamer"

    def __init__(self, uri: str, pipeline: str, fps: float = 30.0, warning: Optional[str] = None):
        self.warning = warning
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
