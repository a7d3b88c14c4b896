"""Static INT8 quantisation of an fp32 ONNX student (QDQ format), calibrated on real pairs, reported honestly.

    from export.quantize import QuantRecipe, quantize_int8, compare_models
    quantize_int8("model.onnx", "model.int8.onnx", calib_inputs, QuantRecipe("minmax"))
    compare_models("model.onnx", "model.int8.onnx", test_inputs)      # PSNR of INT8 against fp32, per pair

The QDQ model serves two targets:
- cpu: uint8 asymmetric activations, int8 symmetric per-channel weights (ONNX Runtime's fast U8S8 kernels);
- tensorrt: int8 symmetric activations and weights, the form TensorRT's explicit quantisation accepts.

Calibration reads real pairs of the training split only (never test.txt). `--calib-method auto` builds every
candidate (min/max, percentile and entropy ranges, each plain and with the first and last layers kept in float: the
input convolutions see raw pixels, the head writes the output's 8-bit-visible coefficients; ranges are calibrated
once per method and cached) and keeps the one with the highest PSNR against fp32 on training pairs held out from
calibration, among those whose fusion metrics stay within `--max-metric-drop` of fp32 there; candidates within
`--psnr-tie` dB of the best are told apart by CPU latency. The test split stays a pure report.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from runtime.errors import FusionError, require

METHODS = ("minmax", "percentile", "entropy")


@dataclass(frozen=True)
class QuantRecipe:
    """How to quantise: activation range estimation, per-channel weights, float edges, target runtime."""

    method: str = "minmax"        # minmax | percentile | entropy
    per_channel: bool = True
    float_edges: bool = False     # keep the first convolution of each input and the output head in float
    target: str = "cpu"           # cpu (U8S8) | tensorrt (S8S8 symmetric)
    percentile: float = 99.999
    op_types: tuple = ("Conv", "MatMul")  # op types to quantise; empty: every type ONNX Runtime can quantise

    @property
    def label(self) -> str:
        parts = [self.method, "per-channel" if self.per_channel else "per-tensor",
                 "+".join(self.op_types) if self.op_types else "all ops"]
        if self.float_edges:
            parts.append("float first/last layers")
        return ", ".join(parts) + f" ({self.target})"


OP_SETS = {"conv": ("Conv", "MatMul"), "all": ()}


# Candidates whose selection PSNR is within this many dB of the best are told apart by CPU latency: below it the
# difference is within what another choice of calibration pairs moves.
PSNR_TIE_DB = 0.3
# What `--max-metric-drop` allows by default: the two metrics that see INT8's texture loss first.
DEFAULT_METRIC_DROP = "VIF=0.02,Qabf=0.02"


def recipes_to_try(method: str, target: str = "cpu", ops: str = "conv",
                   percentile: float = 99.999) -> list[QuantRecipe]:
    """The candidate recipes, every one of which is built and scored: for a named method, its plain form and its form
    with the first and last layers kept in float; for auto, those two for each of minmax, percentile and entropy."""
    op_types = OP_SETS[ops]
    methods = METHODS if method == "auto" else (method,)
    return [QuantRecipe(m, True, edges, target, percentile=percentile, op_types=op_types)
            for m in methods for edges in (False, True)]


def parse_metric_limits(text: str | None) -> dict[str, float]:
    """'VIF=0.02,Qabf=0.02' -> {'VIF': 0.02, 'Qabf': 0.02}: how far below fp32 each metric may fall ('none': no
    limit). Metric names are those of distill/metrics.py; for MSE, where lower is better, the drop is a rise."""
    from distill.metrics import METRIC_NAMES
    if text is None or text.strip().lower() in ("", "none"):
        return {}
    limits: dict[str, float] = {}
    by_lower = {m.lower(): m for m in METRIC_NAMES}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        metric = by_lower.get(name.strip().lower())
        try:
            amount = float(value) if sep else float("nan")
        except ValueError:
            amount = float("nan")
        if metric is None or not amount >= 0.0:
            raise FusionError(f"--max-metric-drop '{text}': expected METRIC=AMOUNT[,METRIC=AMOUNT] with AMOUNT >= 0 "
                              f"and METRIC one of {', '.join(METRIC_NAMES)} (or 'none')")
        limits[metric] = amount
    return limits


def metric_drop(metric: str, delta: float) -> float:
    """How much worse INT8 is than fp32 on `metric`, given delta = INT8 - fp32 (positive: worse)."""
    from distill.metrics import LOWER_IS_BETTER
    return delta if metric in LOWER_IS_BETTER else -delta


def limit_violations(delta: dict[str, float], limits: dict[str, float]) -> list[str]:
    """The metrics of `limits` whose drop exceeds the limit (a metric that could not be computed counts as one)."""
    return [m for m, limit in limits.items() if not metric_drop(m, delta.get(m, float("nan"))) <= limit]


def choose_recipe(candidates: list[dict], limits: dict[str, float] | None = None,
                  tie_db: float = PSNR_TIE_DB, latency_ms: dict[int, float] | None = None) -> dict:
    """The candidate to keep: the highest `selection_psnr_db` among those within the metric `limits`; candidates
    within `tie_db` of it go to the fastest (`latency_ms`, by candidate index; missing: not timed, never preferred).

    Each candidate is a dict with `index`, `label`, `selection_psnr_db` and `metric_delta` (INT8 - fp32). Raises
    FusionError naming the metric when no candidate stays within the limits."""
    limits = limits or {}
    allowed = [c for c in candidates if not limit_violations(c["metric_delta"], limits)]
    if not allowed:
        raise FusionError(_no_recipe_message(candidates, limits))
    best_psnr = max(c["selection_psnr_db"] for c in allowed)
    near = near_ties(allowed, tie_db)
    if len(near) == 1 or not latency_ms:
        return next(c for c in near if c["selection_psnr_db"] == best_psnr)
    return min(near, key=lambda c: (latency_ms.get(c["index"], float("inf")), -c["selection_psnr_db"]))


def near_ties(candidates: list[dict], tie_db: float = PSNR_TIE_DB) -> list[dict]:
    """The candidates whose selection PSNR is within `tie_db` of the best one's."""
    best_psnr = max(c["selection_psnr_db"] for c in candidates)
    return [c for c in candidates if c["selection_psnr_db"] >= best_psnr - tie_db]


