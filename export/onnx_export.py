"""PyTorch student -> ONNX, simplified, with metadata, and proven equal to PyTorch in ONNX Runtime on real pairs.

    from export.onnx_export import export_onnx
    report = export_onnx(model, "model.onnx", imgsz=(480, 640), dynamic=True)   # raises ParityError on a mismatch
    report["parity"]["max_abs"]                                                 # <= 1e-4

The graph: inputs `ir` (N, 1, H, W) and `vis` (N, C, H, W), float32 in [0, 1] (C = 1: the visible luminance,
BT.601 full range; C = 3 for RGB students), output `fused` (N, C, H, W) float32 in [0, 1]. Static exports fix N, H and
W; `dynamic=True` leaves all three free (the student pads to its multiple internally, so any H and W work).

Nothing is written unless the exported file passes the parity check: the model goes to a temporary name, ONNX Runtime
runs it on real pairs beside PyTorch, and only then is it renamed into place.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from export.pairs import shown_path, stack_inputs
from runtime.errors import FusionError, require
from runtime.timing import ort_session

INPUT_NAMES = ("ir", "vis")
OUTPUT_NAME = "fused"
DEFAULT_OPSET = 17
FP32_TOLERANCE = 1e-4
LUMINANCE_CONVENTION = "luminance BT.601 full range"
RGB_CONVENTION = "RGB"
INPUT_RANGE = "[0, 1]"


class ParityError(FusionError):
    """An exported model computes something else than the PyTorch model it came from."""


# ------------------------------------------------------------------------------------------------------- metadata
def make_readable(path: str | os.PathLike) -> None:
    """Give a file written through a private temporary name the usual mode (0666 minus the umask): models are
    shipped and copied to devices, and mkstemp's 0600 would make them unreadable to other users there."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _short_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def weights_metadata(folder: str | os.PathLike) -> dict[str, str]:
    """What an export records about the weights it came from, read from the student folder's config.json.

    training_config_hash: the hash the training run stored in config.json's metadata (`config_hash`,
    `train_config_hash` or `training_config_hash`), else a hash of a stored training config (`train_config` /
    `training_config`), else "none" (weights saved without a training run, e.g. a freshly created student).
    """
    folder = Path(folder)
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FusionError(f"cannot read {folder / 'config.json'} ({exc}); point --weights at a student folder") \
            from None
    meta = data.get("metadata") or {}
    training_hash = None
    for key in ("config_hash", "train_config_hash", "training_config_hash"):
        if meta.get(key):
            training_hash = str(meta[key])
            break
    if training_hash is None:
        for key in ("train_config", "training_config", "config"):
            if isinstance(meta.get(key), dict):
                training_hash = _short_hash(meta[key])
                break
    info = {
        "variant": str(data.get("variant", (data.get("config") or {}).get("variant", "unknown"))),
        "architecture": str(data.get("architecture", "unknown")),
        "architecture_hash": _short_hash(data.get("config", {})),
        "training_config_hash": training_hash or "none",
        "weights_source": shown_path(folder),
    }
    weights = folder / "model.safetensors"
    if weights.is_file():
        info["weights_sha256"] = sha256_file(weights)[:16]
    return info


