"""What `fusion bench` (benchmarks/bench.py) and benchmarks/student_speed.py both need, owned here so that neither
borrows from the other: the machine's load average (a student's GMACs are `distill.cost.count_macs`, an ONNX file's
input size `export.onnx_export.static_input_size`).

    from benchmarks.common import load_average
    load_average()    # 1-minute load average, None where the platform has none
"""
from __future__ import annotations

import os
from typing import Optional


def load_average() -> Optional[float]:
    """1-minute load average: on a shared machine, the context every absolute millisecond needs (None where the
    platform has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None
