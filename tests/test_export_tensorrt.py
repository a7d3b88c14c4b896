"""TensorRT: trtexec lines (as strings, here), the engine record check, the one-sentence errors without TensorRT or a
GPU, the builder's API calls against a recording stand-in of the tensorrt module, and, where a GPU and TensorRT
exist, real fp16/int8 builds checked against fp32 through the runtime's runner."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import types

import numpy as np
import pytest

from helpers import cuda_available, requires_gpu
from export.trtexec import dynamic_profile, format_command, script_text, shape_spec, trtexec_argv
from runtime.backends.tensorrt_engine import check_compatible, metadata_path
from runtime.errors import FusionError, MissingExtraError

KNOWN_TRTEXEC_FLAGS = {"--onnx", "--saveEngine", "--fp16", "--int8", "--calib", "--minShapes", "--optShapes",
                       "--maxShapes", "--memPoolSize", "--useDLACore", "--allowGPUFallback"}


def _importable(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is not None


# --------------------------------------------------------------------------------------------------- trtexec lines
def test_trtexec_fp16_static():
    argv = trtexec_argv("m.onnx", "m.engine", "fp16", workspace_mib=1024)
    assert argv == ["trtexec", "--onnx=m.onnx", "--saveEngine=m.engine", "--fp16", "--memPoolSize=workspace:1024M"]


def test_trtexec_fp32_has_no_precision_flags():
    argv = trtexec_argv("m.onnx", "m.engine", "fp32")
    assert argv == ["trtexec", "--onnx=m.onnx", "--saveEngine=m.engine"]


def test_trtexec_int8_dynamic_dla_line():
    profile = dynamic_profile((256, 320), (480, 640), (1088, 1920), max_batch=4)
    line = format_command(trtexec_argv("/x/model.engine.onnx", "/x/model.engine", "int8", 2048, profile,
                                       "/x/model.engine.calib", dla_core=1))
    assert line == ("trtexec --onnx=/x/model.engine.onnx --saveEngine=/x/model.engine --fp16 --int8 "
                    "--calib=/x/model.engine.calib --memPoolSize=workspace:2048M "
                    "--minShapes=ir:1x1x256x320,vis:1x1x256x320 --optShapes=ir:1x1x480x640,vis:1x1x480x640 "
                    "--maxShapes=ir:4x1x1088x1920,vis:4x1x1088x1920 --useDLACore=1 --allowGPUFallback")
    for token in shlex.split(line)[1:]:
        assert token.split("=", 1)[0] in KNOWN_TRTEXEC_FLAGS


def test_trtexec_shapes_follow_vis_channels_and_quote_paths():
    profile = dynamic_profile((64, 64), (128, 128), (256, 256), vis_channels=3)
    assert shape_spec(profile, 2) == "ir:1x1x256x256,vis:1x3x256x256"
    line = format_command(trtexec_argv("my models/a.onnx", "my models/a.engine", "fp16"))
    assert shlex.split(line)[1] == "--onnx=my models/a.onnx"


@pytest.mark.parametrize("kwargs, message", [
    ({"precision": "fp32", "dla_core": 0}, "DLA runs fp16 or int8"),
    ({"precision": "fp16", "calib_cache": "c.cache"}, "calibration cache only applies"),
    ({"precision": "bf16"}, "unknown precision"),
    ({"precision": "fp16", "workspace_mib": 0}, "at least 1 MiB"),
])
def test_trtexec_rejects_impossible_builds(kwargs, message):
    with pytest.raises(FusionError, match=message):
        trtexec_argv("m.onnx", "m.engine", **kwargs)


def test_profile_must_be_ordered():
    with pytest.raises(FusionError, match="min-imgsz <= --imgsz <= --max-imgsz"):
        dynamic_profile((512, 512), (480, 640), (1088, 1920))


def test_trtexec_script_is_valid_shell_with_relative_paths(tmp_path):
    argv = trtexec_argv("model.engine.onnx", "model.engine", "fp16", 512)
    script = tmp_path / "model.engine.trtexec.sh"
    script.write_text(script_text(argv))
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert 'cd "$(dirname "$0")"' in text
    assert "--onnx=model.engine.onnx --saveEngine=model.engine --fp16 --memPoolSize=workspace:512M" in text
    # Run it with a stand-in trtexec that records its arguments: the script passes them through unchanged.
    fake = tmp_path / "trtexec"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$(dirname "$0")/args.txt"\n')
    fake.chmod(0o755)
    subprocess.run(["sh", str(script)], check=True, env={"TRTEXEC": str(fake), "PATH": "/usr/bin:/bin"})
    assert (tmp_path / "args.txt").read_text().split() == argv[1:]


# -------------------------------------------------------------------------------------------------- engine record
def _record(tmp_path, built_with):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not really an engine")
    metadata_path(engine).write_text(json.dumps({"built_with": built_with, "trtexec_portable":
                                                 "sh model.engine.trtexec.sh"}))
    return engine


def test_engine_record_accepts_the_machine_that_built_it(tmp_path):
    env = {"tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": "8.7"}
    engine = _record(tmp_path, env)
    assert metadata_path(engine).name == "model.engine.json"
    assert check_compatible(engine, dict(env))["built_with"] == env


@pytest.mark.parametrize("machine, mentioned", [
    ({"tensorrt": "8.5.2", "gpu": "Orin", "compute_capability": "8.7"}, "TensorRT 10.3.0"),
    ({"tensorrt": "10.3.0", "gpu": "NVIDIA H200", "compute_capability": "9.0"}, "compute capability 8.7"),
    ({"tensorrt": "10.3.0", "gpu": "Xavier", "compute_capability": "8.7"}, "the GPU 'Orin'"),
])
def test_engine_record_refuses_another_tensorrt_or_gpu(tmp_path, machine, mentioned):
    engine = _record(tmp_path, {"tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": "8.7"})
    with pytest.raises(FusionError, match="rebuild it on this machine") as info:
        check_compatible(engine, machine)
    assert mentioned in str(info.value) and "model.engine.trtexec.sh" in str(info.value)


def test_engine_without_record_is_loaded_on_trust(tmp_path):
    engine = tmp_path / "hand_built.engine"
    engine.write_bytes(b"x")
    assert check_compatible(engine, {"tensorrt": "10.3.0"}) is None


# ------------------------------------------------------------------------------------ no TensorRT / no GPU messages
@pytest.mark.skipif(_importable("tensorrt"), reason="tensorrt is installed here")
def test_runner_without_tensorrt_says_what_to_install():
    from runtime.backends.tensorrt_engine import TensorRTEngine
    with pytest.raises(MissingExtraError) as info:
        TensorRTEngine("model.engine")
    message = str(info.value)
    assert "python3-libnvinfer" in message and "irvis-fusion[trt]" in message and "\n" not in message


def test_runner_module_imports_without_tensorrt_torch_or_cuda():
    code = ("import sys; import runtime.backends.tensorrt_engine; "
            "bad = [m for m in ('tensorrt', 'torch', 'pycuda', 'cuda', 'distill') if m in sys.modules]; "
            "sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.skipif(_importable("tensorrt") and cuda_available(),
                    reason="TensorRT and a GPU are present: the real build tests below run instead")
def test_engine_command_without_tensorrt_or_gpu_exits_2_with_one_sentence(tmp_path, capsys):
    from runtime.cli import main as fusion_main
    code = fusion_main(["export", "--weights", "default", "--format", "engine", "--out", str(tmp_path / "m.engine")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert ("tensorrt" in err and "install" in err) or "GPU" in err
    assert not (tmp_path / "m.engine").exists()


# ------------------------------------------------------------- the builder's API calls, against a recording stand-in
class _Recorder:
    """A stand-in for the `tensorrt` module recording what build_engine asks of it (no GPU needed)."""

    def __init__(self, version="10.3.0"):
        self.calls = []
        rec = self
        module = types.ModuleType("tensorrt")
        module.__version__ = version

        class Enum:
            def __init__(self, *names):
                for i, n in enumerate(names):
                    setattr(self, n, n)

        module.Logger = type("Logger", (), {"WARNING": 2, "ERROR": 1, "__init__": lambda self, level=2: None})
        module.NetworkDefinitionCreationFlag = Enum("EXPLICIT_BATCH")
        module.BuilderFlag = Enum("FP16", "INT8", "TF32", "GPU_FALLBACK")
        module.MemoryPoolType = Enum("WORKSPACE")
        module.DeviceType = Enum("GPU", "DLA")

        class Profile:
            def set_shape(self, name, low, opt, high):
                rec.calls.append(("profile", name, tuple(low), tuple(opt), tuple(high)))

        class Config:
            def set_memory_pool_limit(self, pool, size):
                rec.calls.append(("pool", pool, size))

            def set_flag(self, flag):
                rec.calls.append(("flag", flag))

            def clear_flag(self, flag):
                rec.calls.append(("clear", flag))

            def add_optimization_profile(self, profile):
                rec.calls.append(("add_profile",))

            def set_calibration_profile(self, profile):
                rec.calls.append(("calibration_profile",))

            def __setattr__(self, key, value):
                rec.calls.append(("set", key, value))
                object.__setattr__(self, key, value)

        class Builder:
            num_DLA_cores = 2

            def __init__(self, logger):
                pass

            def create_network(self, flags):
                rec.calls.append(("network", flags))
                return object()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                calibrator = getattr(config, "int8_calibrator", None)
                if calibrator is not None:  # what TensorRT does: pull batches until None, then write the cache
                    batches = 0
                    while calibrator.get_batch(["ir", "vis"]) is not None:
                        batches += 1
                    rec.calls.append(("calibrated", batches))
                    calibrator.write_calibration_cache(b"calibration-cache")
                return b"serialized-engine"

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                rec.calls.append(("parse", path))
                return True

        class Calibrator:
            def __init__(self):
                pass

        module.Builder, module.OnnxParser, module.IInt8EntropyCalibrator2 = Builder, OnnxParser, Calibrator
        self.module = module

    def of(self, kind):
        return [c for c in self.calls if c[0] == kind]


class _FakeCuda:
    name = "fake"

    def __init__(self):
        self.copied = []

    def stream(self):
        return 0

    def malloc(self, nbytes):
        return 4096 + nbytes

    def free(self, pointer):
        pass

    def copy_to_device(self, pointer, host, stream):
        self.copied.append(host.copy())

    def synchronize(self, stream):
        pass


def _build_with_recorder(monkeypatch, tmp_path, **kwargs):
    from export import tensorrt_build
    recorder = _Recorder()
    monkeypatch.setitem(sys.modules, "tensorrt", recorder.module)
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"onnx")
    engine = tmp_path / "m.engine"
    built = tensorrt_build.build_engine(onnx, engine, **kwargs)
    return recorder, engine, built


def test_builder_fp16_dynamic_matches_its_trtexec_line(monkeypatch, tmp_path):
    profile = dynamic_profile((256, 256), (480, 640), (1088, 1920), max_batch=2)
    recorder, engine, built = _build_with_recorder(monkeypatch, tmp_path, precision="fp16", workspace_mib=512,
                                                   profile=profile)
    assert engine.read_bytes() == b"serialized-engine" and built["tensorrt"] == "10.3.0"
    assert recorder.of("flag") == [("flag", "FP16")]
    assert recorder.of("pool") == [("pool", "WORKSPACE", 512 << 20)]
    assert recorder.of("network") == [("network", 0)]  # TensorRT 10: explicit batch is the only mode
    profiles = {c[1]: c[2:] for c in recorder.of("profile")}
    line = format_command(trtexec_argv("m.onnx", "m.engine", "fp16", 512, profile))
    for which, flag in enumerate(("--minShapes", "--optShapes", "--maxShapes")):
        spec = ",".join(f"{n}:{'x'.join(map(str, profiles[n][which]))}" for n in ("ir", "vis"))
        assert f"{flag}={spec}" in line


def test_builder_dla_and_fp32(monkeypatch, tmp_path):
    recorder, _, _ = _build_with_recorder(monkeypatch, tmp_path, precision="fp16", dla_core=1)
    assert ("set", "default_device_type", "DLA") in recorder.calls and ("set", "DLA_core", 1) in recorder.calls
    assert ("flag", "GPU_FALLBACK") in recorder.calls
    with pytest.raises(FusionError, match="DLA core"):
        _build_with_recorder(monkeypatch, tmp_path, precision="fp16", dla_core=2)
    recorder, _, _ = _build_with_recorder(monkeypatch, tmp_path, precision="fp32")
    assert recorder.of("flag") == [] and recorder.of("clear") == [("clear", "TF32")]


def test_builder_int8_calibrator_feeds_real_pairs_and_writes_cache(monkeypatch, tmp_path, roadscene, test_names):
    from export.pairs import load_inputs
    inputs = load_inputs(roadscene, roadscene / "train.txt", 3, (64, 96))
    cuda = _FakeCuda()
    profile = dynamic_profile((32, 32), (64, 96), (256, 256))
    cache = tmp_path / "m.engine.calib"
    recorder, _, built = _build_with_recorder(monkeypatch, tmp_path, precision="int8", profile=profile,
                                              calib_inputs=inputs, calib_cache=cache, cuda=cuda)
    assert ("flag", "INT8") in recorder.calls and ("flag", "FP16") in recorder.calls
    assert recorder.of("calibrated") == [("calibrated", 3)] and recorder.of("calibration_profile")
    assert cache.read_bytes() == b"calibration-cache" and built["calibration_cache"] == str(cache)
    assert len(cuda.copied) == 6 and np.array_equal(cuda.copied[0], inputs[0].ir)
    assert not {i.name for i in inputs} & set(test_names)


# ------------------------------------------------------------------------------------- real builds (GPU + TensorRT)
@pytest.fixture(scope="module")
def onnx_for_trt(tmp_path_factory, roadscene):
    pytest.importorskip("tensorrt", reason="needs the tensorrt Python package")
    torch = pytest.importorskip("torch")
    from export.onnx_export import export_onnx
    from export.pairs import load_inputs
    from helpers import random_student
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("trt")
    model = random_student("nano")
    static = folder / "static.onnx"
    export_onnx(model, static, imgsz=(256, 320), check_pairs=load_inputs(roadscene, None, 2, (256, 320)))
    dynamic = folder / "dynamic.onnx"
    export_onnx(model, dynamic, imgsz=(256, 320), dynamic=True, check_pairs=load_inputs(roadscene, None, 2, None))
    return folder, static, dynamic


@requires_gpu
@pytest.mark.gpu
def test_fp16_engine_matches_fp32_through_the_runner(onnx_for_trt, roadscene):
    from export.pairs import load_inputs
    from export.tensorrt_build import build_engine, check_engine
    folder, static, _ = onnx_for_trt
    engine = folder / "static.fp16.engine"
    build_engine(static, engine, "fp16")
    inputs = load_inputs(roadscene, roadscene / "train.txt", 4, (256, 320))
    result = check_engine(engine, static, inputs, "fp16")
    assert result["psnr_db"] >= 40.0 and result["max_abs"] > 0.0  # fp16, so close but not bit-identical


@requires_gpu
@pytest.mark.gpu
def test_dynamic_int8_engine_with_calibration_cache(onnx_for_trt, roadscene):
    from export.pairs import load_inputs
    from export.tensorrt_build import build_engine, check_engine
    from runtime.backends.tensorrt_engine import TensorRTEngine
    folder, _, dynamic = onnx_for_trt
    engine, cache = folder / "dyn.int8.engine", folder / "dyn.int8.engine.calib"
    profile = dynamic_profile((128, 128), (256, 320), (640, 640))
    calib = load_inputs(roadscene, roadscene / "train.txt", 8, (256, 320))
    build_engine(dynamic, engine, "int8", profile=profile, calib_inputs=calib, calib_cache=cache)
    assert cache.is_file() and cache.stat().st_size > 0
    inputs = load_inputs(roadscene, roadscene / "train.txt", 3, None)
    inputs = [i for i in inputs if all(128 <= s <= 640 for s in i.size)]
    result = check_engine(engine, dynamic, inputs, "int8")
    assert result["psnr_db"] > 25.0
    with TensorRTEngine(engine) as runner:  # no record beside it: loaded on trust
        assert runner.dynamic and runner.profile["ir"][2] == (1, 1, 640, 640)
        with pytest.raises(FusionError, match="optimisation profile"):
            runner.infer(np.zeros((1, 1, 64, 64), np.float32), np.zeros((1, 1, 64, 64), np.float32))


@requires_gpu
@pytest.mark.gpu
def test_runner_refuses_engine_recorded_for_another_tensorrt(onnx_for_trt):
    from export.tensorrt_build import build_engine
    from runtime.backends.tensorrt_engine import TensorRTEngine
    folder, static, _ = onnx_for_trt
    engine = folder / "old.engine"
    build_engine(static, engine, "fp16")
    metadata_path(engine).write_text(json.dumps({"built_with": {"tensorrt": "0.0.1"}}))
    with pytest.raises(FusionError, match="rebuild"):
        TensorRTEngine(engine)


@requires_gpu
@pytest.mark.gpu
def test_cli_engine_build_writes_record_script_and_loads(tmp_path, roadscene):
    pytest.importorskip("tensorrt", reason="needs the tensorrt Python package")
    from distill.models import save_student
    from runtime.backends.tensorrt_engine import TensorRTEngine
    from runtime.cli import main as fusion_main
    from helpers import random_student
    folder = save_student(random_student("nano"), tmp_path / "student")
    engine = tmp_path / "model.engine"
    code = fusion_main(["export", "--weights", str(folder), "--format", "engine", "--precision", "fp16",
                        "--dynamic", "--imgsz", "256x320", "--min-imgsz", "128x128", "--max-imgsz", "640x640",
                        "--data", str(roadscene), "--check-count", "3", "--out", str(engine)])
    assert code == 0
    record = json.loads(metadata_path(engine).read_text())
    assert record["check_vs_fp32"]["psnr_db"] >= 40.0 and record["latency"]["median_ms"] > 0
    assert record["trtexec"].startswith("trtexec --onnx=") and "--optShapes=ir:1x1x256x320" in record["trtexec"]
    assert (tmp_path / "model.engine.trtexec.sh").is_file() and (tmp_path / "model.engine.onnx").is_file()
    with TensorRTEngine(engine) as runner:  # the record matches this machine
        assert runner.metadata["built_with"] == record["built_with"]
