"""`fusion distill eval` over several sets: one table per set (a name-suffix filter splits MSRS into day and night),
the below-`mean` line computed from the rows, a grid per set, and clear errors for malformed set specs."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from helpers import SHARED_DATA  # noqa: E402

from distill.eval_sets import parse_set, set_label  # noqa: E402
from distill.evaluate import below_baseline, evaluate_sets, wins_over  # noqa: E402
from runtime.errors import FusionError  # noqa: E402


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    import torch

    from distill.models import create_student, save_student
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny")
    save_student(create_student("tiny-test").eval(), folder)
    return folder


def test_set_specs_parse_and_label():
    assert parse_set("../shared/data/msrs_mini:val.txt:N") == ("../shared/data/msrs_mini", "val.txt", "N")
    assert parse_set("data/x") == ("data/x", None, "")
    assert set_label("../shared/data/msrs_mini", "val.txt", "N") == "msrs_mini-val-N"
    with pytest.raises(FusionError, match="PATH\\[:NAMES\\[:SUFFIX\\]\\]"):
        parse_set("a:b:c:d")


def test_below_mean_and_laplacian_wins_are_read_from_the_rows():
    rows = {"s": {"EN": 7, "SD": 30, "SF": 5, "AG": 2, "MI": 2, "SCD": 1, "VIF": 0.8, "Qabf": 0.5, "SSIM": 0.9},
            "mean": {"EN": 6, "SD": 31, "SF": 4, "AG": 3, "MI": 2, "SCD": 1, "VIF": 0.7, "Qabf": 0.4, "SSIM": 0.9}}
    assert below_baseline(rows, "s") == ["SD", "AG"]
    assert wins_over(rows, "s", "mean") == ["EN", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM"]


def test_several_sets_give_one_table_and_grid_each(tiny_weights, tmp_path):
    msrs = SHARED_DATA / "msrs_mini"
    out = tmp_path / "eval"
    result = evaluate_sets(str(tiny_weights), [f"{msrs}:val.txt:D", f"{msrs}:val.txt:N"], out,
                           baselines=["mean"], teacher="max", profile=False, threads=1, grid_rows=2)
    day, night = result["sets"]["msrs_mini-val-D"], result["sets"]["msrs_mini-val-N"]
    names = (msrs / "val.txt").read_text().split()
    assert day["count"] == sum(n.split(".")[0].endswith("D") for n in names) and day["count"] > 0
    assert night["count"] == sum(n.split(".")[0].endswith("N") for n in names) and night["count"] > 0
    report = (out / "summary.md").read_text()
    assert report.count("| student (tiny-test) |") == 2 and report.count("below `mean` on:") == 2
    for label, summary in result["sets"].items():
        assert (out / label / "grid.png").is_file()
        assert summary["below_mean"] == below_baseline(summary["rows"], "student (tiny-test)")
    saved = json.loads((out / "summary.json").read_text())
    assert set(saved) == {"msrs_mini-val-D", "msrs_mini-val-N"}


def test_cli_refuses_a_suffix_that_matches_nothing(tiny_weights, tmp_path, capsys):
    from runtime.cli import main
    code = main(["distill", "eval", "--weights", str(tiny_weights), "--data",
                 f"{SHARED_DATA / 'msrs_mini'}:val.txt:Q", "--no-profile", "--out", str(tmp_path / "e")])
    assert code == 2
    assert "ending in 'Q'" in capsys.readouterr().err


def test_eval_compares_a_student_with_its_own_teacher(tmp_path):
    from distill.evaluate import own_teacher
    from distill.models import create_student, save_student
    save_student(create_student("tiny-test"), tmp_path / "sharp", metadata={"teacher": "pyramid-sharp"})
    save_student(create_student("tiny-test"), tmp_path / "files", metadata={"teacher": ["build/teacher/x"]})
    save_student(create_student("tiny-test"), tmp_path / "baseline", metadata={"teacher": "max"})
    assert own_teacher(str(tmp_path / "sharp")) == "pyramid-sharp"
    assert own_teacher(str(tmp_path / "files")) == "pyramid"      # target files, not a registered teacher
    assert own_teacher(str(tmp_path / "baseline")) == "pyramid"   # a baseline is not a fusion teacher
