"""A small MJPEG-over-HTTP server: watch a headless device's fused stream in any browser.

    http://127.0.0.1:8090/            a page showing the stream and the live stats (fps, latency, cameras, drops)
    http://127.0.0.1:8090/stream.mjpg multipart/x-mixed-replace JPEG stream (VLC, ffplay, <img src=...>)
    http://127.0.0.1:8090/snapshot.jpg the latest frame
    http://127.0.0.1:8090/stats.json   the pipeline's statistics so far

Access. A thermal camera sees people through the dark, so the stream is not open to whoever can reach the port:
with a `token`, every request must carry it, as `?token=...` (what `<img src>`, VLC and the page use) or as an
`Authorization: Bearer ...` header; anything else gets 401 and no frame or statistic. `fusion run` always sets a
token when it listens beyond loopback (`stream_token`).

Load. The pipeline only hands over the latest frame (no copy, no encoding, no waiting on anyone); JPEG encoding
happens in the HTTP threads, once per new frame however many clients watch, and not at all when nobody does. Each
viewer gets the newest frame when it is ready for one (frames in between are skipped, never queued); a viewer that
stops reading is dropped after `send_timeout_s`. At most `max_clients` streams at once (503 beyond), and a bounded
number of connections in all, so a flood of clients costs threads and memory of a fixed size.
"""
from __future__ import annotations

import hmac
import html
import ipaddress
import json
import secrets
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np

from runtime.errors import FusionError