def _no_recipe_message(candidates: list[dict], limits: dict[str, float]) -> str:
    """One line: which metric no recipe keeps within its limit, the closest any came, and what to do."""
    # Name the metrics that even their best candidate breaks; if each can be met alone but not together, the ones the
    # best-PSNR candidate breaks.
    closest = {m: min(candidates, key=lambda c: metric_drop(m, c["metric_delta"].get(m, float("inf"))))
               for m in limits}
    blocking = [m for m in limits if limit_violations(closest[m]["metric_delta"], {m: limits[m]})]
    if not blocking:
        top = max(candidates, key=lambda c: c["selection_psnr_db"])
        blocking = limit_violations(top["metric_delta"], limits)
    parts = []
    for m in blocking:
        c = closest[m]
        parts.append(f"{m} (at most {limits[m]:g} below fp32; the closest of the {len(candidates)} recipes tried, "
                     f"{c['label']}, is {metric_drop(m, c['metric_delta'].get(m, float('nan'))):.4f} below)")
    return (f"no INT8 recipe keeps {' and '.join(parts)} on the selection pairs; nothing was written: calibrate on "
            f"more pairs (--calib-count), try --calib-method auto, or allow more with --max-metric-drop")


# ------------------------------------------------------------------------------------------------------ calibration
def calibration_reader(inputs):
    """An onnxruntime CalibrationDataReader over real pairs; supports set_range for strided (memory-bounded)
    calibration."""
    from onnxruntime.quantization import CalibrationDataReader

    class PairReader(CalibrationDataReader):
        def __init__(self, items):
            self.items = list(items)
            self.start, self.end = 0, len(self.items)
            self.position = 0

        def __len__(self) -> int:
            return len(self.items)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.start, self.end = start_index, min(end_index, len(self.items))
            self.position = self.start

        def rewind(self) -> None:
            self.position = self.start

        def get_next(self):
            if self.position >= self.end:
                return None
            item = self.items[self.position]
            self.position += 1
            return item.feeds()

    return PairReader(inputs)


def _stride_for(count: int, limit: int = 8) -> int:
    """Largest divisor of `count` not above `limit`: ranges are merged every `stride` pairs, which bounds the memory
    the calibrator holds (ONNX Runtime requires the stride to divide the count)."""
    for stride in range(min(limit, count), 0, -1):
        if count % stride == 0:
            return stride
    return 1


