"""Every model shipped in runtime/models/ (the default, the earlier defaults `nano`, `nano2-affine` and `nano2-bands`,
the v2 student `nano2`, the zero-weight `rule`): loadable by name everywhere (`load_student`, `--model`), its ONNX the
export of its safetensors, dynamic in H and W."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from distill.models import default_model_dir, load_student, resolve_weights  # noqa: E402
from runtime.backends import locate_model  # noqa: E402
from runtime.errors import FusionError  # noqa: E402

SHIPPED = ("default", "nano", "nano2", "nano2-affine", "nano2-bands", "rule")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_loads_by_name_and_its_onnx_is_its_export(name, roadscene, test_names, shipped_model):
    from runtime.color import split_luminance
    from runtime.imageio import discover_pairs, read_pair
    folder = resolve_weights(name)
    assert folder.parent == default_model_dir().parent
    files = locate_model(name)
    assert files.onnx == folder / "model.onnx" and files.student == folder
    model = load_student(name)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(files.onnx), options, providers=["CPUExecutionProvider"])
    ir, vis = read_pair(discover_pairs(roadscene, names=test_names[:1])[0])
    vis_y = np.ascontiguousarray(split_luminance(vis)[0])
    for crop in (np.s_[:, :], np.s_[11:48, 5:58]):
        ir_t = torch.from_numpy(np.ascontiguousarray(ir[crop]))[None, None]
        vis_t = torch.from_numpy(np.ascontiguousarray(vis_y[crop]))[None, None]
        with torch.no_grad():
            expected = model(ir_t, vis_t).numpy()
        got = session.run(["fused"], {"ir": ir_t.numpy(), "vis": vis_t.numpy()})[0]
        assert got.shape == expected.shape == (1, 1, *ir[crop].shape)
        np.testing.assert_allclose(got, expected, atol=1e-4)
        # a trained model is not the plain average it starts as
        assert float(np.abs(expected - (ir_t + vis_t).numpy() / 2).mean()) > 1e-3


def test_a_path_wins_over_a_shipped_name_and_unknown_names_fail(tmp_path, monkeypatch):
    from distill.models import create_student, save_student
    monkeypatch.chdir(tmp_path)
    save_student(create_student("tiny-test"), tmp_path / "nano2")     # a local folder of the same name
    assert resolve_weights("nano2").resolve() == tmp_path / "nano2"
    assert locate_model("nano2").student.resolve() == tmp_path / "nano2"
    with pytest.raises(FusionError, match="not found"):
        resolve_weights("no-such-model")
    with pytest.raises(FusionError, match="model not found"):
        locate_model("no-such-model")
