"""`make gpu-check`: every GPU test and a smoke of each stage on CUDA, one summary table, non-zero on any failure.

    make gpu-check                    # in .venv (built by `make setup`)
    make gpu-check PY=python3         # with that interpreter, skipping `make setup` (packages already installed)
    python -m benchmarks.gpu_check --out build/gpu-check [--data ../shared/data]

Stages, each timed, each a subprocess with this interpreter (one failing stage does not stop the others):
1. gpu tests: every test of tests/ marked `requires_gpu`, and nothing else;
2. em targets: `fusion teacher fuse --teacher em` for 20 training pairs on CUDA;
3. distill: 300 steps of `fusion distill train` on those targets, augmentation on the GPU (crops/s);
4. fp16 engine: `fusion export --format engine --precision fp16` when TensorRT is installed, else a line saying so;
5. fusion-run: the torch-gpu backend on the bundled sample clips, headless into an mp4 (fused fps, non-inference
   share of the frame time);
6. bench: `fusion bench --quick` with the GPU rows (student and SeAFusion p50 under fp16 + CUDA graph).
Exit codes: 0 all passed (skips allowed), 1 a stage failed, 3 no CUDA GPU is visible to torch (nothing was run).

On the lent GPU machine (see /work/.library/device/README.md), with the wheels and data prepared here by
`../shared/hooks/device-prepare`, the device tool's run takes carry [".whl", ".shared-data"] and the command:
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site NO_ALBUMENTATIONS_UPDATE=1 && mkdir -p ../shared && ln -sfn $PWD/.shared-data ../shared/data && make gpu-check PY=python3
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

REPO = Path(__file__).resolve().parents[1]
EXIT_NO_GPU = 3
GPU_SKIP_REASON = "needs a CUDA GPU"      # the reason of tests/conftest.py's requires_gpu


# ------------------------------------------------------------------------------------- pytest plugin (stage 1)
def pytest_collection_modifyitems(config, items):
    """With `-p benchmarks.gpu_check`: keep only the tests marked requires_gpu (a skipif with its reason)."""
    if not os.environ.get("FUSION_GPU_TESTS_ONLY"):
        return
    keep, drop = [], []
    for item in items:
        gpu = any(mark.name == "skipif" and GPU_SKIP_REASON in str(mark.kwargs.get("reason", ""))
                  for mark in item.iter_markers())
        (keep if gpu else drop).append(item)
    items[:] = keep
    config.hook.pytest_deselected(items=drop)


# ----------------------------------------------------------------------------------------------------- stages
@dataclass
class Stage:
    name: str
    status: str = "ok"          # ok | failed | skipped
    seconds: float = 0.0
    headline: str = ""


def run_command(args: List[str], log: Path, timeout: float, env_extra: Optional[dict] = None
                ) -> subprocess.CompletedProcess:
    """Run with this interpreter's environment, the output kept in `log` (and its tail shown on failure)."""
    env = {**os.environ, **(env_extra or {}), "NO_ALBUMENTATIONS_UPDATE": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    log.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    log.write_text(f"$ {' '.join(args)}\n{result.stdout}\n{result.stderr}", encoding="utf-8")
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-15:]
        print(f"--- {log.name} failed (exit {result.returncode}); last lines:\n" + "\n".join(tail), file=sys.stderr)
    return result


def fusion(*args: str) -> List[str]:
    return [sys.executable, "-m", "runtime.cli", *args]


def staged(name: str, work: Callable[[], str], stages: List[Stage]) -> None:
    """Run one stage: `work` returns its headline, raises SkipStage to skip, anything else fails it."""
    stage = Stage(name)
    started = time.perf_counter()
    print(f"gpu-check: {name} ...", file=sys.stderr, flush=True)
    try:
        stage.headline = work()
    except SkipStage as exc:
        stage.status, stage.headline = "skipped", str(exc)
    except Exception as exc:  # noqa: BLE001 - every failure is reported in the table, and the exit code says so
        stage.status, stage.headline = "failed", str(exc).strip().splitlines()[0][:160] if str(exc).strip() \
            else type(exc).__name__
    stage.seconds = time.perf_counter() - started
    stages.append(stage)


class SkipStage(Exception):
    pass


