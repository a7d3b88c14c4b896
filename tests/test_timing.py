"""runtime.timing, the one way models are timed (`fusion distill profile`, the INT8 export's speed check, `fusion
bench`): percentiles, interleaved rounds, warm-up and run counts, the time budget, and ONNX Runtime sessions and
runners. Time comes from a scripted clock, so nothing here depends on how fast the machine is."""
from __future__ import annotations

import numpy as np
import pytest

from runtime.timing import ort_runner, ort_session, schedule_rounds, summarize, time_callable, time_interleaved


class ScriptedClock:
    """A clock that moves only when a timed call says so (1/64 s steps: exact in binary)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def call(self, seconds: float, log: list | None = None, name: str = ""):
        def fn():
            self.now += seconds
            if log is not None:
                log.append(name)
        return fn


def test_summarize_percentiles_and_fps():
    s = summarize([float(v) for v in range(1, 101)])  # 1..100 ms
    assert s.runs == 100
    assert s.p50_ms == pytest.approx(50.5)
    assert s.p90_ms == pytest.approx(90.1)
    assert s.p99_ms == pytest.approx(99.01)
    assert s.min_ms == 1.0 and s.mean_ms == pytest.approx(50.5)
    assert s.fps == pytest.approx(1000 / 50.5)
    assert s.to_dict()["fps"] == s.fps
    with pytest.raises(ValueError):
        summarize([])


def test_interleaving_spreads_the_rare_model_over_all_rounds():
    calls = []
    time_interleaved({"student": lambda: calls.append("student"), "peer": lambda: calls.append("peer")},
                     runs={"student": 10, "peer": 3}, warmup=0)
    assert calls.count("student") == 10 and calls.count("peer") == 3
    rounds_with_peer = [calls[:i].count("student") - 1 for i, name in enumerate(calls) if name == "peer"]
    assert rounds_with_peer == [0, 4, 9]  # one round each: first, middle, last (student 10 times, one a round)
    assert schedule_rounds({"a": 2, "b": 2}) == [["a", "b"], ["a", "b"]]   # equal counts: one each a round
    assert schedule_rounds({"a": 3, "b": 0}) == [["a"], ["a"], ["a"]] and schedule_rounds({}) == []


def test_warmup_is_round_robin_and_untimed_then_every_run_is_timed():
    clock, calls = ScriptedClock(), []
    stats = time_interleaved({"a": clock.call(1 / 64, calls, "a"), "b": clock.call(4 / 64, calls, "b")},
                             runs=2, warmup={"a": 3, "b": 1}, clock=clock)
    assert calls == ["a", "b", "a", "a", "a", "b", "a", "b"]    # warm-up rounds, then timed rounds
    assert stats["a"].runs == 2 and stats["a"].p50_ms == stats["a"].p90_ms == pytest.approx(1000 / 64)
    assert stats["b"].runs == 2 and stats["b"].p50_ms == pytest.approx(4000 / 64)


def test_time_budget_stops_early_but_keeps_min_runs():
    clock = ScriptedClock()
    stats = time_callable(clock.call(1 / 64), runs=1000, warmup=2, max_seconds=5 / 64, min_runs=3, clock=clock)
    assert stats.runs == 6          # the round after the budget (5 calls) is passed is the last
    assert stats.p50_ms == pytest.approx(1000 / 64)
    slow = ScriptedClock()
    stats = time_callable(slow.call(1.0), runs=1000, warmup=0, max_seconds=0.5, min_runs=3, clock=slow)
    assert stats.runs == 3          # over budget after the first call, yet min_runs are kept


def _sum_model(path):
    """A one-node ONNX model: fused = ir + vis, float32 (1, 1, H, W)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    shape = [1, 1, "H", "W"]
    graph = helper.make_graph([helper.make_node("Add", ["ir", "vis"], ["fused"])], "sum",
                              [helper.make_tensor_value_info("ir", TensorProto.FLOAT, shape),
                               helper.make_tensor_value_info("vis", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("fused", TensorProto.FLOAT, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_ort_session_and_runner_run_the_model_on_fixed_feeds(tmp_path):
    pytest.importorskip("onnxruntime")
    session = ort_session(_sum_model(tmp_path / "sum.onnx"), threads=1)
    options = session.get_session_options()
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert ort_session(tmp_path / "sum.onnx", threads=2, spinning=True).get_session_options().intra_op_num_threads == 2
    ir = np.arange(12, dtype=np.float64).reshape(1, 1, 3, 4)          # cast to the declared float32
    run = ort_runner(session, {"ir": ir, "vis": np.ones_like(ir), "unused": ir})
    (fused,) = run()
    assert fused.dtype == np.float32 and np.array_equal(fused, ir + 1)
    stats = time_callable(run, runs=4, warmup=1)
    assert stats.runs == 4 and stats.min_ms <= stats.p50_ms <= stats.p90_ms <= stats.p99_ms
