"""`fusion teacher fuse` on real pairs: outputs, manifest, resume, shards (by hand and under torchrun), bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from runtime.cli import main  # noqa: E402
from runtime.imageio import read_raw  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def small_dataset(tmp_path, roadscene, train_names):
    """A dataset folder of 4 real training pairs, shrunk to keep the test fast (ir/*.png, vi/*.png)."""
    import cv2
    root = tmp_path / "data"
    (root / "ir").mkdir(parents=True)
    (root / "vi").mkdir()
    names = train_names[:4]
    for name in names:
        for sub in ("ir", "vi"):
            img = cv2.imread(str(roadscene / sub / f"{name}.jpg"), cv2.IMREAD_UNCHANGED)
            cv2.imwrite(str(root / sub / f"{name}.png"), img[::3, ::3])
    return root, names


def fuse(*args) -> int:
    return main(["teacher", "fuse", "--device", "cpu", "--threads", "1", *map(str, args)])


def test_fuse_writes_one_png_per_pair_and_a_manifest(small_dataset, tmp_path):
    data, names = small_dataset
    out = tmp_path / "out"
    assert fuse("--teacher", "em", "--data", data, "--out", out, "--color", "--em-max-iter", "40") == 0
    for name in names:
        fused = read_raw(out / f"{name}.png")
        ir = read_raw(data / "ir" / f"{name}.png")
        assert fused.dtype == np.uint8 and fused.shape == ir.shape[:2]
        color = read_raw(out / "color" / f"{name}.png")
        assert color.shape == ir.shape[:2] + (3,)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["teacher"] == "em" and manifest["status"] == "complete"
    assert manifest["settings"]["max_iter"] == 40 and manifest["fused"] == 4
    assert sorted(manifest["written"]) == sorted(names)
    assert "torch" in manifest["versions"]
    assert not list(out.glob(".*tmp*")), "no temporary files may be left behind"


def test_default_output_is_teacher_fused_beside_the_data(small_dataset):
    data, names = small_dataset
    assert fuse("--teacher", "mean", "--data", data) == 0
    assert sorted(p.stem for p in (data / "TEACHER_FUSED").glob("*.png")) == sorted(names)


def test_resume_redoes_nothing_finished_and_refuses_to_overwrite(small_dataset, tmp_path, capsys):
    data, names = small_dataset
    out = tmp_path / "out"
    assert fuse("--teacher", "mean", "--data", data, "--out", out) == 0
    finished = {n: (out / f"{n}.png").stat().st_mtime_ns for n in names[1:]}
    (out / f"{names[0]}.png").unlink()  # as if interrupted before the first pair was written
    (out / f".{names[0]}.abc.tmp.png").write_bytes(b"\x89PNG half")  # a temp file left by a kill
    assert fuse("--teacher", "mean", "--data", data, "--out", out) == 2
    assert "--resume" in capsys.readouterr().err
    assert fuse("--teacher", "mean", "--data", data, "--out", out, "--resume") == 0
    assert (out / f"{names[0]}.png").is_file()
    assert {n: (out / f"{n}.png").stat().st_mtime_ns for n in names[1:]} == finished
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["written"] == [names[0]] and manifest["already_done"] == 3
    # Another teacher (or other settings) may not fill up the same folder.
    assert fuse("--teacher", "max", "--data", data, "--out", out, "--resume") == 2
    assert "another --out" in capsys.readouterr().err


def test_resume_of_a_finished_folder_keeps_its_manifest(small_dataset, tmp_path, capsys):
    data, _ = small_dataset
    out = tmp_path / "out"
    assert fuse("--teacher", "mean", "--data", data, "--out", out) == 0
    before = (out / "manifest.json").read_bytes()
    assert json.loads(before)["seconds_per_pair_median"] is not None
    assert fuse("--teacher", "mean", "--data", data, "--out", out, "--resume") == 0
    assert "nothing to do" in capsys.readouterr().err
    assert (out / "manifest.json").read_bytes() == before  # the build's timings survive a no-op rerun


def test_shards_by_hand_are_disjoint_and_complete(small_dataset, tmp_path):
    data, names = small_dataset
    seen = []
    for index in range(3):
        out = tmp_path / f"shard{index}"
        assert fuse("--teacher", "mean", "--data", data, "--out", out, "--shard", f"{index}/3") == 0
        seen.append({p.stem for p in out.glob("*.png")})
        assert json.loads((out / f"manifest.{index}of3.json").read_text())["shard"] == {"index": index, "count": 3}
    assert set().union(*seen) == set(names)
    assert sum(len(s) for s in seen) == len(names)


def test_torchrun_ranks_split_the_pairs(small_dataset, tmp_path):
    """Two CPU processes under torchrun (gloo): each takes its shard with no flags; the union is all pairs, once."""
    data, names = small_dataset
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "runtime.cli", "teacher", "fuse", "--teacher", "mean", "--data", str(data), "--out", str(out),
         "--device", "cpu", "--threads", "1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = [json.loads((out / f"manifest.{rank}of2.json").read_text())["written"] for rank in range(2)]
    assert set(written[0]).isdisjoint(written[1])
    assert sorted(written[0] + written[1]) == sorted(names)
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(names)


def test_misaligned_pair_stops_with_the_file_named_and_keeps_finished_outputs(small_dataset, tmp_path, capsys):
    import cv2
    data, names = small_dataset
    bad = data / "ir" / f"{names[2]}.png"
    cv2.imwrite(str(bad), cv2.imread(str(bad), cv2.IMREAD_UNCHANGED)[:-5])
    out = tmp_path / "out"
    assert fuse("--teacher", "mean", "--data", data, "--out", out) == 2
    err = capsys.readouterr().err
    assert bad.name in err and "not aligned" in err
    done = sorted(out.glob("*.png"))
    assert [p.stem for p in done] == sorted(names[:2])
    for path in done:  # complete, decodable files only
        assert read_raw(path).shape == read_raw(data / "vi" / path.name).shape[:2]
    assert fuse("--teacher", "mean", "--data", data, "--out", out, "--resume", "--skip-bad") == 0
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(names[:2] + names[3:])
    assert json.loads((out / "manifest.json").read_text())["skipped"] == [names[2]]


def test_truncated_image_and_missing_inputs_are_clear_errors(small_dataset, tmp_path, capsys):
    data, names = small_dataset
    victim = data / "vi" / f"{names[0]}.png"
    victim.write_bytes(victim.read_bytes()[:200])
    assert fuse("--teacher", "mean", "--data", data, "--out", tmp_path / "o") == 2
    assert victim.name in capsys.readouterr().err
    assert fuse("--teacher", "mean", "--data", tmp_path / "nowhere") == 2
    assert "not found" in capsys.readouterr().err
    assert fuse("--teacher", "nonesuch", "--data", data) == 2
    assert "unknown" in capsys.readouterr().err
    assert fuse("--teacher", "mean", "--data", data, "--shard", "3/2") == 2
