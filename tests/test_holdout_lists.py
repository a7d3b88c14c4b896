"""The committed training-holdout lists (benchmarks/holdout/) are exactly what distillation carves out for validation,
so choices scored on them never saw a pair a student trained on."""
from __future__ import annotations

from pathlib import Path

import pytest

from distill.data import split_train_val
from helpers import REPO, SHARED_DATA


@pytest.mark.parametrize("dataset", ["roadscene", "llvip_mini"])
def test_holdout_list_is_the_training_split(dataset):
    names = (SHARED_DATA / dataset / "train.txt").read_text().split()
    train, held = split_train_val(names, 0.1, 0)
    committed = (REPO / "benchmarks" / "holdout" / f"{dataset}_train_holdout.txt").read_text().split()
    assert committed == held and not set(committed) & set(train)
    evaluation = set()
    for split in ("test.txt", "val.txt"):
        if (SHARED_DATA / dataset / split).is_file():
            evaluation |= set((SHARED_DATA / dataset / split).read_text().split())
    assert not set(committed) & evaluation
    assert Path(REPO / "benchmarks" / "holdout" / "README.md").is_file()
