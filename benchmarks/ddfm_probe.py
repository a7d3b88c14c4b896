"""Cost of one DDFM sampling step (diffusion prior forward + EM likelihood step), for `fusion bench`.

DDFM samples with many such steps, so seconds per step (times the configured step count) is the honest unit: a full
sample at native size is far beyond a benchmark's time budget on a CPU.
"""
from __future__ import annotations

import importlib.util


def step_cost(prior: str | None, pair) -> dict:
    """{'model', 'unit': 'step', 'per_unit_s', 'seconds', ...} for one sampling step on `pair` (bench quality pair)."""
    if importlib.util.find_spec("teacher.ddfm") is None:
        raise RuntimeError("the ddfm teacher (teacher/ddfm.py) is not part of this installation yet")
    raise RuntimeError("the ddfm teacher offers no single-step entry point this benchmark knows")