def sensitive_nodes(model) -> list[str]:
    """Names of the nodes kept in float by `float_edges`: everything from each graph input up to and including its
    first Conv, and the last Conv with everything downstream of it (the head and the per-pixel affine output).

    Depthwise Convs reached straight from the inputs are fixed filters on the sources (the detail bands' energy
    smoothing, distill/models/student.py: fused_band), whose operands span many decades (squared band-pass
    values): the walk from the inputs goes through them (they stay float) and they do not count as the head."""
    nodes = list(model.graph.node)
    weights = {init.name: tuple(init.dims) for init in model.graph.initializer}
    consumers: dict[str, list] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def depthwise(node) -> bool:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        shape = weights.get(node.input[1]) if len(node.input) > 1 else None
        return group > 1 and shape is not None and len(shape) == 4 and shape[0] == group and shape[1] == 1

    chosen: list[str] = []
    fixed: set[str] = set()
    for graph_input in model.graph.input:
        frontier, seen = [graph_input.name], set()
        while frontier:
            tensor = frontier.pop()
            for node in consumers.get(tensor, []):
                if node.name in seen:
                    continue
                seen.add(node.name)
                chosen.append(node.name)
                if node.op_type != "Conv":
                    frontier.extend(node.output)
                elif depthwise(node):
                    fixed.add(node.name)
                    frontier.extend(node.output)

    convs = [n for n in nodes if n.op_type == "Conv" and n.name not in fixed]
    if convs:
        last = convs[-1]
        chosen.append(last.name)
        frontier = list(last.output)
        seen = {last.name}
        while frontier:
            tensor = frontier.pop()
            for node in consumers.get(tensor, []):
                if node.name not in seen:
                    seen.add(node.name)
                    chosen.append(node.name)
                    frontier.extend(node.output)
    return list(dict.fromkeys(n for n in chosen if n))


def _name_nodes(model) -> None:
    """Give unnamed nodes names (exclusion lists refer to nodes by name)."""
    used = {n.name for n in model.graph.node if n.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


@contextlib.contextmanager
def working_directory(path: str | os.PathLike):
    """chdir to `path` for the block (contextlib.chdir from Python 3.11 on)."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield Path(path)
    finally:
        os.chdir(previous)


def preprocess(fp32_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """ONNX Runtime's quantisation pre-processing (shape inference, graph optimisation), with named nodes."""
    onnx = require("onnx", "INT8 quantisation")
    from onnxruntime.quantization.shape_inference import quant_pre_process
    out_path, fp32_path = Path(out_path).resolve(), Path(fp32_path).resolve()
    # Where symbolic shape inference gives up (it does on dynamic-size students) ONNX Runtime saves its partial model
    # as sym_shape_infer_temp.onnx plus a <uuid>.data file into the working directory: run it in a scratch one.
    with tempfile.TemporaryDirectory(prefix="fusion-quant-") as scratch, working_directory(scratch):
        try:
            quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=False)
        except Exception:  # symbolic shape inference gives up on some dynamic graphs; ONNX shape inference suffices
            quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=True)
    model = onnx.load(str(out_path))
    _name_nodes(model)
    onnx.save(model, str(out_path))
    return out_path


