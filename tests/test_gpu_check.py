"""`make gpu-check` / benchmarks/gpu_check.py where there is no GPU (always true with CUDA_VISIBLE_DEVICES=""): one
line and exit 3 (make: non-zero), no `make setup` with PY=; and the parts that need no GPU: the selection of the GPU
tests, the summary table, skipped and failed stages."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_check

REPO = Path(__file__).resolve().parents[1]
NO_GPU = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}


def test_without_a_gpu_the_script_says_so_and_exits_3(tmp_path):
    result = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out", str(tmp_path / "out")],
                            cwd=REPO, env=NO_GPU, capture_output=True, text=True, timeout=120)
    assert result.returncode == gpu_check.EXIT_NO_GPU == 3
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no GPU to check: ") and "nothing was run" in lines[0]
    assert not (tmp_path / "out").exists()


def test_make_gpu_check_with_py_skips_setup_and_fails_without_a_gpu(tmp_path):
    dry = subprocess.run(["make", "--no-print-directory", "-n", "gpu-check", "PY=python3"], cwd=REPO, capture_output=True, text=True)
    assert dry.returncode == 0
    assert dry.stdout.strip().splitlines() == ["python3 -m benchmarks.gpu_check --out build/gpu-check --data "
                                               "../shared/data"]
    had_venv = (REPO / ".venv").exists()
    result = subprocess.run(["make", "--no-print-directory", "gpu-check", f"PY={sys.executable}", f"GPU_CHECK_OUT={tmp_path / 'out'}"],
                            cwd=REPO, env=NO_GPU, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "gpu-check: no GPU to check" in result.stdout
    assert result.stdout.splitlines()[0] == f"{sys.executable} -m benchmarks.gpu_check --out {tmp_path / 'out'} " \
                                            f"--data ../shared/data"   # the only command make ran: no setup
    assert (REPO / ".venv").exists() == had_venv


def test_only_the_gpu_tests_are_collected():
    env = {**NO_GPU, "FUSION_GPU_TESTS_ONLY": "1"}
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "benchmarks.gpu_check",
                             "tests/test_distill_train.py", "tests/test_gpu_augment.py"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    collected = sorted(line for line in result.stdout.splitlines() if "::" in line)
    assert collected == ["tests/test_distill_train.py::test_cuda_amp_training_steps",
                         "tests/test_gpu_augment.py::test_cuda_batches_match_the_cpu_statistics"], result.stdout


def test_stages_report_skips_and_failures_in_one_table(monkeypatch, tmp_path, capsys):
    stages = []
    gpu_check.staged("fine", lambda: "42 things", stages)
    gpu_check.staged("absent", lambda: (_ for _ in ()).throw(gpu_check.SkipStage("no TensorRT")), stages)
    gpu_check.staged("broken", lambda: 1 / 0, stages)
    assert [(s.name, s.status, s.headline) for s in stages] == [
        ("fine", "ok", "42 things"), ("absent", "skipped", "no TensorRT"), ("broken", "failed", "division by zero")]
    table = gpu_check.format_table(stages).splitlines()
    assert table[0] == "| stage | result | seconds | headline |" and len(table) == 5

    monkeypatch.setattr(gpu_check, "gpu_present", lambda: (True, "a pretend GPU"))
    import importlib.util
    has_trt = importlib.util.find_spec("tensorrt") is not None
    if has_trt:
        pytest.skip("TensorRT is installed here: the engine stage would run, not skip")
    assert gpu_check.main(["--stages", "engine", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| fp16 engine | skipped |" in out and "TensorRT is not installed" in out
    assert (tmp_path / "summary.md").read_text().startswith("gpu-check on a pretend GPU")
    monkeypatch.setattr(gpu_check, "engine", lambda out: 1 / 0)
    assert gpu_check.main(["--stages", "engine", "--out", str(tmp_path)]) == 1
    assert "gpu-check: FAILED: fp16 engine" in capsys.readouterr().out
