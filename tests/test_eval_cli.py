"""`fusion eval` end to end on a folder of fusions of real RoadScene pairs."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from distill.metrics import METRIC_NAMES, fusion_metrics, read_gray_for_metrics
from runtime.cli import main as fusion_main
from runtime.color import merge_luminance, split_luminance
from runtime.imageio import read_vis, write_image

N_PAIRS = 3


@pytest.fixture()
def fused_folder(tmp_path, roadscene, test_names):
    """Sources for 3 test pairs (copied, .jpg) and their fusions: two gray PNG max-fusions, one colour PNG."""
    names = test_names[:N_PAIRS]
    for sub in ("ir", "vi"):
        (tmp_path / sub).mkdir()
        for name in names:
            shutil.copy(roadscene / sub / f"{name}.jpg", tmp_path / sub / f"{name}.jpg")
    fused_dir = tmp_path / "fused"
    fused_dir.mkdir()
    expected = {}
    for i, name in enumerate(names):
        ir = read_gray_for_metrics(tmp_path / "ir" / f"{name}.jpg")
        vis = read_gray_for_metrics(tmp_path / "vi" / f"{name}.jpg")
        fused = np.maximum(ir, vis)
        if i == N_PAIRS - 1:  # a colour fusion: the fused luminance with the visible chroma
            _, chroma = split_luminance(read_vis(tmp_path / "vi" / f"{name}.jpg"))
            write_image(fused_dir / f"{name}.png", merge_luminance(fused / 255.0, chroma))
            fused = read_gray_for_metrics(fused_dir / f"{name}.png")
        else:
            cv2.imwrite(str(fused_dir / f"{name}.png"), fused.astype(np.uint8))
        expected[name] = fusion_metrics(ir, vis, fused)
    return tmp_path, fused_dir, names, expected


def _run(argv, capsys):
    code = fusion_main(["eval"] + [str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_eval_prints_table_and_writes_json_and_csv(fused_folder, capsys):
    root, fused_dir, names, expected = fused_folder
    json_out, csv_out = root / "out" / "metrics.json", root / "out" / "metrics.csv"
    code, out, err = _run(["--ir", root / "ir", "--vis", root / "vi", "--fused", fused_dir, "--json", json_out,
                           "--csv", csv_out, "--per-image"], capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0] == "| image | " + " | ".join(METRIC_NAMES) + " |"
    assert [line.split("|")[1].strip() for line in lines[2:]] == names + [f"mean ({N_PAIRS} images)"]

    doc = json.loads(json_out.read_text())
    assert set(doc) == {"mean", "per_image", "count"} and doc["count"] == N_PAIRS
    assert list(doc["mean"]) == list(METRIC_NAMES)
    assert list(doc["per_image"]) == names
    for name in names:
        assert list(doc["per_image"][name]) == list(METRIC_NAMES)
        for metric in METRIC_NAMES:
            assert doc["per_image"][name][metric] == pytest.approx(expected[name][metric], rel=1e-12)
    for metric in METRIC_NAMES:
        assert doc["mean"][metric] == pytest.approx(np.mean([expected[n][metric] for n in names]), rel=1e-12)

    rows = list(csv.reader(csv_out.read_text().splitlines()))
    assert rows[0] == ["name"] + list(METRIC_NAMES)
    assert [r[0] for r in rows[1:]] == names + ["mean"]
    assert float(rows[1][1 + METRIC_NAMES.index("VIF")]) == doc["per_image"][names[0]]["VIF"]


def test_colour_fusion_is_scored_on_its_luminance(fused_folder):
    root, fused_dir, names, _ = fused_folder
    colour = cv2.imread(str(fused_dir / f"{names[-1]}.png"))
    assert not np.array_equal(colour[..., 0], colour[..., 2])  # really colour
    ir = read_gray_for_metrics(root / "ir" / f"{names[-1]}.jpg")
    vis = read_gray_for_metrics(root / "vi" / f"{names[-1]}.jpg")
    luminance = read_gray_for_metrics(fused_dir / f"{names[-1]}.png")
    # The colour round trip keeps the fused luminance within a grey level (chroma clipping aside).
    assert np.mean(np.abs(luminance - np.maximum(ir, vis)) <= 1) > 0.95


def test_mean_row_only_by_default_and_names_restrict(fused_folder, capsys):
    root, fused_dir, names, expected = fused_folder
    (root / "split.txt").write_text(f"{names[0]}.jpg\n{names[1]}\n")
    # --names is looked up inside --data when it is not a path on its own
    code, out, err = _run(["--data", root, "--fused", fused_dir, "--names", "split.txt", "--json", root / "m.json"],
                          capsys)
    assert code == 0, err
    assert len(out.strip().splitlines()) == 3 and "mean (2 images)" in out
    doc = json.loads((root / "m.json").read_text())
    assert doc["count"] == 2 and list(doc["per_image"]) == names[:2]


def test_missing_fused_image_is_one_clear_error(fused_folder, capsys):
    root, fused_dir, names, _ = fused_folder
    (fused_dir / f"{names[1]}.png").unlink()
    json_out = root / "metrics.json"
    code, out, err = _run(["--ir", root / "ir", "--vis", root / "vi", "--fused", fused_dir, "--json", json_out],
                          capsys)
    assert code == 2
    assert names[1] in err and "missing" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not json_out.exists() and out == ""


def test_size_mismatch_is_one_clear_error(fused_folder, capsys):
    root, fused_dir, names, _ = fused_folder
    small = cv2.imread(str(fused_dir / f"{names[0]}.png"))[:-5]
    cv2.imwrite(str(fused_dir / f"{names[0]}.png"), small)
    code, _, err = _run(["--ir", root / "ir", "--vis", root / "vi", "--fused", fused_dir], capsys)
    assert code == 2 and names[0] in err and "size" in err and len(err.strip().splitlines()) == 1


def test_bad_usage_exits_2(fused_folder, capsys):
    root, fused_dir, _, _ = fused_folder
    assert _run(["--ir", root / "ir", "--fused", fused_dir], capsys)[0] == 2  # no --vis
    assert _run(["--data", root, "--fused", root / "nowhere"], capsys)[0] == 2
    code, _, err = _run(["--data", root, "--fused", fused_dir, "--lpips-backbone", root / "alexnet.pth"], capsys)
    assert code == 2 and "--lpips-backbone" in err


def test_eval_stays_light_without_torch():
    """`fusion eval` must work on the base install: importing it pulls in neither torch nor scipy."""
    probe = ("import sys, distill.eval_cli, distill.metrics; "
             "bad = [m for m in ('torch', 'scipy', 'lpips', 'skimage') if m in sys.modules]; "
             "assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_lpips_column_from_a_local_backbone(fused_folder, capsys):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    pytest.importorskip("lpips")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    root, fused_dir, names, expected = fused_folder
    backbone = root / "alexnet-owt-7be5be79.pth"
    state = torchvision.models.alexnet(weights=None).state_dict()
    torch.save({k: v for k, v in state.items() if k.startswith("features.")}, backbone)
    (root / "two.txt").write_text("\n".join(names[:2]))
    code, out, err = _run(["--ir", root / "ir", "--vis", root / "vi", "--fused", fused_dir, "--names",
                           root / "two.txt", "--lpips-backbone", backbone, "--json", root / "m.json"], capsys)
    assert code == 0, err
    assert out.splitlines()[0].endswith("| MSE | LPIPS |")
    doc = json.loads((root / "m.json").read_text())
    assert list(doc["mean"]) == list(METRIC_NAMES) + ["LPIPS"]
    assert all(0 < row["LPIPS"] < 10 for row in doc["per_image"].values())
    assert doc["per_image"][names[0]]["VIF"] == pytest.approx(expected[names[0]]["VIF"], rel=1e-12)