def check(result: subprocess.CompletedProcess, what: str) -> None:
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise RuntimeError(f"{what} exited {result.returncode}: {lines[-1][:140] if lines else ''}")


def gpu_tests(out: Path) -> str:
    result = run_command([sys.executable, "-m", "pytest", "-q", "-p", "benchmarks.gpu_check", "-rfEs", "tests"],
                         out / "gpu_tests.log", timeout=900, env_extra={"FUSION_GPU_TESTS_ONLY": "1"})
    summary = [line for line in result.stdout.strip().splitlines() if " in " in line and
               any(word in line for word in ("passed", "failed", "error", "skipped"))]
    headline = summary[-1].strip("= ") if summary else "no summary line"
    check(result, f"pytest ({headline})")
    return headline


def em_targets(out: Path, data: Path, count: int) -> str:
    from runtime.imageio import read_names
    names = read_names(data / "train.txt")[:count]
    names_file = out / "names.txt"
    names_file.write_text("\n".join(names) + "\n", encoding="utf-8")
    targets = out / "targets"
    started = time.perf_counter()
    check(run_command(fusion("teacher", "fuse", "--teacher", "em", "--data", str(data), "--names", str(names_file),
                             "--out", str(targets), "--device", "cuda", "--resume"), out / "em_targets.log", 600),
          "fusion teacher fuse")
    made = len(list(targets.glob("*.png")))
    if made < len(names):
        raise RuntimeError(f"{made} of {len(names)} targets written")
    return f"{made} pairs, {(time.perf_counter() - started) / made:.2f} s/pair (incl. start-up)"


def distill(out: Path, data: Path, steps: int, batch: int) -> str:
    run = out / "distill"
    check(run_command(fusion("distill", "train", "--config", str(REPO / "configs" / "distill" / "default.yaml"),
                             f"run_dir={run}", f"steps={steps}", f"data.root={data}",
                             f"data.names={out / 'names.txt'}", f"data.teacher_dir={out / 'targets'}",
                             "data.val_fraction=0.1", f"data.batch_size={batch}", "data.augment.crop=128",
                             "data.augment_device=gpu", "device=cuda", "resume=false", f"val_every={steps}",
                             f"save_every={steps}", "image_every=0", "log_every=50"),
                      out / "distill.log", 900), "fusion distill train")
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    minutes = float(summary["train_minutes"])
    crops = steps * batch / max(minutes * 60, 1e-9)
    score = summary.get("val", {}).get("score")
    return (f"{steps} steps x {batch} crops of 128 in {minutes * 60:.1f} s: {crops:.0f} crops/s (incl. validation),"
            f" val score {score:.3f}" if score is not None else f"{crops:.0f} crops/s")


def engine(out: Path) -> str:
    import importlib.util
    if importlib.util.find_spec("tensorrt") is None:
        raise SkipStage("TensorRT is not installed here: no fp16 engine built (pip install '.[trt]')")
    path = out / "model.fp16.engine"
    check(run_command(fusion("export", "--weights", str(out / "distill" / "best"), "--format", "engine",
                             "--precision", "fp16", "--out", str(path)), out / "engine.log", 600), "fusion export")
    return f"{path.name}, {path.stat().st_size / 2 ** 20:.1f} MiB"


def fusion_run(out: Path) -> str:
    clips = REPO / "runtime" / "assets" / "samples"
    if not (clips / "vis.mp4").is_file():
        check(run_command([sys.executable, "-m", "runtime.assets.make_samples"], out / "samples.log", 300),
              "make_samples")
    stats = out / "run_stats.json"
    check(run_command(fusion("run", "--ir", str(clips / "ir.mp4"), "--vis", str(clips / "vis.mp4"), "--backend",
                             "torch-gpu", "--imgsz", "480x640", "--headless", "--output", str(out / "fused.mp4"),
                             "--stats", str(stats), "-q"), out / "fusion_run.log", 600), "fusion run")
    report = json.loads(stats.read_text(encoding="utf-8"))
    share = report.get("non_inference_share")
    inference = report.get("stages_ms", {}).get("inference", {}).get("p50")
    return (f"{report['frames']} frames, {report['fps']:.1f} fused fps, inference p50 "
            f"{inference if inference is not None else '?'} ms, non-inference share "
            f"{share * 100:.0f}%" if share is not None else f"{report['fps']:.1f} fused fps")


