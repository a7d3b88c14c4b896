"""The wheel works outside the checkout, and `--config` takes the names of the configs it ships.

One wheel is built (`pip wheel`, from a copy of the source tree so the checkout gets no build/ folder) and installed
with --no-deps into a fresh virtual environment that sees the dependencies of the interpreter running the tests.
Every command then runs from an empty folder with no PYTHONPATH, so it can only import the wheel's copy: `fusion
--help`, `fusion-run` on the bundled clips, and `fusion distill train --config default` for two steps on targets the
wheel's own `fusion teacher fuse` makes.
"""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

from runtime.config import load_config, packaged_configs, resolve_config
from runtime.errors import FusionError

REPO = Path(__file__).resolve().parents[1]
CHECKOUT_CONFIGS = REPO / "configs"
IGNORED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "runs", "*.egg-info", "__pycache__", "*.pyc",
                                 ".pytest_cache")


def copy_source_tree(destination: Path) -> Path:
    """The files git would put in a commit (tracked, plus untracked ones it does not ignore); without git, the
    tree minus the usual build and run folders."""
    try:
        listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                capture_output=True, check=True, timeout=60).stdout.decode().split("\0")
    except (OSError, subprocess.SubprocessError):
        return Path(shutil.copytree(REPO, destination, ignore=IGNORED))
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


# ------------------------------------------------------------------------------------------ packaged config names
def test_a_packaged_name_resolves_to_the_shipped_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # names work from any folder
    assert resolve_config("default", ("distill",)) == CHECKOUT_CONFIGS / "distill" / "default.yaml"
    assert resolve_config("default", ("runtime",)) == CHECKOUT_CONFIGS / "runtime" / "default.yaml"
    # another stage's config by STAGE/NAME; the checkout path itself, even from another folder
    assert resolve_config("irgen/student_cpu", ("distill",)) == CHECKOUT_CONFIGS / "irgen" / "student_cpu.yaml"
    assert resolve_config("configs/distill/default.yaml", ()) == CHECKOUT_CONFIGS / "distill" / "default.yaml"
    # sections are searched in order; a name with its suffix works too
    assert resolve_config("tiny_cpu.yaml", ("irgen", "irgen_diffusion")) == \
        CHECKOUT_CONFIGS / "irgen_diffusion" / "tiny_cpu.yaml"
    assert set(packaged_configs("runtime")) >= {"default", "jetson_csi_boson"}


def test_an_existing_file_wins_over_a_packaged_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").write_text("steps: 7\n")
    assert resolve_config("default", ("distill",)) == Path("default")
    from distill.train import TrainConfig
    assert load_config(TrainConfig, "default", sections=("distill",)).steps == 7


def test_an_unknown_name_lists_the_packaged_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FusionError, match=r"config file not found: defualt \(packaged runtime configs: default, "
                                          r"jetson_csi_boson; name one"):
        resolve_config("defualt", ("runtime",))
    with pytest.raises(FusionError, match=r"^config file not found: /nowhere/default.yaml \("):
        resolve_config("/nowhere/default.yaml", ("runtime",))  # an absolute path is never reinterpreted
    with pytest.raises(FusionError, match="config file not found: nope/default"):
        resolve_config("nope/default", ("distill",))


@pytest.mark.parametrize("argv, packaged", [
    (["distill", "train", "--config", "nope"], "packaged distill configs: default, nano, nano2, nano2-affine, nano2-bands;"),
    (["run", "--config", "nope", "--ir", "a.mp4", "--vis", "b.mp4"], "packaged runtime configs: default, "),
    (["teacher", "train-irgen", "--generator", "tqd", "--config", "nope", "--out", "x"],
     "packaged irgen and irgen_diffusion configs: decomp,"),
])
def test_each_verb_that_takes_config_names_its_packaged_configs(argv, packaged, tmp_path, monkeypatch, capsys):
    from runtime.cli import main
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "config file not found: nope (" in err and packaged in err, err
    assert err.count("\n") == 1  # one line