def model_metadata(model, dynamic: bool, imgsz: tuple[int, int] | None, batch: int, opset: int,
                   extra: dict | None = None) -> dict[str, str]:
    """The key/value metadata stored in the ONNX file (all strings, as ONNX requires)."""
    import torch
    config = getattr(model, "config", None)
    channels = int(getattr(config, "vis_channels", 1))
    shape = "N,{c},H,W" if dynamic else f"{batch},{{c}},{imgsz[0]},{imgsz[1]}"
    meta = {
        "producer": "irvis-fusion export",
        "variant": str(getattr(config, "variant", type(model).__name__)),
        "colour_convention": LUMINANCE_CONVENTION if channels == 1 else RGB_CONVENTION,
        "input_range": INPUT_RANGE,
        "inputs": f"ir ({shape.format(c=1)}) float32; vis ({shape.format(c=channels)}) float32",
        "output": f"{OUTPUT_NAME} ({shape.format(c=channels)}) float32",
        "vis_channels": str(channels),
        "multiple": str(int(getattr(model, "multiple", 1))),
        "dynamic": "true" if dynamic else "false",
        "imgsz": "dynamic" if dynamic else f"{imgsz[0]}x{imgsz[1]}",
        "opset": str(opset),
        "exporter": f"torch {torch.__version__} (TorchScript ONNX exporter)",
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if config is not None and hasattr(config, "to_dict"):
        meta.setdefault("architecture_hash", _short_hash(config.to_dict()))
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    return meta


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The key/value metadata of an ONNX file (without loading its weights into a session)."""
    onnx = require("onnx", "reading ONNX metadata")
    model = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in model.metadata_props}


# --------------------------------------------------------------------------------------------------------- parity
def static_input_size(onnx_path: str | os.PathLike) -> tuple[int, int] | None:
    """(H, W) of a static model's `ir` input (N, 1, H, W); None when either is symbolic (a dynamic export). Read from
    the graph, without loading the weights or building a session: export, `fusion bench` and
    benchmarks/student_speed all ask this one function."""
    onnx = require("onnx", "reading an ONNX model's input size")
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    ir = next((i for i in graph.input if i.name == INPUT_NAMES[0]), None)
    if ir is None:
        raise FusionError(f"{onnx_path} has inputs {[i.name for i in graph.input]}, but a fusion model takes "
                          f"'{INPUT_NAMES[0]}' and '{INPUT_NAMES[1]}'; export it with `fusion export`")
    dims = ir.type.tensor_type.shape.dim
    if len(dims) != 4:
        raise FusionError(f"{onnx_path} takes an '{INPUT_NAMES[0]}' input of rank {len(dims)}, expected (N, 1, H, W)")
    height, width = dims[2], dims[3]
    if height.HasField("dim_value") and width.HasField("dim_value"):
        return int(height.dim_value), int(width.dim_value)
    return None


def torch_outputs(model, inputs) -> list[np.ndarray]:
    import torch
    outputs = []
    with torch.inference_mode():
        for item in inputs:
            outputs.append(model(torch.from_numpy(item.ir), torch.from_numpy(item.vis)).float().numpy())
    return outputs


def compare_outputs(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray],
                    names: Sequence[str]) -> dict:
    """max/mean absolute difference and PSNR (dB, peak 1) of `candidate` against `reference`, overall and per pair."""
    per_pair = {}
    worst_name, worst = None, -1.0
    abs_sum, count, sq_sum = 0.0, 0, 0.0
    psnrs = []
    for name, ref, out in zip(names, reference, candidate):
        if ref.shape != out.shape:
            raise ParityError(f"pair '{name}': the exported model returned shape {tuple(out.shape)}, PyTorch "
                              f"{tuple(ref.shape)}; the export is broken, report it")
        diff = np.abs(ref.astype(np.float64) - out.astype(np.float64))
        max_abs = float(diff.max())
        mse = float((diff ** 2).mean())
        psnr = float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))
        psnrs.append(psnr)
        per_pair[name] = {"max_abs": max_abs, "mean_abs": float(diff.mean()), "psnr_db": psnr,
                          "size": [int(s) for s in ref.shape[-2:]]}
        abs_sum += float(diff.sum())
        sq_sum += float((diff ** 2).sum())
        count += diff.size
        if max_abs > worst:
            worst, worst_name = max_abs, name
    mse_all = sq_sum / max(count, 1)
    finite = [p for p in psnrs if np.isfinite(p)]
    return {"pairs": len(per_pair), "max_abs": max(worst, 0.0), "mean_abs": abs_sum / max(count, 1),
            "psnr_db": float("inf") if mse_all == 0 else float(10 * np.log10(1.0 / mse_all)),
            "min_psnr_db": float(min(finite)) if finite else float("inf"),
            "worst_pair": worst_name, "per_pair": per_pair}


def _batched_input(inputs):
    """Two real pairs cropped to their common size and stacked, to check a dynamic batch dimension."""
    from export.pairs import ModelInput
    a, b = inputs[0], inputs[1]
    h, w = min(a.size[0], b.size[0]), min(a.size[1], b.size[1])
    return ModelInput(f"{a.name}+{b.name}", np.ascontiguousarray(np.concatenate([a.ir[..., :h, :w], b.ir[..., :h, :w]])),
                      np.ascontiguousarray(np.concatenate([a.vis[..., :h, :w], b.vis[..., :h, :w]])))


def check_parity(onnx_path: str | os.PathLike, model, inputs, tolerance: float = FP32_TOLERANCE,
                 dynamic_batch: bool = False) -> dict:
    """Run the ONNX file in ONNX Runtime and the PyTorch model on the same real inputs; ParityError when the max
    absolute difference exceeds `tolerance`. Returns the comparison (see `compare_outputs`)."""
    inputs = list(inputs)
    if not inputs:
        raise FusionError("the parity check needs at least one real pair; pass --check-count 1 or more")
    if dynamic_batch and len(inputs) >= 2:
        inputs.append(_batched_input(inputs))
    session = ort_session(onnx_path)
    exported = [session.run([OUTPUT_NAME], item.feeds())[0] for item in inputs]
    result = compare_outputs(torch_outputs(model, inputs), exported, [i.name for i in inputs])
    result["tolerance"] = tolerance
    result["passed"] = bool(result["max_abs"] <= tolerance)
    if not result["passed"]:
        worst = result["per_pair"][result["worst_pair"]]
        raise ParityError(
            f"ONNX Runtime differs from PyTorch by up to {result['max_abs']:.3g} (mean {result['mean_abs']:.3g}, "
            f"worst pair {result['worst_pair']} at {worst['size'][0]}x{worst['size'][1]}) on {result['pairs']} real "
            f"pairs, above the fp32 tolerance {tolerance:g}; nothing was written (retry with --no-simplify or "
            f"another --opset, and report it if that does not help)")
    return result


# --------------------------------------------------------------------------------------------------------- export
def _torch_export(model, path: Path, example: tuple, dynamic: bool, opset: int) -> None:
    import torch
    dynamic_axes = None
    if dynamic:
        axes = {0: "N", 2: "H", 3: "W"}
        dynamic_axes = {name: axes for name in (*INPUT_NAMES, OUTPUT_NAME)}
    with warnings.catch_warnings():
        # The TorchScript exporter warns that it is the legacy path and that shapes become trace-time constants;
        # the parity check below is what tells whether the trace is right.
        warnings.simplefilter("ignore")
        kwargs = {"dynamo": False} if "dynamo" in torch.onnx.export.__code__.co_varnames else {}
        torch.onnx.export(model, example, str(path), input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                          opset_version=opset, dynamic_axes=dynamic_axes, do_constant_folding=True, **kwargs)


def _simplify(path: Path) -> "Any":
    onnx = require("onnx", "ONNX export")
    onnxslim = require("onnxslim", "simplifying the ONNX graph")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slimmed = onnxslim.slim(str(path))
    return slimmed if slimmed is not None else onnx.load(str(path))


def export_onnx(model, out_path: str | os.PathLike, imgsz: tuple[int, int] | None = (480, 640),
                dynamic: bool = False, opset: int = DEFAULT_OPSET, metadata: dict | None = None,
                check_pairs=None, simplify: bool = True, tolerance: float = FP32_TOLERANCE, batch: int = 1,
                data: str | os.PathLike | None = None, check_count: int = 8) -> dict:
    """Export `model` to ONNX at `out_path` and prove it equal to PyTorch in ONNX Runtime on real pairs.

    imgsz (H, W): the static input size (and the example size for dynamic exports).
    check_pairs: a list of `export.pairs.ModelInput`; None reads `check_count` pairs of the training split of
        `data` (default: $FUSION_DATA or ../shared/data/roadscene), resized/cropped to imgsz, or at their native
        sizes when `dynamic`.
    metadata: extra key/values for the ONNX metadata (e.g. `weights_metadata(folder)`).
    Returns a report dict (path, settings, metadata, parity). Raises ParityError (nothing written) on a mismatch.
    """
    import torch
    onnx = require("onnx", "ONNX export")
    from export.pairs import load_inputs, parse_imgsz
    from runtime.imageio import atomic_path

    if opset < 17:
        raise FusionError(f"--opset {opset} is too old: the export needs opset 17 or newer")
    imgsz = parse_imgsz(imgsz) or (480, 640)
    model = getattr(model, "module", model).float().eval().cpu()
    channels = int(getattr(getattr(model, "config", None), "vis_channels", 1))
    if check_pairs is None:
        check_pairs = load_inputs(data, None, check_count, None if dynamic else imgsz, channels)
    check_pairs = list(check_pairs)
    if not dynamic:
        wrong = [p.name for p in check_pairs if p.size != tuple(imgsz)]
        if wrong:
            raise FusionError(f"parity pairs {', '.join(wrong[:3])} are not {imgsz[0]}x{imgsz[1]} like the static "
                              f"export; load them with imgsz={imgsz}")
        if batch != 1:
            check_pairs = [stack_inputs(check_pairs[i:i + batch] * batch, batch) for i in range(0, len(check_pairs), batch)]

    out_path = Path(out_path)
    meta = model_metadata(model, dynamic, imgsz, batch, opset, metadata)
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    example = (torch.rand(batch, 1, *imgsz, generator=generator), torch.rand(batch, channels, *imgsz,
                                                                           generator=generator))
    import tempfile
    with tempfile.TemporaryDirectory(prefix="fusion-export-") as work:
        raw = Path(work) / "raw.onnx"
        _torch_export(model, raw, example, dynamic, opset)
        graph = _simplify(raw) if simplify else onnx.load(str(raw))
        del graph.metadata_props[:]
        for key, value in meta.items():
            graph.metadata_props.add(key=key, value=value)
        graph.producer_name = "irvis-fusion"
        onnx.checker.check_model(graph)
        with atomic_path(out_path) as tmp:
            onnx.save(graph, str(tmp))
            make_readable(tmp)
            parity = check_parity(tmp, model, check_pairs, tolerance, dynamic_batch=dynamic)
    report = {
        "path": shown_path(out_path),
        "format": "onnx",
        "settings": {"imgsz": None if dynamic else list(imgsz), "dynamic": dynamic, "batch": batch,
                     "opset": opset, "simplify": simplify, "tolerance": tolerance,
                     "inputs": list(INPUT_NAMES), "output": OUTPUT_NAME, "vis_channels": channels},
        "metadata": meta,
        "parity": parity,
        "seconds": round(time.perf_counter() - started, 2),
        "sha256": sha256_file(out_path),
    }
    return report


def summarize_parity(parity: dict) -> str:
    return (f"max |ONNX - PyTorch| = {parity['max_abs']:.2e} (mean {parity['mean_abs']:.2e}, tolerance "
            f"{parity['tolerance']:g}) on {parity['pairs']} real pair(s)")
