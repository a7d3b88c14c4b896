import shutil

import cv2
import numpy as np
import pytest

from runtime.errors import FusionError
from runtime.imageio import (agc_16bit, discover_pairs, read_ir, read_pair, read_raw, read_vis, write_image,
                             write_json)


def test_discover_roadscene_splits(roadscene, test_names):
    pairs = discover_pairs(roadscene, names=roadscene / "test.txt")
    assert [p.name for p in pairs] == test_names
    assert len(pairs) == 50
    assert all(p.ir.parent.name == "ir" and p.vis.parent.name == "vi" and p.target is None for p in pairs)
    train = discover_pairs(roadscene, names=roadscene / "train.txt")
    assert len(train) == 171 and not {p.name for p in train} & set(test_names)


def test_read_real_pair(roadscene, test_names):
    pair = discover_pairs(roadscene, names=test_names[:1])[0]
    ir, vis = read_pair(pair)
    assert ir.dtype == np.float32 and ir.ndim == 2 and 0.0 <= ir.min() and ir.max() <= 1.0
    assert vis.shape == ir.shape + (3,)
    raw = cv2.imread(str(pair.vis))  # BGR
    assert np.allclose(vis[..., 0] * 255, raw[..., 2], atol=0.5)  # stored RGB


def _copy_pairs(roadscene, names, tmp_path):
    for sub in ("ir", "vi"):
        (tmp_path / sub).mkdir()
        for n in names:
            shutil.copy(roadscene / sub / f"{n}.jpg", tmp_path / sub / f"{n}.jpg")
    return tmp_path


def test_unmatched_and_corrupt_pairs_are_listed(roadscene, test_names, tmp_path):
    data = _copy_pairs(roadscene, test_names[:4], tmp_path)
    (data / "vi" / f"{test_names[0]}.jpg").unlink()
    blob = (data / "ir" / f"{test_names[1]}.jpg").read_bytes()
    (data / "ir" / f"{test_names[1]}.jpg").write_bytes(blob[: len(blob) // 2])
    small = cv2.imread(str(data / "vi" / f"{test_names[2]}.jpg"))[:100, :100]
    cv2.imwrite(str(data / "vi" / f"{test_names[2]}.jpg"), small)
    with pytest.raises(FusionError) as err:
        discover_pairs(data, validate=True)
    message = str(err.value)
    assert "3 bad or unmatched" in message
    assert test_names[0] in message and "no VIS" in message
    assert test_names[1] in message and "truncated" in message
    assert test_names[2] in message and "not aligned" in message
    kept = discover_pairs(data, validate=True, skip_bad=True)
    assert [p.name for p in kept] == [test_names[3]]


def test_16bit_ir_agc_uses_robust_range(tmp_path):
    rng = np.random.default_rng(0)
    frame = (7000 + 400 * rng.random((120, 160))).astype(np.uint16)
    frame[0, 0] = 65535  # a dead pixel must not set the range
    path = tmp_path / "boson.png"
    cv2.imwrite(str(path), frame)
    assert read_raw(path).dtype == np.uint16
    ir = read_ir(path)
    assert ir.dtype == np.float32 and ir.shape == (120, 160)
    assert np.percentile(ir, 50) == pytest.approx(0.5, abs=0.05)
    assert np.percentile(ir, 99.5) == 1.0 and np.percentile(ir, 0.5) == 0.0
    assert agc_16bit(np.full((8, 8), 9000, np.uint16)).tolist() == np.full((8, 8), 0.5).tolist()
    assert read_ir(path, clahe=True).std() > 0.1


def test_missing_and_non_image_files(tmp_path):
    with pytest.raises(FusionError, match="not found"):
        read_vis(tmp_path / "nope.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image IEND")
    with pytest.raises(FusionError, match="cannot decode"):
        read_vis(bad)
    with pytest.raises(FusionError, match="no an IR folder|no an IR|IR folder"):
        discover_pairs(tmp_path)


def test_atomic_writes_leave_no_partial_files(tmp_path):
    img = np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(48, 64)
    out = write_image(tmp_path / "a" / "fused.png", img)
    back = read_raw(out)
    assert back.dtype == np.uint8 and abs(int(back[-1, -1]) - 255) <= 0 and back[0, 0] == 0
    rgb = np.zeros((8, 8, 3), np.float32)
    rgb[..., 0] = 1.0
    write_image(tmp_path / "red.png", rgb)
    assert read_raw(tmp_path / "red.png")[0, 0].tolist() == [255, 0, 0]
    with pytest.raises(FusionError):
        write_image(tmp_path / "x.unknownext", img)
    write_json(tmp_path / "m.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "m.json", "red.png"]
