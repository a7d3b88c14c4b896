"""benchmarks.teacher_variants: pyramid-teacher settings scored on training pairs (the table behind pyramid-sharp)."""
from __future__ import annotations

import pytest

from benchmarks.teacher_variants import main, parse_settings
from runtime.errors import FusionError


def test_settings_parse_and_bad_ones_fail():
    assert parse_settings("detail_gain=1.1,detail_levels=2") == {"detail_gain": 1.1, "detail_levels": 2}
    with pytest.raises(FusionError, match="key=number"):
        parse_settings("detail_gain")
    with pytest.raises(FusionError, match="key=number"):
        parse_settings("detail_gain=sharp")


def test_a_sharper_variant_scores_sharper_on_real_training_pairs(capsys):
    pytest.importorskip("torch")
    assert main(["detail_gain=1.3", "--count-day", "2", "--count-night", "1"]) == 0
    rows = {}
    for line in capsys.readouterr().out.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[(cells[0], cells[1].split(" (")[0])] = float(cells[2])          # SF
    for set_name in ("RoadScene train", "LLVIP train"):
        assert rows[("pyramid detail_gain=1.3", set_name)] > 1.15 * rows[("pyramid", set_name)]
    assert main(["nonsense=1"]) == 2                                          # not a setting of the teacher
