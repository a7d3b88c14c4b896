"""Run statistics: percentiles, throughput from output times, work per frame outside inference."""
from __future__ import annotations

import numpy as np
import pytest

from runtime.stats import StatsRecorder, format_report, summarize


def test_summarize_matches_numpy_in_milliseconds():
    values = np.random.default_rng(0).exponential(0.02, 500)
    s = summarize(values)
    assert s["count"] == 500
    assert s["p50"] == pytest.approx(np.percentile(values, 50) * 1000, abs=1e-3)
    assert s["p99"] == pytest.approx(np.percentile(values, 99) * 1000, abs=1e-3)
    assert s["max"] == pytest.approx(values.max() * 1000, abs=1e-3)
    assert summarize([]) == {"count": 0}


def test_report_throughput_and_share_outside_inference():
    stats = StatsRecorder()
    for i in range(11):                       # 11 frames, one every 50 ms -> 20 fps
        stats.add("capture", 0.002)
        stats.add("capture_wait", 0.030)      # a camera's blocking read: waiting, not work
        stats.add("preprocess", 0.003)
        stats.add("inference", 0.035)
        stats.add("postprocess", 0.004)
        stats.add("output", 0.006)
        stats.output_done(now=100.0 + 0.05 * i)
    report = stats.snapshot()
    assert report["frames"] == 11 and report["fps"] == pytest.approx(20.0)
    assert report["frame_time_ms"] == pytest.approx(50.0)
    assert report["non_inference_ms"] == pytest.approx(15.0)          # 2 + 3 + 4 + 6, not the 30 ms of waiting
    assert report["non_inference_share"] == pytest.approx(0.30)
    assert report["inference_share"] == pytest.approx(0.70)
    text = format_report(report)
    assert "20.0 fps" in text and "inference 70%" in text


def test_overlay_reads_only_the_newest_samples():
    """recent_ms is the median of the newest n samples, however long the run (it must not copy the whole series)."""
    from runtime.stats import StatsRecorder
    stats = StatsRecorder(window=1000)
    for i in range(1000):
        stats.add("inference", 1.0 if i < 990 else 0.010)
    assert stats.recent_ms("inference", n=10) == pytest.approx(10.0)
    assert stats.recent_ms("inference", n=20) == pytest.approx(505.0)
    assert stats.recent_ms("missing") == 0.0


def test_sample_ring_keeps_the_newest_samples_in_order():
    from collections import deque

    from runtime.stats import SampleRing
    rng = np.random.default_rng(0)
    for capacity, count in ((1, 5), (7, 3), (7, 7), (1000, 2500), (3000, 2048)):
        ring, reference = SampleRing(capacity), deque(maxlen=capacity)
        for value in rng.random(count):
            ring.append(value)
            reference.append(value)
        assert len(ring) == len(reference)
        assert np.array_equal(ring.values(), np.array(reference))
        for n in (1, 2, max(1, capacity // 2), capacity, capacity + 5):
            assert np.array_equal(ring.newest(n), np.array(reference)[-n:] if n <= len(reference)
                                  else np.array(reference))
    ring = SampleRing(100_000)
    for value in range(150_000):
        ring.append(float(value))
    assert ring.data.nbytes == 800_000                       # bounded: 8 bytes a sample, never more than capacity
    assert ring.values()[0] == 50_000 and ring.values()[-1] == 149_999


def test_live_snapshot_summarizes_only_the_newest_samples():
    """snapshot(recent=n) gives percentiles of the newest n samples (what stats.json serves once a second), the
    plain snapshot those of the whole window; the ring holds its whole window from the start (flat memory)."""
    from runtime.stats import SampleRing, StatsRecorder
    assert SampleRing(5000).data.nbytes == 40_000 and len(SampleRing(5000)) == 0
    stats = StatsRecorder(window=5000)
    for i in range(5000):
        stats.add("inference", 0.100 if i < 4000 else 0.010)
    assert stats.snapshot()["stages_ms"]["inference"]["p50"] == pytest.approx(100.0)
    live = stats.snapshot(recent=1000)["stages_ms"]["inference"]
    assert live["count"] == 1000 and live["p50"] == pytest.approx(10.0) and live["max"] == pytest.approx(10.0)
    assert stats.snapshot(recent=1001)["stages_ms"]["inference"]["max"] == pytest.approx(100.0)
