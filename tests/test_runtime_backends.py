"""Backend selection: which files a --model offers, what `auto` picks, and one-line errors on mismatches."""
from __future__ import annotations

import numpy as np
import pytest

import runtime.backends as backends
from runtime.backends import OnnxRuntimeBackend, best_providers, create_backend, locate_model
from runtime.errors import FusionError
from helpers import make_onnx_model


def test_best_providers_prefer_tensorrt_then_cuda():
    available = ["AzureExecutionProvider", "CPUExecutionProvider", "CUDAExecutionProvider",
                 "TensorrtExecutionProvider"]
    assert best_providers(available) == ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                         "CPUExecutionProvider"]
    assert best_providers(available, device="cpu") == ["CPUExecutionProvider"]
    assert best_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_model_folder_offers_everything_and_auto_picks_what_this_machine_runs(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    make_onnx_model(folder / "model.onnx", "mean")
    (folder / "model.engine").write_bytes(b"engine")
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    files = locate_model(folder)
    assert files.onnx == folder / "model.onnx" and files.engine == folder / "model.engine"
    assert files.student == folder
    monkeypatch.setattr(backends, "cuda_gpu_present", lambda: False)
    backend = create_backend(folder, "auto")
    assert isinstance(backend, OnnxRuntimeBackend) and backend.provider == "CPUExecutionProvider"
    ir = np.full((1, 1, 8, 8), 0.2, np.float32)
    assert np.allclose(backend(ir, ir + 0.4), 0.4)
    with pytest.raises(FusionError, match="NVIDIA GPU"):
        create_backend(folder, "tensorrt")


def test_fixed_size_models_report_their_size(tmp_path):
    backend = create_backend(make_onnx_model(tmp_path / "m.onnx", "vis", size=(96, 128)), "onnxruntime")
    assert backend.input_size == (96, 128) and backend.vis_channels == 1


@pytest.mark.parametrize("setup, backend, message", [
    (lambda d: make_onnx_model(d / "m.onnx", "mean"), "torch", "--backend torch needs a student folder"),
    (lambda d: (d / "m.engine").write_bytes(b"x") and d / "m.engine", "onnxruntime", "needs an .onnx model"),
    (lambda d: (d / "weights.bin").write_bytes(b"x") and d / "weights.bin", "auto", "unknown model file type"),
    (lambda d: d / "missing.onnx", "auto", "model not found"),
])
def test_mismatches_are_one_sentence(tmp_path, setup, backend, message):
    with pytest.raises(FusionError, match=message):
        create_backend(setup(tmp_path), backend)


def test_an_onnx_graph_of_another_contract_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "other",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "classifier.onnx"))
    with pytest.raises(FusionError, match="takes 'ir' and 'vis'"):
        create_backend(tmp_path / "classifier.onnx", "onnxruntime")


def test_missing_default_model_names_make_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(backends, "DEFAULT_MODEL_DIR", tmp_path / "models" / "default")
    with pytest.raises(FusionError, match="make weights"):
        create_backend("default", "auto")


# ------------------------------------------------------------------------------------------------------- registry
def test_registry_names_every_backend_and_auto_first():
    assert backends.backend_names() == ("auto", "tensorrt", "onnxruntime", "torch", "torch-gpu")
    assert backends.backend_spec("onnxruntime").name == "onnxruntime"


def test_an_unknown_backend_lists_the_registered_ones(tmp_path):
    model = make_onnx_model(tmp_path / "m.onnx", "mean")
    with pytest.raises(FusionError, match="unknown backend 'tflite'; choose one of: auto, tensorrt, onnxruntime, "
                                          "torch, torch-gpu"):
        create_backend(model, "tflite")


@pytest.mark.parametrize("name", ["onnxruntime", "auto"])
def test_registering_a_name_twice_fails_and_leaves_the_first(name):
    before = backends.backend_names()
    with pytest.raises(FusionError, match=f"backend '{name}' is already registered"):
        backends.register_backend(name, requires=lambda f: True, needs="", usable=lambda f: False)(
            lambda files, threads, device: None)
    assert backends.backend_names() == before


def test_fusion_run_offers_exactly_the_registered_backends():
    import argparse
    from runtime.run_cli import configure
    parser = argparse.ArgumentParser()
    configure(parser)
    for name in backends.backend_names():
        assert parser.parse_args(["--backend", name]).backend == name
    with pytest.raises(SystemExit):
        parser.parse_args(["--backend", "tflite"])
