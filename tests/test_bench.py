"""`fusion bench` and its parts: the report and a small real run (timing statistics: tests/test_timing.py; params and
GMACs: tests/test_cost.py)."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from distill.cost import count_macs, count_params
from export.pairs import spread
from runtime.errors import FusionError

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------------- pairs
def test_spread_is_deterministic_and_includes_the_ends():
    names = [f"n{i}" for i in range(50)]
    assert spread(names, 3) == ["n0", "n24", "n49"] or spread(names, 3) == ["n0", "n25", "n49"]
    assert spread(names, None) == names and spread(names, 0) == [] and spread(names, 1) == ["n0"]


# ---------------------------------------------------------------------------------------------------- CLI
def _parse(argv):
    from benchmarks.cli import configure
    parser = argparse.ArgumentParser()
    configure(parser)
    return parser.parse_args(argv)


def test_cli_flags_override_defaults_and_quick_shrinks_the_run():
    from benchmarks.cli import build_config
    cfg = build_config(_parse(["--imgsz", "480x640", "256", "--peers", "--target-ms", "16.7", "--no-e2e"]))
    assert cfg.imgsz == [[480, 640], [256, 256]]
    assert cfg.peers == [] and cfg.target_ms == 16.7 and cfg.e2e is False
    assert cfg.teachers == ["em", "ddfm"]  # untouched default
    quick = build_config(_parse(["--quick"])).apply_quick()
    assert quick.imgsz == [[480, 640]] and quick.runs <= 20 and quick.quality_count <= 3


@pytest.mark.parametrize("bad", ["640by480", "8x8"])
def test_cli_rejects_bad_sizes_in_one_sentence(bad):
    from benchmarks.cli import build_config
    with pytest.raises(FusionError, match="--imgsz"):
        build_config(_parse(["--imgsz", bad]))


def test_config_file_is_read_and_flags_win(tmp_path):
    from benchmarks.cli import build_config
    path = tmp_path / "bench.yaml"
    path.write_text("runs: 7\nthreads: 1\npeers: [densefuse]\n")
    cfg = build_config(_parse(["--config", str(path), "--runs", "9"]))
    assert cfg.runs == 9 and cfg.threads == 1 and cfg.peers == ["densefuse"]


def test_unknown_backend_is_refused():
    from benchmarks.bench import BenchConfig, run_benchmark
    with pytest.raises(FusionError, match="unknown backend"):
        run_benchmark(BenchConfig(backends=["tflite"]))


# ---------------------------------------------------------------------------------------------------- a real run
@pytest.fixture(scope="module")
def small_run(tmp_path_factory, roadscene):
    """A complete (small) benchmark: tiny student, torch + ONNX Runtime fp32 + INT8, one peer, one real test pair,
    the runtime pipeline on the bundled clips for a few frames."""
    from benchmarks.bench import BenchConfig, run_benchmark
    cfg = BenchConfig(variant="tiny-test", imgsz=[[64, 80]], backends=["torch", "onnxruntime", "onnxruntime-int8"],
                      threads=1, runs=4, warmup=1, peer_runs=2, peers=["densefuse"], data=str(roadscene),
                      quality_count=1, teachers=[], calib_count=2, e2e=True, e2e_frames=3, target_ms=1e6)
    return run_benchmark(cfg)


def test_rows_cover_backends_and_the_peer_with_quality_where_due(small_run):
    rows = {(r["model"], r["backend"], r["precision"]): r for r in small_run.rows}
    student = "tiny-test (random weights)"
    assert set(rows) == {(student, "torch-cpu", "fp32"), (student, "onnxruntime-cpu", "fp32"),
                         (student, "onnxruntime-cpu", "int8"), ("densefuse", "onnxruntime-cpu", "fp32")}
    for row in small_run.rows:
        assert row["resolution"] == "80x64" and row["p50_ms"] > 0 and row["p90_ms"] >= row["p50_ms"]
        assert row["meets_target"] is True  # target 1e6 ms
    torch_row, ort_row = rows[(student, "torch-cpu", "fp32")], rows[(student, "onnxruntime-cpu", "fp32")]
    # ORT fp32 and torch compute the same function: same quality to the metric's precision.
    assert ort_row["EN"] == pytest.approx(torch_row["EN"], abs=1e-3)
    assert "EN" not in rows[("densefuse", "onnxruntime-cpu", "fp32")]  # random-weight peer: latency only
    assert rows[("densefuse", "onnxruntime-cpu", "fp32")]["gmacs"] == pytest.approx(87_984 * 64 * 80 / 1e9)
    # the student's GMACs include the cross-attention products thop cannot see (as `fusion distill eval` counts)
    from distill.models import create_student
    macs = count_macs(create_student("tiny-test"), 64, 80)
    assert torch_row["gmacs"] == pytest.approx(macs["gmacs"]) and ort_row["gmacs"] == torch_row["gmacs"]


def test_notes_explain_absent_rows(small_run):
    text = " ".join(small_run.notes)
    assert "random weights" in text
    assert "Jetson" in text


def test_end_to_end_ran_the_runtime_pipeline_on_the_sample_clips(small_run):
    modes = {e["mode"]: e for e in small_run.e2e}
    assert set(modes) == {"throughput", "camera rate"}, small_run.notes
    assert all(e["frames"] == 3 and e["fps"] > 0 for e in modes.values())
    # as `fusion run` runs it: the runtime's own thread count, not the bench's --threads (1 here)
    from runtime.backends import default_threads
    assert all(e["threads"] == default_threads() for e in modes.values())


def test_report_table_json_and_plot(small_run, tmp_path):
    from benchmarks.report import ROW_KEYS, json_rows, markdown_table, plot_latency_quality, write_json
    table = markdown_table(small_run)
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| model | backend | precision | resolution | params | GMACs | p50 ms")
    assert "<= 1e+06 ms" in lines[0]
    assert any(line.startswith("| densefuse (random weights) | onnxruntime-cpu") for line in lines)
    assert len({len(line.split("|")) for line in lines[:6]}) == 1  # every row has every column
    rows = json_rows(small_run)
    path = write_json(tmp_path / "rows.json", rows)
    loaded = json.loads(path.read_text())
    assert isinstance(loaded, list) and list(loaded[0])[:len(ROW_KEYS)] == list(ROW_KEYS)
    png = plot_latency_quality(small_run, tmp_path / "plot.png", "EN")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_student_speed_report(roadscene):
    from benchmarks.student_speed import format_report, measure_student_speed
    from distill.models import create_student
    report = measure_student_speed(create_student("tiny-test"), imgsz=(64, 80), threads=1, runs=3, peer_runs=1,
                                   peer="densefuse", data=roadscene)
    assert report["speedup"] == pytest.approx(report["peer"]["p50_ms"] / report["student"]["p50_ms"])
    assert report["student"]["params"] == count_params(create_student("tiny-test"))
    text = format_report(report)
    assert "| densefuse (random weights; Li & Wu, DenseFuse, IEEE TIP 2019)" in text
    assert "<= 30 ms" in text


def test_trtexec_command_line():
    from benchmarks.trt_build import trtexec_command
    cmd = trtexec_command("trtexec", "m.onnx", "m.engine", "int8", (480, 640), calib_cache="calib.cache",
                          dla_core=0)
    assert cmd[:3] == ["trtexec", "--onnx=m.onnx", "--saveEngine=m.engine"]
    assert "--optShapes=ir:1x1x480x640,vis:1x1x480x640" in cmd
    assert "--minShapes=ir:1x1x64x64,vis:1x1x64x64" in cmd
    assert {"--fp16", "--int8", "--calib=calib.cache", "--useDLACore=0", "--allowGPUFallback"} <= set(cmd)
    assert "--int8" not in trtexec_command("trtexec", "m.onnx", "m.engine", "fp16", (512, 512))


def test_tensorrt_rows_explain_why_they_are_absent_here():
    from benchmarks.trt_build import unavailable_reason
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert unavailable_reason() in ("this machine has no NVIDIA GPU",
                                    "the tensorrt Python package is not installed (pip install -e .[trt]; "
                                    "JetPack ships it)")


def test_outputs_are_scored_as_the_8bit_files_they_would_be_written_as():
    """A model's float output (out of range at places; gray, or RGB scored by its luminance) gets the metrics of the
    8-bit image a written file would hold: clipped to [0, 1], scaled and rounded."""
    from benchmarks.bench import score_outputs
    from distill.metrics import fusion_metrics
    from runtime.color import luminance
    rng = np.random.default_rng(0)
    ir255, vis255 = (rng.integers(0, 256, (48, 64)).astype(np.float32) for _ in range(2))
    pair = ("pair", None, None, ir255, vis255)
    gray = rng.uniform(-0.1, 1.2, (1, 1, 48, 64)).astype(np.float32)
    rgb = rng.uniform(-0.1, 1.2, (1, 3, 48, 64)).astype(np.float32)
    for fused, image in ((gray, gray[0, 0]), (rgb, luminance(rgb[0].transpose(1, 2, 0)))):
        written = np.round(np.clip(image, 0.0, 1.0) * 255.0)
        assert score_outputs([pair], [fused]) == fusion_metrics(ir255, vis255, written)
        assert score_outputs([pair], [fused]) != fusion_metrics(ir255, vis255, np.clip(image, 0.0, 1.0) * 255.0)


def test_ddfm_step_cost_with_a_tiny_random_prior_is_labelled(roadscene, test_names):
    pytest.importorskip("diffusers")
    from benchmarks.bench import quality_pairs
    from benchmarks.ddfm_probe import step_cost
    name, ir, vis, ir255, vis255 = quality_pairs(roadscene, 1, 1)[0]
    crop = (name, ir[..., :48, :64].copy(), vis[..., :48, :64].copy(), ir255[:48, :64], vis255[:48, :64])
    row = step_cost(None, crop, steps=3)
    assert row["model"] == "teacher ddfm (tiny random prior)" and row["unit"] == "step"
    assert "SAMPLER + EM STEP ONLY" in row["detail"]
    assert len(row["seconds"]) == 2 and row["per_unit_s"] > 0 and row["steps"] == 100


def test_a_fresh_machine_without_the_dataset_still_gets_a_table(monkeypatch, tmp_path):
    """No ../shared/data: latency on noise, peers still side by side, and notes saying what is missing and why."""
    from benchmarks.bench import BenchConfig, run_benchmark
    from benchmarks.report import markdown_table
    monkeypatch.setenv("FUSION_DATA", str(tmp_path / "absent"))
    result = run_benchmark(BenchConfig(variant="tiny-test", imgsz=[[32, 48]], backends=["onnxruntime",
                                       "onnxruntime-int8"], threads=1, runs=2, warmup=1, peer_runs=1,
                                       peers=["seafusion", "densefuse"], e2e=False))
    assert [(r["model"], r["precision"]) for r in result.rows] == [
        ("tiny-test (random weights)", "fp32"), ("seafusion", "fp32"), ("densefuse", "fp32")]
    notes = " ".join(result.notes)
    assert "no dataset found" in notes and "onnxruntime int8 row absent" in notes and "teacher rows absent" in notes
    assert "| seafusion (random weights) |" in markdown_table(result)


def test_a_missing_extra_is_one_sentence(monkeypatch):
    import sys
    from benchmarks.bench import BenchConfig, run_benchmark
    from runtime.errors import MissingExtraError
    monkeypatch.setitem(sys.modules, "thop", None)  # what Python does for a package that is not installed
    with pytest.raises(MissingExtraError, match=r"fusion bench needs 'thop'.*irvis-fusion\[train\]"):
        run_benchmark(BenchConfig())


def test_torch_gpu_rows_for_student_and_peers_or_a_note_why_not(monkeypatch):
    """torch-cuda-fp16 / torch-cuda-graph rows go to the student and every peer alike; without a GPU they are absent
    and one note says why (GPU faked absent/present: no CUDA is needed to check which rows are asked for)."""
    import benchmarks.bench as bench
    from benchmarks.bench import BenchConfig, build_candidates, torch_gpu_candidates
    from distill.models import create_student
    model = create_student("tiny-test").eval()
    cfg = BenchConfig(backends=["torch", "torch-cuda-fp16", "torch-cuda-graph"], peers=["densefuse"])
    monkeypatch.setattr(bench, "_gpu_available", lambda: False)
    notes: list = []
    from pathlib import Path
    candidates = build_candidates(cfg, model, "student", Path("unused.onnx"), None, notes)
    assert [c.backend for c in candidates] == ["torch-cpu"]
    assert torch_gpu_candidates(cfg, "densefuse", model, notes, role="peer") == []
    assert notes == ["torch-cuda-fp16 and torch-cuda-graph rows absent: torch sees no CUDA GPU on this machine"]
    made = []
    monkeypatch.setattr("benchmarks.candidates.TorchGraphCandidate",
                        lambda name, module, device, half, graphs, role: made.append((name, half, graphs, role)))
    monkeypatch.setattr(bench, "_gpu_available", lambda: True)
    torch_gpu_candidates(cfg, "densefuse", model, [], role="peer")
    assert made == [("densefuse", True, False, "peer"), ("densefuse", True, True, "peer")]


def test_graph_candidate_runs_the_same_function_off_cuda(roadscene):
    """The candidate behind those rows, on the CPU (fp32, eager): same output as the plain torch row."""
    import numpy as np
    import torch

    from benchmarks.candidates import TorchCandidate, TorchGraphCandidate
    from distill.models import create_student
    torch.manual_seed(0)
    model = create_student("tiny-test").eval()
    plain, fast = TorchCandidate("s", model), TorchGraphCandidate("s", model, "cpu", half=True, graphs=True)
    assert fast.precision == "fp32" and fast.backend == "torch-cpu"
    ir = np.random.default_rng(0).random((1, 1, 48, 64), dtype=np.float32)
    np.testing.assert_allclose(fast.infer(ir, ir), plain.infer(ir, ir), atol=1e-6)
    assert fast.runner({"ir": ir, "vis": ir})() is not None
