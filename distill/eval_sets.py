"""The sets an evaluation runs on: `PATH[:NAMES[:SUFFIX]]` specs, the named suites of ../shared/data, the pairs of a
set and its label. `fusion distill eval` and benchmarks.teacher_compare read sets the same way.

    from distill.eval_sets import SUITES, parse_set, set_label, set_pairs
    path, names, suffix = parse_set("../shared/data/msrs_mini:val.txt:N")
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from runtime.errors import FusionError

# `--suite validation`: every validation set of ../shared/data (msrs_mini split into day D and night N); never trained
# or tuned on. PATH:NAMES[:SUFFIX], PATH relative to --shared.
SUITES = {"validation": ("roadscene:test.txt", "msrs_mini:val.txt:D", "msrs_mini:val.txt:N", "llvip_mini:val.txt")}


def parse_set(spec: str) -> tuple[str, Optional[str], str]:
    """'PATH[:NAMES[:SUFFIX]]' -> (path, names or None, suffix): SUFFIX keeps only names ending with it (msrs D/N)."""
    parts = spec.split(":")
    if len(parts) > 3 or not parts[0]:
        raise FusionError(f"a set is PATH[:NAMES[:SUFFIX]] (e.g. ../shared/data/msrs_mini:val.txt:N), got '{spec}'")
    return parts[0], (parts[1] or None) if len(parts) > 1 else None, parts[2] if len(parts) > 2 else ""


def set_pairs(data: str, names: Optional[str], suffix: str = "") -> tuple[Optional[str], list]:
    """(the split file, looked up in `data` too; its pairs, kept only when their name ends with `suffix`)."""
    from runtime.imageio import discover_pairs
    if names is not None and not Path(names).is_file() and (Path(data) / names).is_file():
        names = str(Path(data) / names)
    pairs = [p for p in discover_pairs(data, names=names) if p.name.endswith(suffix)]
    if not pairs:
        raise FusionError(f"no pair of {data} ({names or 'all'}) has a name ending in '{suffix}'" if suffix else
                          f"no pair found in {data} ({names or 'all'})")
    return names, pairs


def set_label(path: str, names: Optional[str], suffix: str) -> str:
    label = Path(path).name
    if names:
        label += "-" + Path(names).stem
    return label + (f"-{suffix}" if suffix else "")