def quantize_int8(fp32_path: str | os.PathLike, out_path: str | os.PathLike, calib_inputs,
                  recipe: QuantRecipe = QuantRecipe(), cache_dir: str | os.PathLike | None = None,
                  preprocessed: str | os.PathLike | None = None) -> dict:
    """Write a QDQ INT8 model of `fp32_path` to `out_path` (atomically), calibrated on `calib_inputs`.

    cache_dir: activation ranges are cached there per method, so recipes that differ only in which nodes stay in
    float do not calibrate again. Returns what was done (recipe, excluded nodes, calibration pairs, seconds).
    """
    onnx = require("onnx", "INT8 quantisation")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from export.onnx_export import make_readable
    from runtime.imageio import atomic_path
    if recipe.method not in METHODS:
        raise FusionError(f"unknown calibration method '{recipe.method}'; choose one of {', '.join(METHODS)}")
    calib_inputs = list(calib_inputs)
    if not calib_inputs:
        raise FusionError("INT8 calibration needs at least one real pair; raise --calib-count")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fusion-int8-") as work:
        source = Path(preprocessed) if preprocessed else preprocess(fp32_path, Path(work) / "pre.onnx")
        model = onnx.load(str(source))
        exclude = sensitive_nodes(model) if recipe.float_edges else []
        method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                  "entropy": CalibrationMethod.Entropy}[recipe.method]
        symmetric = recipe.target == "tensorrt"
        extra = {
            "WeightSymmetric": True,
            "ActivationSymmetric": symmetric,
            "CalibStridedMinMax": _stride_for(len(calib_inputs)),
            "CalibPercentile": recipe.percentile,
            # TensorRT fuses Conv+activation itself and wants the Q/DQ pairs where ONNX put them.
            "QDQKeepRemovableActivations": symmetric,
        }
        cache = None
        if cache_dir is not None:
            ops = "-".join(recipe.op_types) or "all"
            method_key = f"percentile{recipe.percentile:g}" if recipe.method == "percentile" else recipe.method
            cache = Path(cache_dir) / f"ranges-{method_key}-{'sym' if symmetric else 'asym'}-{ops}.json"
        reader = calibration_reader(calib_inputs)
        # ONNX Runtime's calibrators print progress to stdout, which belongs to the command's result (the path).
        with atomic_path(out_path) as tmp, contextlib.redirect_stdout(sys.stderr):
            quantize_static(
                str(source), str(tmp), calibration_data_reader=reader, quant_format=QuantFormat.QDQ,
                per_channel=recipe.per_channel, op_types_to_quantize=list(recipe.op_types) or None,
                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                weight_type=QuantType.QInt8, nodes_to_exclude=exclude, calibrate_method=method,
                extra_options=extra, calibration_cache_path=str(cache) if cache else None)
            quantized = onnx.load(str(tmp))
            fp32_meta = {p.key: p.value for p in onnx.load(str(fp32_path), load_external_data=False).metadata_props}
            fp32_meta.update({"precision": "int8", "quantization": recipe.label,
                              "calibration_pairs": str(len(calib_inputs))})
            del quantized.metadata_props[:]
            for key, value in fp32_meta.items():
                quantized.metadata_props.add(key=key, value=value)
            onnx.save(quantized, str(tmp))
            make_readable(tmp)
    return {"recipe": asdict(recipe), "label": recipe.label, "excluded_nodes": exclude,
            "calibration_pairs": [i.name for i in calib_inputs], "seconds": round(time.perf_counter() - started, 2)}


# -------------------------------------------------------------------------------------------------------- reporting
def run_model(path: str | os.PathLike, inputs, threads: int = 2) -> list[np.ndarray]:
    from export.onnx_export import OUTPUT_NAME
    from runtime.timing import ort_session
    session = ort_session(path, threads=threads)
    return [session.run([OUTPUT_NAME], item.feeds())[0] for item in inputs]


def compare_models(reference_path, candidate_path, inputs, reference_outputs=None) -> dict:
    """The candidate's output against the reference's (PSNR with peak 1, max abs) on real inputs."""
    from export.onnx_export import compare_outputs
    inputs = list(inputs)
    reference = reference_outputs if reference_outputs is not None else run_model(reference_path, inputs)
    candidate = run_model(candidate_path, inputs)
    result = compare_outputs(reference, candidate, [i.name for i in inputs])
    pair_psnrs = [p["psnr_db"] for p in result["per_pair"].values()]
    result["mean_pair_psnr_db"] = float(np.mean(pair_psnrs))
    result["median_pair_psnr_db"] = float(np.median(pair_psnrs))
    result["outputs"] = candidate
    return result


def to_metric_gray(img: np.ndarray) -> np.ndarray:
    """(H, W) float in [0, 1] -> the 8-bit gray levels (float32 0..255, integer-valued) that the evaluation of saved
    images sees (`distill.metrics.read_gray_for_metrics`). MI and EN histogram exact pixel values, so float inputs
    (a resized IR frame, an unrounded VIS luminance) would give every pixel its own bin and inflate MI."""
    return np.round(np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0) * np.float32(255.0))


def mean_fusion_metrics(inputs, outputs) -> dict[str, float]:
    """Mean fusion metrics (distill/metrics.py) of `outputs` for their source pairs `inputs`, on 8-bit images
    (`to_metric_gray`), as `fusion eval` scores saved files. distill.metrics (numpy and OpenCV) is imported here, not
    at module import, so importing export stays light."""
    from distill.metrics import METRIC_NAMES, fusion_metrics
    sums: dict[str, float] = {}
    for item, out in zip(inputs, outputs):
        ir = to_metric_gray(item.ir[0, 0])
        vis = to_metric_gray(item.vis[0, 0] if item.vis.shape[1] == 1 else _luma(item.vis[0]))
        fused = to_metric_gray(out[0, 0] if out.shape[1] == 1 else _luma(out[0]))
        for key, value in fusion_metrics(ir, vis, fused).items():
            sums[key] = sums.get(key, 0.0) + float(value)
    count = max(len(inputs), 1)
    names = [m for m in METRIC_NAMES if m in sums] or sorted(sums)
    return {m: sums[m] / count for m in names}


