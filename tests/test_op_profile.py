"""ORT's per-op profile of a student graph (benchmarks.latency.ort_op_profile): what `benchmarks.student_speed --ops`
prints to show where the student's time goes."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")


def test_op_profile_accounts_for_every_kernel(tmp_path):
    from benchmarks.latency import format_op_profile, ort_op_profile
    from distill.eval_profile import export_for_timing
    from distill.models import create_student
    model = create_student("tiny-test", input_scale=2, pyramid_levels=1).eval()
    path = export_for_timing(model, tmp_path / "tiny.onnx", (64, 96), 1)
    rng = np.random.default_rng(0)
    feeds = {"ir": rng.random((1, 1, 64, 96), dtype=np.float32), "vis": rng.random((1, 1, 64, 96), dtype=np.float32)}
    profile = ort_op_profile(path, feeds, threads=1, runs=3, warmup=1)
    ops = {o["op"]: o for o in profile["ops"]}
    assert {"Conv", "Resize", "AveragePool"} <= set(ops)          # the body, the upsampling, the source pyramid
    assert sum(o["count"] for o in profile["ops"]) == profile["nodes"]
    assert sum(o["share"] for o in profile["ops"]) == pytest.approx(1.0)
    assert profile["kernel_ms"] == pytest.approx(sum(o["ms"] for o in profile["ops"]))
    costs = [n["ms"] for n in profile["top_nodes"]]
    assert costs == sorted(costs, reverse=True) and len(costs) == min(15, profile["nodes"])
    text = format_op_profile(profile)
    assert "| Conv |" in text and f"{profile['nodes']} kernels" in text
