"""`fusion export`: a student to ONNX, ONNX INT8 or a TensorRT engine, each checked against its reference.

    fusion export --weights default --format onnx --dynamic                     # runtime/models/default/model.onnx
    fusion export --weights runs/x/best --format onnx --imgsz 480x640 --out m.onnx
    fusion export --weights default --format onnx-int8 --calib-count 64        # QDQ INT8, best recipe, report
    fusion export --weights default --format engine --precision fp16 --dynamic # TensorRT (on the GPU machine)

The options are one typed config (export/config.py: ExportConfig), built once from the command line and handed to
the handlers. Every output gets its resolved config (`<output>.config.yaml`) and a JSON report (`<output>.json`) with
the settings and the check results beside it.
Heavy imports (torch, onnx, tensorrt) happen inside the handlers so `fusion --help` stays light.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from export.common import default_out, echo, load_student_weights, set_threads, write_report
from export.config import CALIB_METHODS, FORMATS, INT8_MODES, INT8_OPS, PRECISIONS, QDQ_TARGETS, ExportConfig

DEFAULTS = ExportConfig()
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(ExportConfig))


class ConfigDefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows each option's default as ExportConfig has it: the parser's own defaults are None, so an option
    left out of the command line leaves a --config file's value alone."""

    def _get_help_string(self, action):
        if action.dest in CONFIG_FIELDS and action.help:
            return f"{action.help} (default: {str(getattr(DEFAULTS, action.dest)).replace('%', '%%')})"
        return super()._get_help_string(action)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = ConfigDefaultsHelpFormatter
    parser.description = ("Export a student to ONNX (fp32, checked against PyTorch in ONNX Runtime), ONNX INT8 (static "
                          "QDQ, calibrated on the training split, reported on the test split) or a TensorRT engine "
                          "(fp16/int8, checked against fp32). Every output gets its resolved config "
                          "(<output>.config.yaml) and a report (<output>.json) beside it.")
    parser.add_argument("--weights",
                        help="student folder (config.json + model.safetensors) or 'default' (runtime/models/default)")
    parser.add_argument("--format", choices=FORMATS, help="what to build")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="engine precision (default fp16); onnx is fp32 and onnx-int8 is int8")
    parser.add_argument("--imgsz",
                        help="input size HxW (static shape, and the optimisation profile's opt shape with --dynamic)")
    parser.add_argument("--dynamic", action="store_true",
                        help="free batch, height and width (ONNX), an optimisation profile from --min-imgsz to "
                             "--max-imgsz (TensorRT)")
    parser.add_argument("--batch", type=int,
                        help="batch size of a static export (and the profile's max batch with --dynamic)")
    parser.add_argument("--opset", type=int, help="ONNX opset (17 or newer)")
    parser.add_argument("--out",
                        help="output file (default: beside the weights: model.onnx, model.int8.onnx, "
                             "model.<precision>.engine)")
    parser.add_argument("--no-simplify", dest="simplify", action="store_false", help="skip onnxslim")
    parser.add_argument("--config", default=None,
                        help="YAML file of export settings (the keys are the options' names with underscores, as in "
                             "the <output>.config.yaml an export writes); options given on the command line "
                             "override it")

    checks = parser.add_argument_group("checks on real pairs")
    checks.add_argument("--data",
                        help="dataset folder with ir/ and vi/ used by every check (default: $FUSION_DATA or "
                             "../shared/data/roadscene)")
    checks.add_argument("--check-names", help="pairs for the parity checks (default: DATA/train.txt)")
    checks.add_argument("--check-count", type=int, help="how many of them (spread over the list)")
    checks.add_argument("--tolerance", type=float, help="max |ONNX - PyTorch| allowed in fp32")

    int8 = parser.add_argument_group("INT8 (onnx-int8, and engine --precision int8)")
    int8.add_argument("--calib", help="calibration dataset folder (default: --data)")
    int8.add_argument("--calib-names",
                      help="calibration pairs (default: CALIB/train.txt; never calibrate on the test split)")
    int8.add_argument("--calib-count", type=int, help="how many calibration pairs (spread over the list)")
    int8.add_argument("--calib-method", choices=CALIB_METHODS,
                      help="activation range estimation; every candidate (the method, plain and with the first and last"
                           " layers in float; auto: minmax, percentile and entropy, each both ways) is built and scored"
                           " on up to 16 training pairs held out from calibration, and the one with the highest PSNR "
                           "against fp32 there is kept")
    int8.add_argument("--psnr-tie", type=float,
                      help="candidates within this many dB of the best selection PSNR are told apart by CPU latency "
                           "(the fastest is kept)")
    int8.add_argument("--max-metric-drop",
                      help="METRIC=AMOUNT,...: how far below fp32 each fusion metric (distill/metrics.py) may fall on "
                           "the selection pairs; recipes beyond it are not kept, and the export fails naming the metric"
                           " when none is within it ('none': no limit)")
    int8.add_argument("--percentile", type=float, help="the percentile method's range percentile")
    int8.add_argument("--test-names", help="pairs the INT8 report uses (default: DATA/test.txt)")
    int8.add_argument("--test-count", type=int, help="how many test pairs (default: all)")
    int8.add_argument("--psnr-goal", type=float,
                      help="INT8 vs fp32 median per-pair PSNR on the test pairs that the report calls met, dB "
                           "(reported, not enforced)")
    int8.add_argument("--qdq-target", choices=QDQ_TARGETS,
                      help="cpu: uint8 asymmetric activations (fast in ONNX Runtime); tensorrt: int8 symmetric "
                           "activations, what TensorRT's explicit quantisation expects")
    int8.add_argument("--int8-ops", choices=INT8_OPS,
                      help="conv: quantise Conv and MatMul only (TensorRT's recommended Q/DQ placement; faster and more"
                           " accurate here); all: every op type ONNX Runtime can quantise")
    int8.add_argument("--bench-runs", type=int, help="timed runs per model for the CPU speed ratio")

    trt = parser.add_argument_group("TensorRT (engine)")
    trt.add_argument("--workspace", type=int, help="builder workspace, MiB")
    trt.add_argument("--dla", type=int, metavar="CORE",
                     help="build for this DLA core (Xavier/Orin), with GPU fallback for unsupported layers")
    trt.add_argument("--min-imgsz", help="smallest HxW of the dynamic optimisation profile")
    trt.add_argument("--max-imgsz", help="largest HxW of the dynamic optimisation profile")
    trt.add_argument("--int8-mode", choices=INT8_MODES,
                     help="calibrate: implicit INT8 with an entropy calibrator over real pairs (writes a calibration "
                          "cache); qdq: build from a QDQ ONNX quantised for TensorRT")
    trt.add_argument("--onnx", help="build the engine from this ONNX instead of exporting one")
    trt.add_argument("--fp16-psnr", type=float, help="fp16 engine vs fp32 ONNX PSNR below which the build fails, dB")
    # None marks "not given": ExportConfig.from_args fills it from --config, else from ExportConfig's defaults.
    parser.set_defaults(func=run_export, **{name: None for name in CONFIG_FIELDS})


