"""Shared fixtures: the real RoadScene pairs in ../shared/data (override with FUSION_SHARED_DATA). Shared functions
and classes are in helpers.py."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# One intra-op thread: deterministic, and immune to the large slowdowns torch suffers when its threads
# are oversubscribed on a busy 2-core machine. (Set before helpers imports numpy and OpenCV.)
os.environ.setdefault("OMP_NUM_THREADS", "1")

from helpers import ROADSCENE, SHARED_DATA  # noqa: E402


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"shared test data not found at {path}; set FUSION_SHARED_DATA to the folder holding roadscene/")
    return path


@pytest.fixture(scope="session")
def roadscene() -> Path:
    """The RoadScene dataset folder (ir/, vi/, train.txt, test.txt)."""
    return _require(ROADSCENE)


@pytest.fixture(scope="session")
def metrics_reference() -> Path:
    return _require(SHARED_DATA / "metrics_reference" / "roadscene_first8.json")


@pytest.fixture(scope="session")
def train_names(roadscene) -> list[str]:
    return [Path(line).stem for line in (roadscene / "train.txt").read_text().split()]


@pytest.fixture(scope="session")
def test_names(roadscene) -> list[str]:
    return [Path(line).stem for line in (roadscene / "test.txt").read_text().split()]

