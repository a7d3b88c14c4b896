"""Shared fixtures: the real RoadScene pairs in ../shared/data (override with FUSION_SHARED_DATA) and the shipped
default model. Shared functions and classes are in helpers.py."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# One intra-op thread: deterministic, and immune to the large slowdowns torch suffers when its threads
# are oversubscribed on a busy 2-core machine. (Set before helpers imports numpy and OpenCV.)
os.environ.setdefault("OMP_NUM_THREADS", "1")

from helpers import REPO, ROADSCENE, SHARED_DATA  # noqa: E402


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


@pytest.fixture(scope="session")
def shipped_model() -> Path:
    """runtime/models/default, the trained student the repository ships (tracked in git): a test that needs it fails
    when a file is missing, since a skip would hide a broken checkout or wheel."""
    folder = REPO / "runtime" / "models" / "default"
    missing = [name for name in ("config.json", "model.safetensors", "model.onnx", "model.onnx.json",
                                 "model.int8.onnx", "model.int8.onnx.json") if not (folder / name).is_file()]
    if missing:
        pytest.fail(f"the shipped model lacks {', '.join(missing)} in {folder}; restore it with "
                    f"`git checkout -- runtime/models/default`")
    return folder