def metric_deltas(inputs, reference_outputs, candidate_outputs, reference_metrics=None) -> dict:
    """Mean fusion metrics of the reference and candidate outputs and their differences (candidate - reference).

    Sources and outputs are quantised to 8 bits first (`to_metric_gray`), as they are when fused images are saved
    and evaluated with `fusion eval`, so these numbers compare with the published tables and with `fusion eval`.
    reference_metrics: the reference's means when already known (they are the same for every candidate)."""
    try:
        reference = reference_metrics or mean_fusion_metrics(inputs, reference_outputs)
        candidate = mean_fusion_metrics(inputs, candidate_outputs)
    except ImportError as exc:
        return {"skipped": f"distill.metrics is not available ({exc})"}
    return {"fp32": reference, "int8": candidate, "delta": {m: candidate[m] - reference[m] for m in reference},
            "pairs": len(inputs)}


def format_deltas(delta: dict[str, float], only=None) -> str:
    return ", ".join(f"{k} {v:+.4f}" for k, v in delta.items() if only is None or k in only)


def _luma(chw: np.ndarray) -> np.ndarray:
    from runtime.color import luminance
    return luminance(chw.transpose(1, 2, 0))


def cpu_latency(paths: dict, feeds: dict, runs: int = 30, threads: int = 2, warmup: int = 3) -> dict[str, float]:
    """Median latency (ms) of each model in ONNX Runtime on the CPU, timed interleaved in one run (runtime.timing) so
    that the shared machine's noise hits all of them alike. paths: {key: onnx path} -> {key: median ms}."""
    from runtime.timing import ort_runner, ort_session, time_interleaved
    runners = {key: ort_runner(ort_session(path, threads=threads), feeds) for key, path in paths.items()}
    return {key: stats.p50_ms for key, stats in time_interleaved(runners, runs=runs, warmup=warmup).items()}


def cpu_speed(reference_path, candidate_path, feeds: dict, runs: int = 30, threads: int = 2,
              warmup: int = 3) -> dict:
    """Median latency of both models (`cpu_latency`) and their ratio (>1: the candidate is faster)."""
    medians = cpu_latency({"fp32": reference_path, "int8": candidate_path}, feeds, runs, threads, warmup)
    shape = list(next(iter(feeds.values())).shape)
    return {"threads": threads, "runs": runs, "input_shape": shape, "fp32_median_ms": medians["fp32"],
            "int8_median_ms": medians["int8"], "speedup_fp32_over_int8": medians["fp32"] / medians["int8"]}


# ---------------------------------------------------------------------------------------------------- recipe choice
def score_candidates(fp32_path, recipes, calib_inputs, select_inputs, work: Path, preprocessed=None,
                     log=lambda message: None) -> tuple[list[dict], dict]:
    """Build every recipe (calibration ranges cached per method in `work`) and score each on the selection pairs:
    PSNR against fp32 and the fusion-metric deltas. Returns (candidates, the fp32 outputs' mean metrics); each
    candidate holds `path` (its model in `work`) besides what `choose_recipe` and the report read."""
    pre = preprocessed or preprocess(fp32_path, Path(work) / "pre.onnx")
    reference = run_model(fp32_path, select_inputs)
    reference_metrics = mean_fusion_metrics(select_inputs, reference)
    candidates = []
    for index, recipe in enumerate(recipes):
        path = Path(work) / f"candidate-{index}.onnx"
        log(f"quantising: {recipe.label}")
        done = quantize_int8(fp32_path, path, calib_inputs, recipe, cache_dir=work, preprocessed=pre)
        scored = compare_models(fp32_path, path, select_inputs, reference)
        deltas = metric_deltas(select_inputs, reference, scored.pop("outputs"), reference_metrics)
        candidates.append({"index": index, "label": recipe.label, "recipe": asdict(recipe), "path": path,
                           "selection_psnr_db": scored["psnr_db"], "selection_min_psnr_db": scored["min_psnr_db"],
                           "selection_median_pair_psnr_db": scored["median_pair_psnr_db"],
                           "metric_delta": deltas["delta"], "excluded_nodes": done["excluded_nodes"],
                           "calibration_pairs": done["calibration_pairs"], "seconds": done["seconds"]})
        log(f"  selection pairs: PSNR {scored['psnr_db']:.2f} dB, "
            f"{format_deltas(deltas['delta'], ('VIF', 'Qabf', 'MI', 'SSIM'))}")
    return candidates, reference_metrics


