"""Where a detail-band student loses to its teacher, and what its network adds: measured on the training holdout.

    python -m benchmarks.student_diagnosis --weights default            # the table (about a minute)
    python -m benchmarks.student_diagnosis --weights nano2-bands --speed

For a student with `detail_bands` (distill/models/student.py: compose_bands), on the holdout pairs carved out of the
training lists (benchmarks/holdout/; never a validation or test list), beside the teacher's own output:
- `student`: the model as trained;
- `fixed rule`: the same graph without its network: the head's coefficients replaced by constants (every band gain
  `--band-gain`, the teacher's 1.1 by default; the affine part 0 with the coarse rule, else the plain average), i.e.
  what the fixed filters in the graph do alone;
- `teacher coarse`: the student's own fused bands on top of the teacher's output averaged down to the bands' coarsest
  level (a bound: how good the student would be if its coarse content were the teacher's).
With `--speed`, the graph with and without its network exported to ONNX (640x480, fp32) and timed in ONNX Runtime
with 2 threads, alternated run by run in one process: what the network costs.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HOLDOUT = (("roadscene", "roadscene_train_holdout.txt"), ("llvip_mini", "llvip_mini_train_holdout.txt"))
METRICS = ("SF", "AG", "VIF", "Qabf", "SSIM", "MI")


def fixed_rule(model, ir, vis, band_gain: float):
    """The model's graph with constant coefficients instead of its network (see the module docstring)."""
    import torch
    config = model.config
    levels = model.joint_pyramid(ir, vis, config.detail_bands)
    affine = [0.0, 0.0, 0.0] if config.coarse_levels else [0.5, 0.5, 0.0]
    values = torch.tensor(affine + [band_gain] * config.detail_bands).repeat_interleave(config.out_channels)
    top = levels[0].shape[-2] >> config.coefficient_level, levels[0].shape[-1] >> config.coefficient_level
    coefficients = values.view(1, -1, 1, 1).expand(1, -1, *top)
    return model.compose_bands(coefficients, levels)[..., :ir.shape[-2], :ir.shape[-1]].clamp(0, 1)


def teacher_coarse(model, ir, vis, teacher_out, band_gain: float):
    """The model's fused bands on the teacher's output averaged down to the coarsest band level."""
    import torch.nn.functional as F
    bands = model.config.detail_bands
    levels = model.joint_pyramid(ir, vis, bands)
    pad_h, pad_w = levels[0].shape[-2] - ir.shape[-2], levels[0].shape[-1] - ir.shape[-1]
    fused = F.avg_pool2d(F.pad(teacher_out, (0, pad_w, 0, pad_h), mode="replicate"), 2 ** bands)
    for level in range(bands - 1, -1, -1):
        fused = F.interpolate(fused, scale_factor=2.0, mode="bilinear", align_corners=False) \
            + band_gain * model.fused_band(levels[level], levels[level + 1])
    return fused[..., :ir.shape[-2], :ir.shape[-1]].clamp(0, 1)


def quality_table(model, teacher_name: str, band_gain: float, out: Path, data_root: Path) -> dict:
    import torch

    from distill import metrics
    from distill.eval_sets import set_pairs
    from runtime.color import split_luminance
    from runtime.imageio import dataset_folders, read_pair, write_image
    from teacher.registry import load_teacher_class
    teacher = load_teacher_class(teacher_name, ("fusion", "baseline"))()
    rows = {}
    for folder, names in HOLDOUT:
        root = data_root / folder
        _, pairs = set_pairs(str(root), str(REPO / "benchmarks" / "holdout" / names))
        ir_dir, vis_dir, _ = dataset_folders(str(root))
        for pair in pairs:
            ir, vis = read_pair(pair)
            ir_t = torch.from_numpy(ir)[None, None]
            vis_t = torch.from_numpy(np.ascontiguousarray(split_luminance(vis)[0]))[None, None]
            with torch.no_grad():
                target = teacher.fuse_batch(ir_t, vis_t).float()
                outputs = {"teacher": target, "student": model(ir_t, vis_t),
                           "fixed rule": fixed_rule(model, ir_t, vis_t, band_gain),
                           "teacher coarse": teacher_coarse(model, ir_t, vis_t, target, band_gain)}
            for label, image in outputs.items():
                write_image(out / folder / label.replace(" ", "_") / f"{pair.name}.png", image[0, 0].numpy())
        stems = [p.name for p in pairs]
        rows[folder] = {label: metrics.evaluate_folder(ir_dir, vis_dir, out / folder / label.replace(" ", "_"),
                                                       names=stems)["mean"] for label in outputs}
    return rows


def speed(model, runs: int = 60) -> dict:
    """p50 ms of the graph with and without its network in ONNX Runtime (2 threads), alternated."""
    import onnxruntime as ort
    import torch

    class WithoutNetwork(torch.nn.Module):
        def __init__(self, inner, gain):
            super().__init__()
            self.inner, self.gain = inner, gain

        def forward(self, ir, vis):
            return fixed_rule(self.inner, ir, vis, self.gain)

    example = (torch.rand(1, 1, 480, 640), torch.rand(1, 1, 480, 640))
    sessions = {}
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    with tempfile.TemporaryDirectory() as tmp:
        for label, module in (("student", model), ("fixed rule", WithoutNetwork(model, 1.1))):
            path = Path(tmp) / f"{label.replace(' ', '_')}.onnx"
            torch.onnx.export(module, example, str(path), input_names=["ir", "vis"], output_names=["fused"],
                              opset_version=17, dynamo=False)
            sessions[label] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"ir": example[0].numpy(), "vis": example[1].numpy()}
    times = {label: [] for label in sessions}
    for session in sessions.values():
        for _ in range(5):
            session.run(None, feed)
    for _ in range(runs):
        for label, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feed)
            times[label].append(time.perf_counter() - start)
    return {label: 1000.0 * float(np.median(values)) for label, values in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default="default", help="a detail-band student (folder or shipped name)")
    parser.add_argument("--teacher", default="pyramid-sharp", help="the teacher it was trained on")
    parser.add_argument("--band-gain", type=float, default=1.1, help="the constant band gain of the fixed rule")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="the folder holding the sets")
    parser.add_argument("--out", default="runs/student_diagnosis", help="where the fused images go")
    parser.add_argument("--speed", action="store_true", help="also time the graph with and without its network")
    args = parser.parse_args(argv)
    import torch

    from distill.models import load_student
    torch.set_num_threads(2)
    model = load_student(args.weights).eval()
    if not model.config.detail_bands:
        print(f"error: {args.weights} has no detail bands (model.options detail_bands); nothing to diagnose",
              file=sys.stderr)
        return 2
    rows = quality_table(model, args.teacher, args.band_gain, Path(args.out), Path(args.data))
    for folder, table in rows.items():
        print(f"\n{folder} holdout ({args.weights})")
        print("| | " + " | ".join(METRICS) + " |")
        print("| --- " * (len(METRICS) + 1) + "|")
        for label, values in table.items():
            print(f"| {label} | " + " | ".join(f"{values[m]:.4f}" for m in METRICS) + " |")
    if args.speed:
        timing = speed(model)
        print("\nONNX Runtime, 640x480, 2 threads, alternated: "
              + ", ".join(f"{label} p50 {ms:.2f} ms" for label, ms in timing.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
