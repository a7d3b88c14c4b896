"""`fusion export`: a student to ONNX, ONNX INT8 or a TensorRT engine, each checked against its reference.

    fusion export --weights default --format onnx --dynamic                     # runtime/models/default/model.onnx
    fusion export --weights runs/x/best --format onnx --imgsz 480x640 --out m.onnx
    fusion export --weights default --format onnx-int8 --calib-count 64        # QDQ INT8, best recipe, report
    fusion export --weights default --format engine --precision fp16 --dynamic # TensorRT (on the GPU machine)

Every output gets a JSON beside it (`<output>.json`) with the resolved settings and the check results.
Heavy imports (torch, onnx, tensorrt) happen inside the handlers so `fusion --help` stays light.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export.common import default_out, echo, load_student_weights, set_threads, write_report
from runtime.errors import FusionError

FORMATS = ("onnx", "onnx-int8", "engine")
PRECISIONS = ("fp32", "fp16", "int8")
CALIB_METHODS = ("auto", "minmax", "entropy", "percentile")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.description = ("Export a student to ONNX (fp32, checked against PyTorch in ONNX Runtime), ONNX INT8 (static "
                          "QDQ, calibrated on the training split, reported on the test split) or a TensorRT engine "
                          "(fp16/int8, checked against fp32). Every output gets <output>.json beside it.")
    parser.add_argument("--weights", default="default",
                        help="student folder (config.json + model.safetensors) or 'default' (runtime/models/default)")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="what to build")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="engine precision (default fp16); onnx is fp32 and onnx-int8 is int8")
    parser.add_argument("--imgsz", default="480x640", help="input size HxW (static shape, and the optimisation "
                        "profile's opt shape with --dynamic)")
    parser.add_argument("--dynamic", action="store_true", help="free batch, height and width (ONNX), an "
                        "optimisation profile from --min-imgsz to --max-imgsz (TensorRT)")
    parser.add_argument("--batch", type=int, default=1, help="batch size of a static export (and the profile's max "
                        "batch with --dynamic)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (17 or newer)")
    parser.add_argument("--out", default=None, help="output file (default: beside the weights: model.onnx, "
                        "model.int8.onnx, model.<precision>.engine)")
    parser.add_argument("--no-simplify", dest="simplify", action="store_false", help="skip onnxslim")

    checks = parser.add_argument_group("checks on real pairs")
    checks.add_argument("--data", default=None, help="dataset folder with ir/ and vi/ used by every check "
                        "(default: $FUSION_DATA or ../shared/data/roadscene)")
    checks.add_argument("--check-names", default=None, help="pairs for the parity checks (default: DATA/train.txt)")
    checks.add_argument("--check-count", type=int, default=8, help="how many of them (spread over the list)")
    checks.add_argument("--tolerance", type=float, default=1e-4, help="max |ONNX - PyTorch| allowed in fp32")

    int8 = parser.add_argument_group("INT8 (onnx-int8, and engine --precision int8)")
    int8.add_argument("--calib", default=None, help="calibration dataset folder (default: --data)")
    int8.add_argument("--calib-names", default=None, help="calibration pairs (default: CALIB/train.txt; never "
                      "calibrate on the test split)")
    int8.add_argument("--calib-count", type=int, default=64, help="how many calibration pairs (spread over the list)")
    int8.add_argument("--calib-method", choices=CALIB_METHODS, default="auto",
                      help="activation range estimation; every candidate (the method, plain and with the first and "
                           "last layers in float; auto: minmax, percentile and entropy, each both ways) is built and "
                           "scored on up to 16 training pairs held out from calibration, and the one with the highest "
                           "PSNR against fp32 there is kept")
    int8.add_argument("--psnr-tie", type=float, default=0.3, help="candidates within this many dB of the best "
                      "selection PSNR are told apart by CPU latency (the fastest is kept)")
    int8.add_argument("--max-metric-drop", default="VIF=0.02,Qabf=0.02",
                      help="METRIC=AMOUNT,...: how far below fp32 each fusion metric (distill/metrics.py) may fall on "
                           "the selection pairs; recipes beyond it are not kept, and the export fails naming the "
                           "metric when none is within it ('none': no limit)")
    int8.add_argument("--percentile", type=float, default=99.999, help="the percentile method's range percentile")
    int8.add_argument("--test-names", default=None, help="pairs the INT8 report uses (default: DATA/test.txt)")
    int8.add_argument("--test-count", type=int, default=None, help="how many test pairs (default: all)")
    int8.add_argument("--psnr-goal", type=float, default=45.0, help="INT8 vs fp32 median per-pair PSNR on the test "
                      "pairs that the report calls met, dB (reported, not enforced)")
    int8.add_argument("--qdq-target", choices=("cpu", "tensorrt"), default="cpu",
                      help="cpu: uint8 asymmetric activations (fast in ONNX Runtime); tensorrt: int8 symmetric "
                           "activations, what TensorRT's explicit quantisation expects")
    int8.add_argument("--int8-ops", choices=("conv", "all"), default="conv",
                      help="conv: quantise Conv and MatMul only (TensorRT's recommended Q/DQ placement; faster and more "
                           "accurate here); all: every op type ONNX Runtime can quantise")
    int8.add_argument("--bench-runs", type=int, default=30, help="timed runs per model for the CPU speed ratio")

    trt = parser.add_argument_group("TensorRT (engine)")
    trt.add_argument("--workspace", type=int, default=1024, help="builder workspace, MiB")
    trt.add_argument("--dla", type=int, default=None, metavar="CORE", help="build for this DLA core (Xavier/Orin), "
                     "with GPU fallback for unsupported layers")
    trt.add_argument("--min-imgsz", default="256x256", help="smallest HxW of the dynamic optimisation profile")
    trt.add_argument("--max-imgsz", default="1088x1920", help="largest HxW of the dynamic optimisation profile")
    trt.add_argument("--int8-mode", choices=("calibrate", "qdq"), default="calibrate",
                     help="calibrate: implicit INT8 with an entropy calibrator over real pairs (writes a "
                          "calibration cache); qdq: build from a QDQ ONNX quantised for TensorRT")
    trt.add_argument("--onnx", default=None, help="build the engine from this ONNX instead of exporting one")
    trt.add_argument("--fp16-psnr", type=float, default=40.0, help="fp16 engine vs fp32 ONNX PSNR below which the "
                     "build fails, dB")
    parser.set_defaults(func=run_export)


# --------------------------------------------------------------------------------------------------------- handlers
def run_export(args: argparse.Namespace) -> int:
    from export.pairs import parse_imgsz
    precision = args.precision
    if args.format == "onnx" and precision not in (None, "fp32"):
        raise FusionError(f"--format onnx is fp32; for {precision} use --format onnx-int8 (int8) or --format engine")
    if args.format == "onnx-int8" and precision not in (None, "int8"):
        raise FusionError("--format onnx-int8 is int8; drop --precision or use --format engine")
    if args.batch < 1:
        raise FusionError(f"--batch must be at least 1, got {args.batch}")
    if args.check_count < 1:
        raise FusionError("--check-count must be at least 1: every export is checked on real pairs")
    args.imgsz_hw = parse_imgsz(args.imgsz)
    if args.format == "onnx":
        return export_onnx_command(args)
    if args.format == "onnx-int8":
        from export.quantize import quantize_command
        return quantize_command(args)
    from export.tensorrt_build import engine_command
    return engine_command(args)


def export_onnx_command(args: argparse.Namespace) -> int:
    set_threads()
    from export.onnx_export import export_onnx, summarize_parity, weights_metadata
    from export.pairs import load_inputs, shown_path
    model, folder = load_student_weights(args.weights)
    out = Path(args.out) if args.out else default_out(folder, "onnx", "fp32")
    channels = model.config.vis_channels
    pairs = load_inputs(args.data, args.check_names, args.check_count, None if args.dynamic else args.imgsz_hw,
                        channels)
    echo(f"exporting {model.config.variant} from {folder} to {out} "
         f"({'dynamic N,H,W' if args.dynamic else 'static %dx%d' % args.imgsz_hw}, opset {args.opset})")
    report = export_onnx(model, out, imgsz=args.imgsz_hw, dynamic=args.dynamic, opset=args.opset,
                         metadata=weights_metadata(folder), check_pairs=pairs, simplify=args.simplify,
                         tolerance=args.tolerance, batch=args.batch)
    report["command"] = " ".join(["fusion", "export"] + sys.argv[2:]) if sys.argv[1:2] == ["export"] else None
    report["weights"] = shown_path(folder)
    write_report(out, report)
    echo(f"parity: {summarize_parity(report['parity'])}")
    print(out)
    return 0
