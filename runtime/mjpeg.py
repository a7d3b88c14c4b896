"""A small MJPEG-over-HTTP server: watch a headless device's fused stream in any browser.

    http://127.0.0.1:8090/            a page showing the stream and the live stats
    http://127.0.0.1:8090/stream.mjpg multipart/x-mixed-replace JPEG stream (VLC, ffplay, <img src=...>)
    http://127.0.0.1:8090/snapshot.jpg the latest frame
    http://127.0.0.1:8090/stats.json   the pipeline's statistics so far

The pipeline only hands over the latest frame (no copy, no encoding); JPEG encoding happens in the HTTP threads,
once per new frame however many clients watch, and not at all when nobody does.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional

import cv2
import numpy as np

from runtime.errors import FusionError

BOUNDARY = "fusionframe"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>IR+VIS fusion</title>
<style>body{{background:#111;color:#ddd;font:14px sans-serif;margin:1em}}img{{max-width:100%;display:block}}
pre{{font-size:12px}}</style></head>
<body><h3>IR + VIS fusion: live</h3><img id="stream" src="stream.mjpg" alt="fused stream">
<pre id="stats"></pre>
<script>
async function poll(){{try{{const r=await fetch('stats.json');const s=await r.json();
document.getElementById('stats').textContent=`fps ${{s.fps_live??s.fps}}  frames ${{s.frames}}  `+
JSON.stringify(s.sources);}}catch(e){{}}setTimeout(poll,1000);}}poll();
</script></body></html>
"""


class MjpegServer:
    """Serves the latest frame as MJPEG. `publish(rgb_uint8)` from the pipeline; `close()` to stop."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8090, quality: int = 80,
                 stats: Optional[Callable[[], dict]] = None, max_fps: float = 60.0):
        self.quality = int(quality)
        self.stats = stats
        self.min_interval = 1.0 / max_fps if max_fps > 0 else 0.0
        self._condition = threading.Condition()
        self._frame: Optional[np.ndarray] = None
        self._seq = 0
        self._jpeg: Optional[bytes] = None
        self._jpeg_seq = -1
        self._encode_lock = threading.Lock()
        self._closed = False
        self.clients = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):  # keep the terminal for the pipeline's own output
                pass

            def do_GET(self):  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                if path in ("/", "/index.html"):
                    self._send(200, "text/html; charset=utf-8", PAGE.format().encode())
                elif path in ("/stream.mjpg", "/stream", "/video"):
                    server._stream(self)
                elif path in ("/snapshot.jpg", "/snapshot"):
                    jpeg = server.latest_jpeg(wait_s=5.0)
                    if jpeg is None:
                        self._send(503, "text/plain", b"no frame yet\n")
                    else:
                        self._send(200, "image/jpeg", jpeg)
                elif path == "/stats.json":
                    data = server.stats() if server.stats else {}
                    self._send(200, "application/json", json.dumps(data, default=str).encode())
                else:
                    self._send(404, "text/plain", b"not found: try / or /stream.mjpg\n")

            def _send(self, code: int, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

        try:
            self.httpd = ThreadingHTTPServer((host, int(port)), Handler)
        except OSError as exc:
            raise FusionError(f"cannot serve MJPEG on {host}:{port} ({exc.strerror or exc}); pick another port "
                              f"or stop the program using it") from None
        self.httpd.daemon_threads = True
        self.host, self.port = self.httpd.server_address[:2]
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="mjpeg-http", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def publish(self, rgb: np.ndarray) -> None:
        """Offer a new frame (RGB uint8). Cheap: no copy, no encoding here."""
        with self._condition:
            self._frame = rgb
            self._seq += 1
            self._condition.notify_all()

    def latest_jpeg(self, after_seq: int = -1, wait_s: float = 1.0) -> Optional[bytes]:
        """The JPEG of the newest frame newer than `after_seq` (waits up to `wait_s`), encoded once per frame."""
        deadline = time.monotonic() + wait_s
        with self._condition:
            while (self._frame is None or self._seq <= after_seq) and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._condition.wait(remaining)
            if self._frame is None:
                return None
            frame, seq = self._frame, self._seq
        with self._encode_lock:
            if self._jpeg_seq != seq:
                bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR) if frame.ndim == 3 else frame
                ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
                if not ok:
                    return None
                self._jpeg, self._jpeg_seq = encoded.tobytes(), seq
            return self._jpeg

    @property
    def seq(self) -> int:
        return self._jpeg_seq

    def _stream(self, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        handler.send_header("Cache-Control", "no-store")
        handler.send_header("Connection", "close")
        handler.end_headers()
        with self._condition:
            self.clients += 1
        seen = -1
        last_sent = 0.0
        try:
            while not self._closed:
                jpeg = self.latest_jpeg(seen, wait_s=0.5)
                if jpeg is None:
                    continue
                seen = self._jpeg_seq
                wait = self.min_interval - (time.monotonic() - last_sent)
                if wait > 0:
                    time.sleep(wait)
                handler.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}"
                                    f"\r\n\r\n".encode())
                handler.wfile.write(jpeg)
                handler.wfile.write(b"\r\n")
                handler.wfile.flush()
                last_sent = time.monotonic()
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass  # the viewer went away
        finally:
            with self._condition:
                self.clients -= 1

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()
