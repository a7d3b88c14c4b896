"""benchmarks.irgen_students: the real-vs-synthetic student table built from `fusion distill eval` summaries."""
import json

import pytest

from runtime.errors import FusionError
from benchmarks import irgen_students

TEACHER = {"EN": 7.4, "SD": 49.9, "SF": 9.36, "AG": 3.7, "MI": 4.18, "SCD": 0.94, "VIF": 0.65, "Qabf": 0.49,
           "SSIM": 0.95, "PSNR": 13.5, "CC": 0.46, "MSE": 3750.0}


def _summary(folder, student, teacher=TEACHER, count=50):
    folder.mkdir(parents=True)
    rows = {"student (nano)": student, "teacher (em)": teacher, "mean": {k: 1.0 for k in TEACHER}}
    (folder / "metrics.json").write_text(json.dumps({"weights": str(folder), "count": count, "rows": rows}))
    # two pairs per run: "a" at the student's values, "b" 0.1 higher on every metric
    per_image = {"student (nano)": {"a": student, "b": {m: v + 0.1 for m, v in student.items()}},
                 "teacher (em)": {"a": teacher, "b": teacher}}
    (folder / "metrics_per_image.json").write_text(json.dumps(per_image))
    return folder


def test_rows_side_by_side_with_one_teacher_row(tmp_path, capsys):
    real = _summary(tmp_path / "real", {**TEACHER, "EN": 7.1, "Qabf": 0.45})
    synth = _summary(tmp_path / "synth", {**TEACHER, "EN": 6.9, "Qabf": 0.41})
    out = tmp_path / "students.md"
    assert irgen_students.main(["--run", f"real={real}", "--run", f"synth-tqd={synth}", "--out", str(out)]) == 0
    table = out.read_text()
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert [line.split("|")[1].strip() for line in lines[1:]] == ["student (real)", "student (synth-tqd)",
                                                                  "teacher (em)"]
    header = [c.strip() for c in lines[0].split("|")[2:-1]]
    assert header == list(irgen_students.COLUMNS)          # PSNR/CC/MSE left out, baseline rows left out
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["rows"]["student (synth-tqd)"]["Qabf"] == pytest.approx(0.41)
    assert saved["count"] == 50 and saved["runs"]["real"]["folder"] == str(real)
    assert capsys.readouterr().out == table


def test_refuses_different_splits_and_teachers(tmp_path):
    real = _summary(tmp_path / "real", TEACHER)
    other_split = _summary(tmp_path / "split", TEACHER, count=49)
    with pytest.raises(FusionError, match="same split"):
        irgen_students.compare([("real", real), ("synth", other_split)])
    other_teacher = _summary(tmp_path / "teacher", TEACHER, teacher={**TEACHER, "VIF": 0.5})
    with pytest.raises(FusionError, match="different teacher"):
        irgen_students.compare([("real", real), ("synth", other_teacher)])


def test_missing_or_malformed_runs_are_one_line_errors(tmp_path, capsys):
    assert irgen_students.main(["--run", f"real={tmp_path / 'nowhere'}"]) == 2
    assert "run `fusion distill eval" in capsys.readouterr().err
    assert irgen_students.main(["--run", str(tmp_path)]) == 2
    assert "LABEL=DIR" in capsys.readouterr().err


# --- teacher.irgen.baseline_dataset: the luminance "IR" control folder ------------------------------------------

def test_baseline_dataset_is_a_usable_pair_folder(tmp_path, roadscene, train_names):
    import numpy as np

    from runtime.color import luminance
    from runtime.imageio import discover_pairs, read_ir, read_vis
    from teacher.irgen import baseline_dataset

    names = tmp_path / "names.txt"
    names.write_text("\n".join(train_names[:3]) + "\n")
    out = tmp_path / "inv"
    argv = ["--kind", "inverted-luminance", "--rgb", str(roadscene / "vi"), "--names", str(names), "--out", str(out)]
    assert baseline_dataset.main(argv) == 0
    pairs = discover_pairs(out)                               # the layout the teachers and the student read
    assert sorted(p.name for p in pairs) == sorted(train_names[:3])
    vis = read_vis(roadscene / "vi" / f"{train_names[0]}.jpg")
    ir = read_ir(out / "ir" / f"{train_names[0]}.png")
    assert ir.shape == vis.shape[:2]
    assert np.abs(ir - (1.0 - luminance(vis))).max() <= 1.0 / 255 + 1e-6   # 8-bit rounding only
    assert baseline_dataset.main(argv) == 2                   # finished work is never overwritten silently...
    assert baseline_dataset.main(argv + ["--resume"]) == 0    # ...and a resumed run keeps it
    assert (out / "manifest.json").is_file()


def test_baseline_dataset_kinds():
    import numpy as np

    from teacher.irgen.baseline_dataset import baseline_ir
    rgb = np.random.default_rng(0).random((8, 8, 3), dtype=np.float32)
    assert np.allclose(baseline_ir(rgb, "vis-luminance") + baseline_ir(rgb, "inverted-luminance"), 1.0)
    with pytest.raises(FusionError, match="unknown baseline kind"):
        baseline_ir(rgb, "thermal")


def test_seed_replicates_are_summarised_as_mean_and_sd(tmp_path):
    runs = {"real": 0.70, "real-seed1": 0.72, "real-seed2": 0.74, "synth-tqd": 0.60}
    argv = []
    for label, vif in runs.items():
        argv += ["--run", f"{label}={_summary(tmp_path / label, {**TEACHER, 'VIF': vif})}"]
    out = tmp_path / "students.md"
    assert irgen_students.main(argv + ["--out", str(out)]) == 0
    summary = [line for line in out.read_text().splitlines() if line.startswith("| student (real) | 3 |")]
    assert len(summary) == 1 and "0.7200 +- 0.0200" in summary[0]          # VIF: mean, sample sd of 3 seeds
    single = [line for line in out.read_text().splitlines() if line.startswith("| student (synth-tqd) | 1 |")]
    assert len(single) == 1 and "+-" not in single[0]                       # one seed: no spread invented
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["per_seed"]["student (real)"]["VIF"] == pytest.approx([0.70, 0.72, 0.74])


def test_paired_comparison_uses_seed_means_per_pair(tmp_path, capsys):
    argv = []
    for label, vif in {"real": 0.70, "real-seed1": 0.72, "synth": 0.75, "synth-seed1": 0.69}.items():
        argv += ["--run", f"{label}={_summary(tmp_path / label, {**TEACHER, 'VIF': vif})}"]
    out = tmp_path / "students.md"
    assert irgen_students.main(argv + ["--paired", "real", "--out", str(out)]) == 0
    saved = json.loads(out.with_suffix(".json").read_text())["paired"]
    # per pair: synth seed mean 0.72 (a) / 0.82 (b) vs real 0.71 / 0.81 -> higher on both, +0.01 on average
    assert saved["synth"]["VIF"]["higher"] == 2 and saved["synth"]["VIF"]["pairs"] == 2
    assert saved["synth"]["VIF"]["mean_diff"] == pytest.approx(0.01)
    assert saved["synth"]["EN"]["higher"] == 0 and saved["synth"]["EN"]["mean_diff"] == pytest.approx(0.0)
    assert "| synth | " in out.read_text() and "real" not in saved
    assert irgen_students.main(argv + ["--paired", "nothing"]) == 2
    assert "no run is labelled nothing" in capsys.readouterr().err