# --------------------------------------------------------------------------------------------------------------- CLI
@dataclass
class Int8Pairs:
    """The pairs one INT8 export reads: calibration and selection from the training split, the report's test pairs,
    and one test pair (batched like the export) for the CPU timings."""

    data: Path
    calib_data: Path
    calib_names: object                  # a split file or a list of stems, as given
    test_names: object
    held_out: list
    calib: list
    select: list
    test: list
    speed_feeds: dict


def int8_limits(config) -> dict[str, float]:
    """The metric limits of --max-metric-drop, after checking the INT8 settings (FusionError naming the option)."""
    limits = parse_metric_limits(config.max_metric_drop)
    if config.psnr_tie < 0:
        raise FusionError(f"--psnr-tie must be 0 or more dB, got {config.psnr_tie:g}")
    if not 0.0 < config.percentile <= 100.0:
        raise FusionError(f"--percentile must be in (0, 100], got {config.percentile:g}")
    return limits


def int8_pairs(config, channels: int) -> Int8Pairs:
    """Read the calibration, selection, test and timing pairs; calibration and test lists must not overlap."""
    from export.common import echo
    from export.pairs import check_disjoint, default_data_dir, load_inputs, spread, split_file
    from runtime.imageio import read_names
    data = Path(config.data) if config.data else default_data_dir()
    calib_data = Path(config.calib) if config.calib else data
    calib_names = config.calib_names or split_file(calib_data, "train")
    test_names = config.test_names or split_file(data, "test")
    check_disjoint(calib_names, test_names)
    imgsz = config.imgsz_hw
    shape = None if config.dynamic else imgsz
    calib_list = read_names(calib_names) if isinstance(calib_names, (str, Path)) else list(calib_names)
    # Calibrate on `calib-count` training pairs; choose the recipe on up to 16 other training pairs.
    calib_pick = spread(calib_list, config.calib_count)
    held_out = spread([n for n in calib_list if n not in set(calib_pick)], 16)
    if not held_out:  # every listed pair calibrates: choose on (some of) them, still never on the test split
        held_out = spread(calib_pick, 16)
    echo(f"reading {len(calib_pick)} calibration pairs from {calib_data} at {imgsz[0]}x{imgsz[1]}")
    calib_inputs = load_inputs(calib_data, calib_pick, None, imgsz, channels)
    select_inputs = load_inputs(calib_data, held_out, None, shape, channels)
    test_inputs = load_inputs(data, test_names, config.test_count, shape, channels)
    speed_feeds = load_inputs(data, test_names, 1, imgsz, channels)[0].feeds()
    if config.batch != 1 and not config.dynamic:
        speed_feeds = {k: np.repeat(v, config.batch, axis=0) for k, v in speed_feeds.items()}
    return Int8Pairs(data, calib_data, calib_names, test_names, held_out, calib_inputs, select_inputs, test_inputs,
                     speed_feeds)


def export_fp32_reference(config, model, folder: Path, data: Path, path: Path) -> dict:
    """The fp32 ONNX every candidate is quantised from and compared with, parity-checked against PyTorch."""
    from export.common import echo
    from export.onnx_export import export_onnx, summarize_parity, weights_metadata
    from export.pairs import load_inputs
    parity_pairs = load_inputs(data, config.check_names, config.check_count,
                               None if config.dynamic else config.imgsz_hw, model.config.vis_channels)
    echo(f"exporting the fp32 reference of {model.config.variant} from {folder}")
    report = export_onnx(model, path, imgsz=config.imgsz_hw, dynamic=config.dynamic, opset=config.opset,
                         metadata=weights_metadata(folder), check_pairs=parity_pairs, simplify=config.simplify,
                         tolerance=config.tolerance, batch=config.batch)
    echo(f"fp32 parity: {summarize_parity(report['parity'])}")
    return report


