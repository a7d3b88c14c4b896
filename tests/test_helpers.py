"""Self-checks of the shared test helpers (helpers.py): what the other tests build on must do what it says."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import SyntheticSource, make_onnx_model, wait_until


def test_synthetic_file_source_timestamps():
    source = SyntheticSource(fps=9, frames=5, live=False)
    times = [source.read().t_media for _ in range(5)]
    assert np.allclose(times, np.arange(5) / 9)
    assert source.read() is None


def test_onnx_helper_models(tmp_path):
    import onnxruntime as ort
    ir = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)
    vis = np.random.default_rng(1).random((1, 1, 8, 8), dtype=np.float32)
    for op, expected in (("vis", vis), ("max", np.maximum(ir, vis)), ("mean", (ir + vis) / 2)):
        session = ort.InferenceSession(str(make_onnx_model(tmp_path / f"{op}.onnx", op)),
                                       providers=["CPUExecutionProvider"])
        assert np.allclose(session.run(["fused"], {"ir": ir, "vis": vis})[0], expected, atol=1e-6)


def test_wait_until_returns_the_condition_or_fails_saying_what_did_not_happen():
    calls = iter([0, None, "ready"])
    assert wait_until(lambda: next(calls), 5, "never ready", poll_s=0) == "ready"
    with pytest.raises(pytest.fail.Exception, match=r"the flag was never set \(waited 0.01 s\)"):
        wait_until(lambda: False, 0.01, "the flag was never set", poll_s=0.005)