def bench(out: Path, data: Path) -> str:
    rows_file = out / "bench_rows.json"
    check(run_command(fusion("bench", "--quick", "--data", str(data), "--backends", "torch", "torch-cuda",
                             "torch-cuda-fp16", "torch-cuda-graph", "--peers", "seafusion", "--out",
                             str(out / "bench"), "--json", str(rows_file)), out / "bench.log", 900), "fusion bench")
    rows = json.loads(rows_file.read_text(encoding="utf-8"))
    rows = rows if isinstance(rows, list) else rows.get("rows", [])

    def p50(role: str, backend: str) -> Optional[float]:
        found = [r["p50_ms"] for r in rows if r.get("role") == role and r.get("backend") == backend]
        return found[0] if found else None
    student, peer = p50("student", "torch-cuda-graph"), p50("peer", "torch-cuda-graph")
    if student is None:
        raise RuntimeError("no torch-cuda-graph row for the student in the bench results")
    ratio = f", {peer / student:.1f}x faster than SeAFusion ({peer:.2f} ms)" if peer else ""
    return f"student fp16 + CUDA graph p50 {student:.2f} ms at {rows[0].get('resolution', '?')}{ratio}"


def format_table(stages: List[Stage]) -> str:
    lines = ["| stage | result | seconds | headline |", "| --- | --- | ---: | --- |"]
    lines += [f"| {s.name} | {s.status} | {s.seconds:.1f} | {s.headline} |" for s in stages]
    return "\n".join(lines)


def gpu_present() -> tuple[bool, str]:
    try:
        import torch
    except ImportError as exc:
        return False, f"torch is not importable ({exc})"
    if not torch.cuda.is_available():
        return False, f"torch {torch.__version__} sees no CUDA GPU (CUDA build: {torch.version.cuda or 'none'})"
    return True, torch.cuda.get_device_name(0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="build/gpu-check", help="folder for logs and outputs")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"),
                        help="folder holding roadscene/ (default ../shared/data)")
    parser.add_argument("--pairs", type=int, default=20, help="training pairs for the em targets (default 20)")
    parser.add_argument("--steps", type=int, default=300, help="distillation steps (default 300)")
    parser.add_argument("--batch", type=int, default=64, help="distillation batch size (default 64)")
    parser.add_argument("--stages", nargs="+", default=None,
                        choices=("tests", "em", "distill", "engine", "run", "bench"), help="run only these")
    args = parser.parse_args(argv)
    present, device = gpu_present()
    if not present:
        print(f"gpu-check: no GPU to check: {device}; nothing was run (exit {EXIT_NO_GPU}). Run it on a machine "
              f"with an NVIDIA GPU.")
        return EXIT_NO_GPU
    data = Path(args.data) / "roadscene"
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    wanted = set(args.stages or ("tests", "em", "distill", "engine", "run", "bench"))
    print(f"gpu-check on {device}; logs in {out}", file=sys.stderr)
    stages: List[Stage] = []
    started = time.perf_counter()
    if "tests" in wanted:
        staged("gpu tests", lambda: gpu_tests(out), stages)
    if "em" in wanted:
        staged(f"em targets ({args.pairs} pairs)", lambda: em_targets(out, data, args.pairs), stages)
    if "distill" in wanted:
        staged(f"distill ({args.steps} steps)", lambda: distill(out, data, args.steps, args.batch), stages)
    if "engine" in wanted:
        staged("fp16 engine", lambda: engine(out), stages)
    if "run" in wanted:
        staged("fusion-run torch-gpu", lambda: fusion_run(out), stages)
    if "bench" in wanted:
        staged("bench --quick GPU rows", lambda: bench(out, data), stages)
    table = format_table(stages)
    failed = [s.name for s in stages if s.status == "failed"]
    print(f"\ngpu-check on {device}, {time.perf_counter() - started:.0f} s\n{table}")
    (out / "summary.md").write_text(f"gpu-check on {device}\n\n{table}\n", encoding="utf-8")
    if failed:
        print(f"gpu-check: FAILED: {', '.join(failed)} (logs in {out})")
        return 1
    print("gpu-check: all stages passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