BOUNDARY = "fusionframe"
TOKEN_ENV = "FUSION_STREAM_TOKEN"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>IR+VIS fusion</title>
<style>body{background:#111;color:#ddd;font:14px sans-serif;margin:1em}img{max-width:100%;display:block}
table{border-collapse:collapse;margin-top:.6em}td,th{padding:.15em .8em;text-align:left;white-space:nowrap}
th{color:#999;font-weight:normal}.ok{color:#6f6}.bad{color:#f66}</style></head>
<body><h3>IR + VIS fusion: live</h3><img id="stream" src="stream.mjpg" alt="fused stream">
<table id="stats">__STATS__</table>
<script>
const q=location.search;document.getElementById('stream').src='stream.mjpg'+q;
function esc(v){return String(v).replace(/[&<>"]/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));}
function row(k,v){return '<tr><th>'+esc(k)+'</th><td>'+v+'</td></tr>';}
function render(s){let h=row('fps',esc(s.fps)+' ('+esc(s.frames)+' frames)')+
row('latency','p50 '+esc(s.latency_p50_ms)+' ms, p90 '+esc(s.latency_p90_ms)+' ms');
for(const [r,c] of Object.entries(s.sources)){h+=row(r.toUpperCase(),'<span class="'+(c.state=='ok'?'ok':'bad')+
'">'+esc(c.state)+'</span> '+esc(c.detail));}
h+=row('dropped',esc(s.dropped))+row('unpaired',esc(s.unpaired));return h;}
async function poll(){try{const r=await fetch('stats.json'+q);if(r.ok){const s=await r.json();
if(s.live)document.getElementById('stats').innerHTML=render(s.live);}}catch(e){}setTimeout(poll,1000);}
setTimeout(poll,1000);
</script></body></html>
"""


def live_summary(report: dict, fps_live: Optional[float] = None) -> dict:
    """What the page shows, from a statistics report (StatsRecorder.snapshot()): rounded, flat, readable."""
    counters = report.get("counters", {})
    latency = report.get("latency_ms", {})
    sources = {}
    for role, state in sorted(report.get("sources", {}).items()):
        detail = [f"{state['fps']:.3g} fps" if state.get("fps") else "", state.get("kind", "")]
        if state.get("reconnects"):
            detail.append(f"{state['reconnects']} reconnects")
        if state.get("passes", 1) > 1:
            detail.append(f"pass {state['passes']}")
        sources[role] = {"state": state.get("state", "?"), "detail": ", ".join(d for d in detail if d)}
    dropped = sum(v for k, v in counters.items() if k.startswith("stale_dropped"))
    fps = fps_live if fps_live is not None else report.get("fps", 0.0)
    return {"fps": round(float(fps or 0.0), 1), "frames": int(report.get("frames", 0)),
            "latency_p50_ms": round(float(latency.get("p50", 0.0)), 1),
            "latency_p90_ms": round(float(latency.get("p90", 0.0)), 1),
            "sources": sources, "dropped": int(dropped), "unpaired": int(counters.get("unpaired", 0))}


def render_stats_rows(summary: dict) -> str:
    """The page's stats table as HTML rows (the same layout the page's script keeps up to date)."""
    def row(key: str, value: str) -> str:
        return f"<tr><th>{html.escape(key)}</th><td>{value}</td></tr>"
    esc = lambda v: html.escape(str(v))  # noqa: E731
    rows = [row("fps", f"{esc(summary['fps'])} ({esc(summary['frames'])} frames)"),
            row("latency", f"p50 {esc(summary['latency_p50_ms'])} ms, p90 {esc(summary['latency_p90_ms'])} ms")]
    for role, source in summary["sources"].items():
        css = "ok" if source["state"] == "ok" else "bad"
        rows.append(row(role.upper(), f'<span class="{css}">{esc(source["state"])}</span> {esc(source["detail"])}'))
    rows += [row("dropped", esc(summary["dropped"])), row("unpaired", esc(summary["unpaired"]))]
    return "".join(rows)


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def stream_token(host: str, given: Optional[str] = None, environ: Optional[dict] = None) -> tuple[Optional[str], bool]:
    """The token a stream served on `host` requires, and whether it was generated here.

    An explicit token (`--auth-token`, else $FUSION_STREAM_TOKEN) is always required. Without one, loopback stays
    open (only this machine can connect) and any other address gets a fresh random token."""
    import os
    environ = os.environ if environ is None else environ
    token = given or environ.get(TOKEN_ENV) or None
    if token is not None:
        if len(token) < 8 or any(c.isspace() for c in token):
            raise FusionError("the stream token must be at least 8 characters without spaces (--auth-token or "
                              f"${TOKEN_ENV})")
        return token, False
    if is_loopback(host):
        return None, False
    return secrets.token_urlsafe(18), True


def viewing_host(host: str) -> str:
    """An address a viewer can type for a server bound to `host` (the outgoing address for 0.0.0.0 / ::)."""
    if host not in ("0.0.0.0", "::", ""):
        return f"[{host}]" if ":" in host else host
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.255.255.255", 1))      # no packet is sent; this only picks the outgoing interface
            return probe.getsockname()[0]
    except OSError:
        return socket.gethostname()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address, handler, max_connections: int):
        self.max_connections = max_connections
        self.connections = 0
        self._count_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        # Refuse before spawning a thread, so a flood of connections costs a bounded number of threads.
        with self._count_lock:
            full = self.connections >= self.max_connections
            if not full:
                self.connections += 1
        if full:
            try:
                request.settimeout(0.5)
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 5\r\n"
                                b"Content-Length: 20\r\nConnection: close\r\n\r\ntoo many connections")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._count_lock:
                self.connections -= 1

    def handle_error(self, request, client_address):
        pass  # a viewer that vanished mid-request is not the pipeline's problem, and never a traceback


class MjpegServer:
    """Serves the latest frame as MJPEG. `publish(rgb_uint8)` from the pipeline; `close()` to stop.

    token: required on every request when set (query parameter `token` or `Authorization: Bearer`).
    max_clients: concurrent streams (503 beyond); page, snapshot and stats requests have their own bound.
    send_timeout_s: a viewer that accepts no data for this long is dropped.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8090, quality: int = 80,
                 stats: Optional[Callable[[], dict]] = None, max_fps: float = 60.0, token: Optional[str] = None,
                 max_clients: int = 8, send_timeout_s: float = 10.0):
        if max_clients < 1:
            raise FusionError(f"the MJPEG client limit must be at least 1, got {max_clients}")
        self.quality = int(quality)
        self.stats = stats
        self.token = token
        self.max_clients = int(max_clients)
        self.min_interval = 1.0 / max_fps if max_fps > 0 else 0.0
        self._condition = threading.Condition()
        self._frame: Optional[np.ndarray] = None
        self._seq = 0
        self._jpeg: Optional[bytes] = None
        self._jpeg_seq = -1
        self._encode_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._stats_cache: tuple[float, Optional[dict]] = (0.0, None)
        self._closed = False
        self.clients = 0
        self.refused = 0            # streams refused at the client limit
        self.dropped_clients = 0    # viewers dropped for not reading
        self.unauthorized = 0       # requests without the right token
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"
            default_request_version = "HTTP/1.0"    # garbage gets a real status line, not an HTTP/0.9 body
            timeout = send_timeout_s          # socket timeout: a silent or stalled client is let go
            error_content_type = "text/plain"
            error_message_format = "%(code)d %(message)s\n"

            def log_message(self, *args):  # keep the terminal for the pipeline's own output
                pass

            def do_GET(self):  # noqa: N802 - http.server's naming
                try:
                    url = urlsplit(self.path)
                    query = parse_qs(url.query, keep_blank_values=True)
                except ValueError:
                    self._send(400, "text/plain", b"400 bad request\n")
                    return
                if not server._authorized(query, self.headers.get("Authorization")):
                    server.unauthorized += 1
                    self._send(401, "text/plain", b"401 this stream needs its token: open the URL fusion-run printed "
                               b"(?token=...) or send Authorization: Bearer TOKEN\n",
                               {"WWW-Authenticate": 'Bearer realm="fusion"'})
                    return
                path = url.path
                if path in ("/", "/index.html"):
                    page = PAGE.replace("__STATS__", render_stats_rows(server.live()))
                    self._send(200, "text/html; charset=utf-8", page.encode())
                elif path in ("/stream.mjpg", "/stream", "/video"):
                    server._stream(self)
                elif path in ("/snapshot.jpg", "/snapshot"):
                    jpeg = server.latest_jpeg(wait_s=5.0)
                    if jpeg is None:
                        self._send(503, "text/plain", b"no frame yet\n")
                    else:
                        self._send(200, "image/jpeg", jpeg)
                elif path == "/stats.json":
                    self._send(200, "application/json", json.dumps(server.stats_json(), default=str).encode())
                else:
                    self._send(404, "text/plain", b"not found: try / or /stream.mjpg\n")

            def _not_allowed(self):
                self._send(405, "text/plain", b"405 only GET is served here\n", {"Allow": "GET"})

            do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _not_allowed  # noqa: N815

            def _send(self, code: int, content_type: str, body: bytes, headers: Optional[dict] = None) -> None:
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body)))
                    self.send_header("Cache-Control", "no-store")
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(body)
                except OSError:
                    pass  # the client left

        # Streams, plus room for each viewer's page and stats requests, plus a few for refusing politely.
        max_connections = 2 * self.max_clients + 8
        try:
            self.httpd = _Server((host, int(port)), Handler, max_connections)
        except OSError as exc:
            raise FusionError(f"cannot serve MJPEG on {host}:{port} ({exc.strerror or exc}); pick another port "
                              f"or stop the program using it") from None
        self.host, self.port = self.httpd.server_address[:2]
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="mjpeg-http", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{viewing_host(self.host)}:{self.port}/"

    @property
    def viewing_url(self) -> str:
        """The URL to open, with the token when one is required."""
        return self.url + (f"?token={self.token}" if self.token else "")

    def _authorized(self, query: dict, authorization: Optional[str]) -> bool:
        if not self.token:
            return True
        expected = self.token.encode()
        offered = [value.encode() for value in query.get("token", [])]
        if authorization and authorization[:7].lower() == "bearer ":
            offered.append(authorization[7:].strip().encode())
        # Compare every offer in constant time (and always at least one), so timing says nothing about the token.
        result = False
        for value in offered or [b""]:
            result |= hmac.compare_digest(value, expected)
        return result

    def live(self) -> dict:
        """The page's summary of the statistics."""
        data = self.stats_json()
        return data.get("live") or live_summary(data)

    def stats_json(self) -> dict:
        """The pipeline's statistics, as of this request. Requests that arrive while they are being computed share
        that result, so many viewers polling at once cost one computation, not one each."""
        if self.stats is None:
            return {}
        asked = time.monotonic()
        with self._stats_lock:
            stamp, cached = self._stats_cache
            if cached is None or stamp < asked:
                cached = self.stats()
                if "live" not in cached:
                    cached = dict(cached, live=live_summary(cached, cached.get("fps_live")))
                self._stats_cache = (time.monotonic(), cached)
            return cached

    def publish(self, rgb: np.ndarray) -> None:
        """Offer a new frame (RGB uint8). Cheap: no copy, no encoding, never waits for a viewer."""
        with self._condition:
            self._frame = rgb
            self._seq += 1
            self._condition.notify_all()

    def latest_jpeg(self, after_seq: int = -1, wait_s: float = 1.0) -> Optional[bytes]:
        """The JPEG of the newest frame newer than `after_seq` (waits up to `wait_s`), encoded once per frame."""
        jpeg, _ = self._latest(after_seq, wait_s)
        return jpeg

    def _latest(self, after_seq: int, wait_s: float) -> tuple[Optional[bytes], int]:
        deadline = time.monotonic() + wait_s
        with self._condition:
            while (self._frame is None or self._seq <= after_seq) and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None, after_seq
                self._condition.wait(remaining)
            if self._frame is None:
                return None, after_seq
            frame, seq = self._frame, self._seq
        with self._encode_lock:
            if self._jpeg_seq < seq:
                # The channel swap in numpy, not cv2.cvtColor: this runs in a viewer's connection thread, and
                # cvtColor in a thread that then exits leaves ~0.8 kB of OpenCV thread-local state behind
                # (measured: +0.84 MB over 1000 threads; imencode alone leaves nothing). A viewer that reconnects
                # every few seconds made that a leak of a few MB a day.
                bgr = np.ascontiguousarray(frame[..., ::-1]) if frame.ndim == 3 else frame
                ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
                if not ok:
                    return None, after_seq
                self._jpeg, self._jpeg_seq = encoded.tobytes(), seq
            return self._jpeg, self._jpeg_seq

    @property
    def seq(self) -> int:
        return self._jpeg_seq

    def _stream(self, handler: BaseHTTPRequestHandler) -> None:
        with self._condition:
            full = self.clients >= self.max_clients
            if not full:
                self.clients += 1
        if full:
            self.refused += 1
            handler._send(503, "text/plain", f"503 already {self.max_clients} viewers; try again later\n".encode(),
                          {"Retry-After": "5"})
            return
        seen = -1
        last_sent = 0.0
        try:
            handler.send_response(200)
            handler.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            handler.send_header("Cache-Control", "no-store")
            handler.send_header("Connection", "close")
            handler.end_headers()
            while not self._closed:
                jpeg, seq = self._latest(seen, wait_s=0.5)
                if jpeg is None:
                    continue
                seen = seq
                wait = self.min_interval - (time.monotonic() - last_sent)
                if wait > 0:
                    time.sleep(wait)
                handler.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}"
                                    f"\r\n\r\n".encode() + jpeg + b"\r\n")
                handler.wfile.flush()
                last_sent = time.monotonic()
        except socket.timeout:
            self.dropped_clients += 1   # stopped reading: let go (it gets the newest frame if it reconnects)
        except OSError:
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
