"""The MJPEG server as a client sees it: tokens, client limits, stalled viewers, bad requests and the page.

Real sockets on 127.0.0.1 only (servers bound to 127.0.0.1:0, so each test gets a free port)."""
from __future__ import annotations

import http.client
import json
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.errors import FusionError
from runtime.mjpeg import MjpegServer, is_loopback, live_summary, stream_token
from runtime.pipeline import FusionPipeline
from helpers import NumpyBackend, wait_until

TOKEN = "s3cret-token-for-tests"
SAMPLES = Path(__file__).resolve().parents[1] / "runtime" / "assets" / "samples"


@pytest.fixture()
def frame(roadscene):
    """A real RoadScene VIS frame (RGB uint8) to serve."""
    bgr = cv2.imread(str(sorted((roadscene / "vi").glob("*.jpg"))[0]), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@pytest.fixture()
def server(frame):
    stats = {"frames": 42, "fps": 24.5, "counters": {"unpaired": 3, "stale_dropped_pairs": 5},
             "latency_ms": {"p50": 41.2, "p90": 63.9}, "sources": {"ir": {"state": "ok", "fps": 9.0}}}
    server = MjpegServer("127.0.0.1", 0, stats=lambda: dict(stats), token=TOKEN, max_clients=2, send_timeout_s=1.0)
    server.publish(frame)
    yield server
    server.close()


def get(server, path: str, headers=None, timeout=5.0):
    """(status, headers, body) of a GET; streams are read for a moment, not to the end."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    if response.getheader("Content-Type", "").startswith("multipart"):
        body = response.read1(65536)
    else:
        body = response.read()
    connection.close()
    return response.status, response, body


@pytest.mark.parametrize("path", ["/", "/stream.mjpg", "/snapshot.jpg", "/stats.json", "/nope"])
def test_requests_without_the_token_get_401_and_nothing_else(server, path):
    for headers, query in (({}, ""), ({}, "?token=wrong-token-123"), ({"Authorization": "Bearer wrong"}, ""),
                           ({"Authorization": f"Basic {TOKEN}"}, ""), ({}, f"?token={TOKEN[:-1]}")):
        status, response, body = get(server, path + query, headers)
        assert status == 401, (path, headers, query)
        assert response.getheader("WWW-Authenticate", "").startswith("Bearer")
        assert b"\xff\xd8" not in body and b"frames" not in body and b"fusionframe" not in body   # no frame, no stats
    assert server.unauthorized >= 5


def test_the_token_is_accepted_as_query_parameter_and_bearer_header(server):
    status, _, body = get(server, f"/snapshot.jpg?token={TOKEN}")
    assert status == 200 and cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR) is not None
    status, _, body = get(server, "/stats.json", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and json.loads(body)["frames"] == 42
    status, response, body = get(server, f"/stream.mjpg?token={TOKEN}")
    assert status == 200 and b"--fusionframe" in body
    status, _, _ = get(server, f"/nope?token={TOKEN}")
    assert status == 404


def test_stream_token_policy():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20") and not is_loopback("")
    assert stream_token("127.0.0.1", None, environ={}) == (None, False)            # loopback: open by default
    token, generated = stream_token("0.0.0.0", None, environ={})                 # beyond: always a token
    assert generated and len(token) >= 20 and stream_token("0.0.0.0", None, environ={})[0] != token
    assert stream_token("0.0.0.0", None, environ={"FUSION_STREAM_TOKEN": TOKEN}) == (TOKEN, False)
    assert stream_token("0.0.0.0", "given-token", environ={"FUSION_STREAM_TOKEN": TOKEN}) == ("given-token", False)
    assert stream_token("127.0.0.1", "given-token", environ={}) == ("given-token", False)  # asked for: required
    with pytest.raises(FusionError, match="at least 8"):
        stream_token("0.0.0.0", "short", environ={})


def _open_stream(server):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(f"GET /stream.mjpg?token={TOKEN} HTTP/1.0\r\n\r\n".encode())
    return sock, sock.recv(64)


def test_client_limit_gives_503_and_frees_slots(server):
    first, head1 = _open_stream(server)
    second, head2 = _open_stream(server)
    assert head1.startswith(b"HTTP/1.0 200") and head2.startswith(b"HTTP/1.0 200")
    status, response, _ = get(server, f"/stream.mjpg?token={TOKEN}")
    assert status == 503 and response.getheader("Retry-After")
    assert server.refused == 1
    assert get(server, f"/stats.json?token={TOKEN}")[0] == 200            # the page's requests still work
    first.close()

    def slot_freed():
        server.publish(np.zeros((8, 8, 3), np.uint8))                     # the server notices on its next write
        return server.clients <= 1
    wait_until(slot_freed, 5, "a closed viewer still holds its slot", poll_s=0.05)
    third, head3 = _open_stream(server)
    assert head3.startswith(b"HTTP/1.0 200")
    second.close()
    third.close()


def test_connection_flood_is_refused_without_a_thread_each(server):
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(40)]
    for sock in idle:
        sock.setblocking(False)
    replies = {}

    def refusals():
        for sock in idle:
            if sock not in replies:
                try:
                    replies[sock] = sock.recv(64)                         # b"" once an idle one times out
                except BlockingIOError:
                    pass
        return sum(reply.startswith(b"HTTP/1.0 503") for reply in replies.values())
    beyond = 40 - server.httpd.max_connections
    wait_until(lambda: refusals() >= beyond, 5, f"fewer than {beyond} of 40 idle connections got a 503")
    assert threading.active_count() < 80
    for sock in idle:
        sock.close()

    def serving():                                                        # idle ones time out after 1 s
        try:
            return get(server, f"/stats.json?token={TOKEN}", timeout=2)[0] == 200
        except OSError:
            return False
    wait_until(serving, 5, "the server did not recover from the flood", poll_s=0.2)


def test_a_stalled_viewer_never_delays_publishing_and_is_dropped():
    """One viewer stops reading while its stream sends a frame of ~8.6 MB, more than the kernel buffers (Linux
    buffers at most 4 MB a socket by default), so the server's write to it is stuck until the send timeout. Meanwhile
    each publish returns and another viewer receives every new frame, all before the stalled one is let go: a
    publish that waited for it, or a viewer held up by it, would only go on after the drop."""
    server = MjpegServer("127.0.0.1", 0, quality=100, token=TOKEN, max_clients=2, send_timeout_s=2.0, max_fps=0)
    stalled = socket.socket()
    reader = None
    try:
        server.publish(np.random.default_rng(0).integers(0, 256, (1800, 2400, 3), dtype=np.uint8))
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", server.port))
        stalled.sendall(f"GET /stream.mjpg?token={TOKEN} HTTP/1.0\r\n\r\n".encode())
        wait_until(lambda: server.clients == 1, 5, "the stalled viewer's stream did not start")
        reader = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/stream.mjpg?token={TOKEN}", timeout=5)
        boundary = b"--fusionframe"
        received, tail = 0, b""
        for sent in range(1, 11):
            if sent > 1:
                published = threading.Event()
                small = np.full((48, 64, 3), sent, np.uint8)
                threading.Thread(target=lambda: (server.publish(small), published.set()), daemon=True).start()
                assert published.wait(5), "publish() blocked"
            while received < sent:                                          # each new frame reaches the reader
                data = reader.read1(1 << 20)
                assert data, f"the other viewer's stream ended after {received} frames"
                chunk = tail + data
                received += chunk.count(boundary)
                tail = chunk[-(len(boundary) - 1):]
        assert server.dropped_clients == 0, "the stalled viewer was let go before ten frames reached the other one"
        assert server.clients == 2
        wait_until(lambda: server.dropped_clients == 1, 10, "the stalled viewer was never let go")
        wait_until(lambda: server.clients == 1, 5, "the stalled viewer's slot was not freed")
    finally:
        if reader is not None:
            reader.close()
        stalled.close()
        server.close()


@pytest.mark.parametrize("request_bytes, status", [
    (b"NONSENSE\r\n\r\n", b"400"),
    (b"GET /%zz?token=%zz&&== HTTP/1.0\r\n\r\n", b"401"),
    (b"POST /stats.json HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc", b"405"),
    (b"GET /" + b"a" * 70000 + b" HTTP/1.0\r\n\r\n", b"414"),
    (b"GET /../../etc/passwd?token=" + TOKEN.encode() + b" HTTP/1.0\r\n\r\n", b"404"),
])
def test_bad_requests_get_a_status_never_a_traceback(server, capfd, request_bytes, status):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(request_bytes)
    reply = sock.recv(256)
    sock.close()
    assert reply.split(b" ")[1] == status, reply
    wait_until(lambda: server.httpd.connections == 0, 5, "the request's connection thread did not finish")
    err = capfd.readouterr().err
    assert "Traceback" not in err and err == ""
    assert get(server, f"/stats.json?token={TOKEN}")[0] == 200             # and the server is still serving


def test_live_summary_is_readable():
    report = {"frames": 1234, "fps": 23.456, "latency_ms": {"p50": 41.26, "p90": 63.91},
              "counters": {"unpaired": 7, "stale_dropped_pairs": 5, "stale_dropped_vis": 2},
              "sources": {"vis": {"state": "ok", "fps": 30.0, "kind": "video file", "passes": 3},
                          "ir": {"state": "reconnecting", "fps": 9.0, "reconnects": 2}}}
    summary = live_summary(report, fps_live=24.04)
    assert summary["fps"] == 24.0 and summary["frames"] == 1234
    assert (summary["latency_p50_ms"], summary["latency_p90_ms"]) == (41.3, 63.9)
    assert summary["dropped"] == 7 and summary["unpaired"] == 7
    assert summary["sources"]["ir"] == {"state": "reconnecting", "detail": "9 fps, 2 reconnects"}
    assert summary["sources"]["vis"]["detail"] == "30 fps, video file, pass 3"


def test_page_stream_and_stats_of_a_running_pipeline(tmp_path, monkeypatch, capsys):
    """fusion run serving beyond loopback (simulated: 127.0.0.1 treated as a public address, so the test never
    listens outside this machine): a token is generated and printed once with the URL; with it, the page shows
    readable stats (no raw JSON), the stream gives JPEG frames and stats.json the live summary; without it, 401.
    The token is written to no file."""
    import runtime.mjpeg as mjpeg
    monkeypatch.setattr(mjpeg, "is_loopback", lambda host: False)
    monkeypatch.delenv("FUSION_STREAM_TOKEN", raising=False)
    stats_file = tmp_path / "stats.json"
    pipeline = FusionPipeline(ir=str(SAMPLES / "ir.mp4"), vis=str(SAMPLES / "vis.mp4"), backend=NumpyBackend(),
                              imgsz="120x160", outputs=["mjpeg://127.0.0.1:0"], headless=True, realtime=True,
                              loop=True, verbose=False, stats=str(stats_file))
    runner = threading.Thread(target=pipeline.run, daemon=True)
    runner.start()
    try:
        server = wait_until(lambda: pipeline.sinks, 10, "the pipeline opened no output")[0].server
        wait_until(lambda: pipeline.stats.counters.get("frames_out", 0) >= 10, 30, "fewer than 10 frames came out")
        printed = capsys.readouterr().out
        assert printed.count("?token=") == 1 and server.token in printed  # once, even with verbose off
        url = f"http://127.0.0.1:{server.port}"
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(url + "/", timeout=5)
        assert denied.value.code == 401
        page = urllib.request.urlopen(f"{url}/?token={server.token}", timeout=5).read().decode()
        table = page.split('<table id="stats">')[1].split("</table>")[0]
        for label in ("fps", "latency", "IR", "VIS", "dropped", "unpaired"):
            assert f"<th>{label}</th>" in table
        assert "{" not in table and "p50" in table and " ms" in table
        assert "stream.mjpg" in page
        with urllib.request.urlopen(f"{url}/stream.mjpg?token={server.token}", timeout=5) as response:
            data = b""
            while data.count(b"\xff\xd9") < 2 and len(data) < 5_000_000:
                data += response.read1(65536)
        start = data.index(b"\xff\xd8")
        jpeg = data[start:data.index(b"\xff\xd9", start) + 2]
        assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (120, 160, 3)
        request = urllib.request.Request(url + "/stats.json", headers={"Authorization": f"Bearer {server.token}"})
        stats = json.loads(urllib.request.urlopen(request, timeout=5).read())
        live = stats["live"]
        assert live["frames"] >= 10 and live["fps"] > 0
        assert live["sources"]["ir"]["state"] == live["sources"]["vis"]["state"] == "ok"
        assert {"dropped", "unpaired", "latency_p50_ms", "latency_p90_ms"} <= set(live)
        assert server.token not in json.dumps(stats)
    finally:
        pipeline.stop()
        runner.join(10)
    assert not runner.is_alive()
    assert server.token not in stats_file.read_text()


def test_network_outputs_beyond_loopback_say_what_protects_them():
    from runtime.gstreamer_sinks import network_pipeline, network_warning
    assert network_warning("rtp://127.0.0.1:5000") is None
    assert "without authentication" in network_warning("rtp://192.168.1.9:5000")
    assert "without credentials" in network_warning("rtsp://10.0.0.2:8554/fused")
    assert network_warning("rtsp://10.0.0.2:8554/fused", token=TOKEN) is None
    assert network_warning("rtsp://me:pw@10.0.0.2:8554/fused") is None
    pipeline = network_pipeline("rtsp://10.0.0.2:8554/fused", token=TOKEN)
    assert pipeline.endswith(f"location=rtsp://10.0.0.2:8554/fused user-id=fusion user-pw={TOKEN}")
    pipeline = network_pipeline("rtsp://me:pw@10.0.0.2:8554/fused", token=TOKEN)
    assert pipeline.endswith("location=rtsp://10.0.0.2:8554/fused user-id=me user-pw=pw")
    assert "udpsink host=192.168.1.9 port=5000" in network_pipeline("rtp://192.168.1.9:5000")