def pick_recipe(config, candidates: list[dict], limits: dict[str, float], select_fp32: dict,
                pairs: Int8Pairs) -> tuple[dict, str, dict]:
    """(the chosen candidate, why it was chosen, the selection report): the best selection PSNR within the metric
    limits, near ties timed on the CPU. Marks every candidate with its limits and timing for the report."""
    from export.common import echo
    allowed = [c for c in candidates if not limit_violations(c["metric_delta"], limits)]
    latency: dict[int, float] = {}
    ties = near_ties(allowed, config.psnr_tie) if allowed else []
    if len(ties) > 1:
        echo(f"{len(ties)} recipes within {config.psnr_tie:g} dB of the best: timing them on the CPU")
        latency = cpu_latency({c["index"]: c["path"] for c in ties}, pairs.speed_feeds, runs=config.bench_runs)
    echo(f"recipes on {len(pairs.select)} selection pairs (training pairs held out from calibration):")
    for c in candidates:
        over = limit_violations(c["metric_delta"], limits)
        c["within_metric_limits"], c["over_limit"] = not over, over
        c["cpu_median_ms"] = latency.get(c["index"])
        timed = f", CPU {latency[c['index']]:.2f} ms" if c["index"] in latency else ""
        echo(f"  {c['selection_psnr_db']:6.2f} dB  {c['label']}{timed}"
             + (f"  (over the limit: {', '.join(over)})" if over else ""))
    chosen = choose_recipe(candidates, limits, config.psnr_tie, latency)  # FusionError: no recipe within limits
    best = max(c["selection_psnr_db"] for c in allowed)
    reason = ("the highest selection PSNR" if chosen["selection_psnr_db"] == best and len(ties) < 2 else
              f"the fastest of the {len(ties)} within {config.psnr_tie:g} dB of the best selection PSNR")
    if any(c["selection_psnr_db"] > chosen["selection_psnr_db"] for c in candidates if c not in allowed):
        reason += " among the recipes within --max-metric-drop"
    select_report = {"pairs": len(pairs.select), "psnr_db": chosen["selection_psnr_db"],
                     "min_psnr_db": chosen["selection_min_psnr_db"],
                     "median_pair_psnr_db": chosen["selection_median_pair_psnr_db"],
                     "metrics": {"fp32": select_fp32,
                                 "int8": {m: select_fp32[m] + d for m, d in chosen["metric_delta"].items()},
                                 "delta": chosen["metric_delta"]}}
    return chosen, reason, select_report


def int8_report(config, out: Path, folder: Path, pairs: Int8Pairs, limits: dict, fp32_report: dict,
                candidates: list[dict], chosen: dict, reason: str, select_report: dict, test: dict, deltas: dict,
                speed: dict) -> dict:
    """The `<output>.json` of an INT8 export: settings, every recipe tried, the choice, the test-split report."""
    from export.pairs import shown_path
    goal_met = bool(test["median_pair_psnr_db"] >= config.psnr_goal)
    return {
        "path": shown_path(out), "format": "onnx-int8", "weights": shown_path(folder),
        "settings": {**fp32_report["settings"], "calib": shown_path(pairs.calib_data),
                     "calib_names": _shown(pairs.calib_names), "calib_count": len(pairs.calib),
                     "calib_imgsz": list(config.imgsz_hw), "calib_method": config.calib_method,
                     "percentile": config.percentile, "qdq_target": config.qdq_target, "int8_ops": config.int8_ops,
                     "psnr_tie_db": config.psnr_tie, "max_metric_drop": limits, "psnr_goal_db": config.psnr_goal,
                     "test_names": _shown(pairs.test_names)},
        "metadata": fp32_report["metadata"],
        "fp32_parity": fp32_report["parity"],
        "recipes_tried": [{k: v for k, v in c.items() if k not in ("path", "calibration_pairs", "excluded_nodes")}
                          | {"excluded_nodes": len(c["excluded_nodes"])} for c in candidates],
        "chosen": chosen["label"], "chosen_because": reason, "excluded_nodes": chosen["excluded_nodes"],
        "calibration_pairs": chosen["calibration_pairs"], "selection_pairs": pairs.held_out,
        "selection": select_report,
        "test": {"pairs": test["pairs"], "psnr_db": test["psnr_db"], "mean_pair_psnr_db": test["mean_pair_psnr_db"],
                 "median_pair_psnr_db": test["median_pair_psnr_db"], "min_psnr_db": test["min_psnr_db"],
                 "max_abs": test["max_abs"], "goal_met": goal_met, "per_pair": test["per_pair"]},
        "metrics": deltas, "cpu_speed": speed,
    }


