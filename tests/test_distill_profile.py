"""`fusion distill profile` (distill.eval_profile.profile_student): a student's params, GMACs and ONNX Runtime latency,
beside a peer timed interleaved in the same run, with the numbers it prints and writes. Tiny sizes; nothing here
depends on how fast the machine is."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from distill.cost import count_params  # noqa: E402
from distill.peers import create_peer  # noqa: E402
from runtime.cli import main as fusion_main  # noqa: E402

COMMON = ["distill", "profile", "--variant", "tiny-test", "--size", "64x80", "--threads", "1", "--runs", "3"]


def test_profile_times_the_student_beside_the_peer(tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert fusion_main([*COMMON, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result) == {"params", "gmacs", "thop_gmacs", "height", "width", "threads", "ort_median_ms", "peer",
                           "peer_ort_median_ms", "speedup_vs_peer", "peer_params"}
    assert (result["height"], result["width"], result["threads"], result["peer"]) == (64, 80, 1, "seafusion")
    assert result["ort_median_ms"] > 0 and result["peer_ort_median_ms"] > 0
    assert result["speedup_vs_peer"] == pytest.approx(result["peer_ort_median_ms"] / result["ort_median_ms"])
    assert result["peer_params"] == count_params(create_peer("seafusion"))
    printed = capsys.readouterr().out
    assert "ONNX Runtime CPU, 1 threads: median" in printed and "seafusion peer (random weights, same run)" in printed


def test_profile_without_a_peer_times_the_student_alone(tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert fusion_main([*COMMON, "--peer", "", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert "peer" not in result and "speedup_vs_peer" not in result
    assert result["ort_runs"] == 3 and 0 < result["ort_median_ms"] <= result["ort_p90_ms"]
    assert "peer" not in capsys.readouterr().out
