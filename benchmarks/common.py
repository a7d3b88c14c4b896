"""What `fusion bench` (benchmarks/bench.py) and benchmarks/student_speed.py both need, owned here so that neither
borrows from the other: the input size an ONNX file accepts and the machine's load average (a student's GMACs are
`distill.cost.count_macs`).

    from benchmarks.common import load_average, onnx_input_size
    onnx_input_size("runtime/models/default/model.onnx")    # (H, W) when fixed, None when dynamic
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


def onnx_input_size(path: str | os.PathLike) -> Optional[tuple[int, int]]:
    """(H, W) of the first input of an ONNX model when both are fixed, None when either is dynamic."""
    dims = _first_input_dims(path)
    if len(dims) == 4 and dims[2].HasField("dim_value") and dims[3].HasField("dim_value"):
        return int(dims[2].dim_value), int(dims[3].dim_value)
    return None


def onnx_is_dynamic(path: str | os.PathLike) -> bool:
    """True when the ONNX model's first (N, C, H, W) input takes any height or width."""
    dims = _first_input_dims(path)
    return len(dims) == 4 and not (dims[2].HasField("dim_value") and dims[3].HasField("dim_value"))


def _first_input_dims(path: str | os.PathLike):
    import onnx
    model = onnx.load(str(Path(path)), load_external_data=False)
    return model.graph.input[0].type.tensor_type.shape.dim


def load_average() -> Optional[float]:
    """1-minute load average: on a shared machine, the context every absolute millisecond needs (None where the
    platform has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None