def echo_int8_summary(config, report: dict, limits: dict, chosen: dict) -> None:
    """The closing lines on stderr: the test-split result, the CPU speed ratio, the choice and its metric deltas."""
    from export.common import echo
    test, deltas, speed = report["test"], report["metrics"], report["cpu_speed"]
    echo(f"INT8 vs fp32 on {test['pairs']} test pairs: median PSNR {test['median_pair_psnr_db']:.2f} dB (all pixels "
         f"{test['psnr_db']:.2f} dB, worst pair {test['min_psnr_db']:.2f} dB), goal {config.psnr_goal:g} dB "
         f"{'met' if test['goal_met'] else 'NOT met'}")
    if "delta" in deltas:
        echo(f"test metric deltas (INT8 - fp32): {format_deltas(deltas['delta'])}")
    echo(f"CPU (ONNX Runtime, {speed['threads']} threads, {speed['input_shape']}): fp32 "
         f"{speed['fp32_median_ms']:.2f} ms, int8 {speed['int8_median_ms']:.2f} ms (median of {speed['runs']}), "
         f"fp32/int8 = {speed['speedup_fp32_over_int8']:.2f}x")
    echo(f"chosen: {chosen['label']}, {chosen['selection_psnr_db']:.2f} dB on {report['selection']['pairs']} "
         f"selection pairs")
    echo(f"selection metric deltas (INT8 - fp32): {format_deltas(chosen['metric_delta'])}"
         + (f"; limits {', '.join(f'{m} -{v:g}' for m, v in limits.items())} met" if limits else ""))


def quantize_command(config) -> int:
    """`fusion export --format onnx-int8` (config: export.config.ExportConfig): fp32 export (parity-checked),
    calibration, every candidate recipe scored on held-out training pairs, the best kept, the report on the test
    split, the resolved config and the report written beside the output."""
    import shutil
    from export.common import default_out, echo, load_student_weights, set_threads, write_report
    from export.onnx_export import make_readable
    from runtime.imageio import atomic_path

    limits = int8_limits(config)
    set_threads()
    model, folder = load_student_weights(config.weights)
    out = Path(config.out) if config.out else default_out(folder, "onnx-int8", "int8")
    pairs = int8_pairs(config, model.config.vis_channels)
    with tempfile.TemporaryDirectory(prefix="fusion-int8-") as work:
        work = Path(work)
        fp32_path = work / "model.fp32.onnx"
        fp32_report = export_fp32_reference(config, model, folder, pairs.data, fp32_path)
        recipes = recipes_to_try(config.calib_method, config.qdq_target, config.int8_ops, config.percentile)
        candidates, select_fp32 = score_candidates(fp32_path, recipes, pairs.calib, pairs.select, work, log=echo)
        chosen, reason, select_report = pick_recipe(config, candidates, limits, select_fp32, pairs)
        echo(f"chosen: {chosen['label']} ({reason}); reporting on {len(pairs.test)} test pairs")
        test_reference = run_model(fp32_path, pairs.test)
        test = compare_models(fp32_path, chosen["path"], pairs.test, test_reference)
        deltas = metric_deltas(pairs.test, test_reference, test.pop("outputs"))
        speed = cpu_speed(fp32_path, chosen["path"], pairs.speed_feeds, runs=config.bench_runs)
        with atomic_path(out) as tmp:
            shutil.copyfile(chosen["path"], tmp)
            make_readable(tmp)
    report = int8_report(config, out, folder, pairs, limits, fp32_report, candidates, chosen, reason, select_report,
                         test, deltas, speed)
    write_report(out, report, config)
    echo_int8_summary(config, report, limits, chosen)
    print(out)
    return 0


def _shown(names) -> str:
    """A names argument (a split file or a list of stems) as the report records it."""
    from export.pairs import shown_path
    return shown_path(names) if isinstance(names, (str, os.PathLike)) else ",".join(names)


def _speed_main(argv=None) -> int:
    """`python -m export.quantize FP32.onnx INT8.onnx [--imgsz 480x640] [--threads 2] [--runs 50]`: re-time a pair of
    models interleaved on one real test pair (e.g. under `flock` on a shared machine) and print the JSON."""
    import argparse
    import json

    from export.pairs import default_data_dir, load_inputs, parse_imgsz, split_file
    parser = argparse.ArgumentParser(prog="python -m export.quantize", description=_speed_main.__doc__)
    parser.add_argument("fp32")
    parser.add_argument("int8")
    parser.add_argument("--imgsz", default="480x640", help="input HxW (one real test pair resized and cropped)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--data", default=None, help="dataset folder (default: $FUSION_DATA or ../shared/data/roadscene)")
    args = parser.parse_args(argv)
    data = Path(args.data) if args.data else default_data_dir()
    item = load_inputs(data, split_file(data, "test"), 1, parse_imgsz(args.imgsz))[0]
    result = cpu_speed(args.fp32, args.int8, item.feeds(), runs=args.runs, threads=args.threads, warmup=args.warmup)
    print(json.dumps({"fp32": str(args.fp32), "int8": str(args.int8), "pair": item.name, **result}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(_speed_main())