# ------------------------------------------------------------------------------------------------------ the wheel
def _clean_env(venv: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1",
               PYTHONDONTWRITEBYTECODE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", MPLBACKEND="Agg")
    return env


def _run(argv, cwd: Path, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, argv))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv, its site-packages, the wheel, pip wheel's output, a folder outside the checkout, env)."""
    root = tmp_path_factory.mktemp("wheel")
    source = copy_source_tree(root / "src")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-w", str(root / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, f"pip wheel failed:\n{build.stdout}\n{build.stderr}"
    wheel = next((root / "dist").glob("irvis_fusion-*.whl"))

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    env = _clean_env(venv)
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--ignore-installed",
          "-q", wheel], root, env, timeout=300)
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True, env=env).stdout.strip())
    # The dependencies: --system-site-packages shows the base interpreter's; when the tests run in a virtual
    # environment (make test), its site-packages are added after the wheel's as plain paths (their .pth files, such
    # as an editable install of this checkout, are not processed, so the checkout stays invisible).
    if sys.prefix != sys.base_prefix:
        paths = [p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if Path(p).is_dir()]
        (purelib / "zz_test_dependencies.pth").write_text("\n".join(dict.fromkeys(paths)) + "\n")
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    return {"venv": venv, "purelib": purelib, "wheel": wheel, "build_log": build.stdout + build.stderr,
            "cwd": elsewhere, "env": env}


def test_the_wheel_carries_configs_models_and_clips_without_warnings(installed):
    warnings = [line.strip() for line in installed["build_log"].splitlines() if "warn" in line.lower()
                or "would be ignored" in line]
    assert not warnings, "pip wheel warned:\n" + "\n".join(warnings)
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    shipped = {f"runtime/configs/{p.relative_to(CHECKOUT_CONFIGS).as_posix()}" for p in CHECKOUT_CONFIGS.rglob("*.yaml")}
    assert shipped and shipped <= names, sorted(shipped - names)
    assert {"runtime/models/default/model.onnx", "runtime/models/default/config.json",
            "runtime/assets/samples/ir.mp4", "runtime/assets/samples/vis.mp4"} <= names
    assert not any(name.startswith(("configs/", "tests/")) for name in names)
    # the fresh environment imports the wheel's copy, and finds its configs inside the package
    probe = _run([installed["venv"] / "bin" / "python", "-c",
                  "import runtime, runtime.config as c; print(runtime.__file__); "
                  "print(c.resolve_config('default', ('distill',)))"], installed["cwd"], installed["env"])
    module, config = probe.stdout.split()
    assert Path(module).is_relative_to(installed["purelib"]) and not Path(module).is_relative_to(REPO), module
    assert Path(config) == installed["purelib"] / "runtime" / "configs" / "distill" / "default.yaml"


def test_fusion_help_from_the_wheel(installed):
    done = _run(["fusion", "--help"], installed["cwd"], installed["env"])
    for verb in ("teacher", "distill", "export", "run", "bench"):
        assert verb in done.stdout


def test_fusion_run_on_the_bundled_clips_from_the_wheel(installed):
    samples = installed["purelib"] / "runtime" / "assets" / "samples"
    cwd = installed["cwd"]
    _run(["fusion-run", "--config", "default", "--ir", samples / "ir.mp4", "--vis", samples / "vis.mp4",
          "--headless", "--max-frames", "4", "--backend", "onnxruntime", "--threads", "1", "--output", "fused.mp4",
          "--stats", "stats.json", "--quiet"], cwd, installed["env"])
    stats = json.loads((cwd / "stats.json").read_text())
    assert stats["frames"] == 4
    assert (cwd / "fused.mp4").stat().st_size > 0
    # the shipped model, from the wheel
    assert str(installed["purelib"] / "runtime" / "models" / "default") in json.dumps(stats["model"])


def test_fusion_distill_train_default_from_the_wheel(installed, roadscene, train_names):
    cwd, env = installed["cwd"], installed["env"]
    names = cwd / "four.txt"
    names.write_text("\n".join(train_names[:4]) + "\n")
    targets = cwd / "targets"
    _run(["fusion", "teacher", "fuse", "--teacher", "max", "--data", roadscene, "--names", names, "--out", targets,
          "--device", "cpu", "--threads", "1"], cwd, env)
    assert len(list(targets.glob("*.png"))) == 4
    run_dir = cwd / "run"
    _run(["fusion", "distill", "train", "--config", "default", "steps=2", f"data.root={roadscene}",
          f"data.names={names}", f"data.teacher_dir={targets}", "data.sets=[]", "data.online_teacher=''",
          f"run_dir={run_dir}", "device=cpu", "threads=1",
          "data.batch_size=2", "data.augment.crop=64", "val_every=2", "save_every=2", "log_every=1",
          "max_minutes=0"], cwd, env, timeout=180)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["step"] == 2
    assert (run_dir / "best" / "model.safetensors").is_file()
    # the run used the packaged default config under the overrides
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    packaged = yaml.safe_load((installed["purelib"] / "runtime" / "configs" / "distill" / "default.yaml").read_text())
    assert resolved["steps"] == 2 and resolved["model"] == {**resolved["model"], **packaged["model"]}
    assert resolved["optim"]["lr"] == packaged["optim"]["lr"]
