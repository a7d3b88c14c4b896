"""The runtime's memory tuning: what keeps a pipeline that runs for hours at a flat resident size."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

ARENA_PROBE = r"""
import ctypes, sys, threading
import numpy as np
if sys.argv[1] == "tuned":
    from runtime.memory import tune_allocator
    tune_allocator()
ready = threading.Barrier(9)
def work():
    blocks = [np.ones(16 * 1024, np.uint8) for _ in range(8)]   # 16 KB: heap blocks, not mmap
    ready.wait()
    ready.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
ready.wait()                    # all eight alive and allocating at once
libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
stream = libc.fopen(sys.argv[2].encode(), b"w")
libc.malloc_info(0, stream)
libc.fclose(stream)
ready.wait()
for t in threads:
    t.join()
print(open(sys.argv[2]).read().count("<heap nr="))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="malloc arenas are glibc's")
def test_tuned_allocator_caps_malloc_arenas(tmp_path):
    """Threads that allocate at once share ARENA_MAX arenas once the allocator is tuned (each arena keeps its own
    free memory: more arenas, more resident memory nobody uses); untuned, glibc gives each thread its own."""
    from runtime.memory import ARENA_MAX
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "FUSION_NO_MALLOPT")}
    env["PYTHONPATH"] = str(REPO)
    counts = {}
    for mode in ("tuned", "untuned"):
        if mode == "untuned":
            env["FUSION_NO_MALLOPT"] = "1"
        done = subprocess.run([sys.executable, "-c", ARENA_PROBE, mode, str(tmp_path / f"{mode}.xml")], env=env,
                              capture_output=True, text=True, timeout=120, check=True)
        counts[mode] = int(done.stdout.strip().splitlines()[-1])
    assert counts["tuned"] <= ARENA_MAX, counts
    assert counts["untuned"] > ARENA_MAX, counts


def test_pipeline_tunes_the_allocator_before_its_threads_start(monkeypatch):
    """The cap only binds threads that pick an arena after it: the pipeline sets it when it is built."""
    import runtime.pipeline as pipeline
    calls = []
    monkeypatch.setattr(pipeline, "tune_allocator", lambda: calls.append("tuned"))
    from runtime.errors import FusionError
    with pytest.raises(FusionError, match="on_loss"):
        pipeline.FusionPipeline(on_loss="bogus")
    assert calls == ["tuned"]


VIEWER_PROBE = r"""
import http.client, sys
import numpy as np
from runtime.memory import tune_allocator, release_free_memory
tune_allocator()
from benchmarks.soak import heap_status
from runtime.mjpeg import MjpegServer
server = MjpegServer(port=0)
frames = [np.full((240, 320, 3), v, np.uint8) for v in (10, 200)]
def snapshots(n):
    for i in range(n):
        server.publish(frames[i % 2])         # a new frame each time: this viewer's thread encodes it
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.request("GET", "/snapshot.jpg")
        assert connection.getresponse().read()[:2] == b"\xff\xd8"
        connection.close()
snapshots(50)
release_free_memory()
before = heap_status()["heap_used"]
snapshots(int(sys.argv[1]))
release_free_memory()
print(round(1e6 * (heap_status()["heap_used"] - before) / int(sys.argv[1])))
server.close()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="the heap account (mallinfo2) is glibc's")
def test_viewer_connections_leave_no_memory_behind():
    """Every viewer request runs in its own short-lived thread, and the frame is encoded in whichever viewer's thread
    asks first. OpenCV calls that keep thread-local state (cvtColor did) leaked ~0.8 kB per such thread, which a
    viewer reconnecting every few seconds turns into megabytes a day. Bytes of heap per request, measured over 600."""
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "FUSION_NO_MALLOPT")}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run([sys.executable, "-c", VIEWER_PROBE, "600"], env=env, capture_output=True, text=True,
                          timeout=240, check=True)
    per_request = int(done.stdout.strip().splitlines()[-1])
    assert per_request < 200, f"{per_request} bytes of heap kept per viewer request"