# --------------------------------------------------------------------------------------------------------- handlers
def run_export(args: argparse.Namespace) -> int:
    config = ExportConfig.from_args(args)  # FusionError for a combination no format accepts
    if config.format == "onnx":
        return export_onnx_command(config)
    if config.format == "onnx-int8":
        from export.quantize import quantize_command
        return quantize_command(config)
    from export.tensorrt_build import engine_command
    return engine_command(config)


def export_onnx_command(config: ExportConfig) -> int:
    set_threads()
    from export.onnx_export import export_onnx, summarize_parity, weights_metadata
    from export.pairs import load_inputs, shown_path
    model, folder = load_student_weights(config.weights)
    out = Path(config.out) if config.out else default_out(folder, "onnx", "fp32")
    channels = model.config.vis_channels
    imgsz = config.imgsz_hw
    pairs = load_inputs(config.data, config.check_names, config.check_count, None if config.dynamic else imgsz,
                        channels)
    echo(f"exporting {model.config.variant} from {folder} to {out} "
         f"({'dynamic N,H,W' if config.dynamic else 'static %dx%d' % imgsz}, opset {config.opset})")
    report = export_onnx(model, out, imgsz=imgsz, dynamic=config.dynamic, opset=config.opset,
                         metadata=weights_metadata(folder), check_pairs=pairs, simplify=config.simplify,
                         tolerance=config.tolerance, batch=config.batch)
    report["command"] = " ".join(["fusion", "export"] + sys.argv[2:]) if sys.argv[1:2] == ["export"] else None
    report["weights"] = shown_path(folder)
    write_report(out, report, config)
    echo(f"parity: {summarize_parity(report['parity'])}")
    print(out)
    return 0
