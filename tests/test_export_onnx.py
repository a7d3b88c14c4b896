"""ONNX export: names, shapes, metadata, simplification and the ONNX Runtime parity check, on real RoadScene pairs."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from distill.models import save_student  # noqa: E402
from export.config import ExportConfig, config_path  # noqa: E402
from export.onnx_export import (ParityError, check_parity, export_onnx, read_onnx_metadata,  # noqa: E402
                                static_input_size, weights_metadata)
from export.pairs import load_inputs, parse_imgsz, resize_cover_crop, spread  # noqa: E402
from runtime.cli import main as fusion_main  # noqa: E402
from runtime.config import load_config  # noqa: E402

from helpers import random_student  # noqa: E402

torch.set_num_threads(1)
SIZE = (64, 96)


@pytest.fixture(scope="module")
def student():
    return random_student()


@pytest.fixture(scope="module")
def train_inputs(roadscene):
    return load_inputs(roadscene, roadscene / "train.txt", 3, SIZE)


def test_imgsz_parsing_and_resize_crop(roadscene):
    assert parse_imgsz("480x640") == (480, 640)
    assert parse_imgsz("320") == (320, 320)
    assert parse_imgsz(None) is None
    with pytest.raises(Exception, match="HxW"):
        parse_imgsz("big")
    img = np.arange(300 * 500, dtype=np.float32).reshape(300, 500)
    out = resize_cover_crop(img, (64, 96))
    assert out.shape == (64, 96)
    assert spread(list("abcdefghij"), 3) == ["a", "e", "j"]
    assert spread(list("abc"), 10) == ["a", "b", "c"]


def test_inputs_are_real_pairs_from_the_requested_split(roadscene, train_names, test_names):
    inputs = load_inputs(roadscene, roadscene / "train.txt", 4, None)
    assert [i.name for i in inputs][0] == train_names[0]
    assert not {i.name for i in inputs} & set(test_names)
    for item in inputs:
        assert item.ir.dtype == np.float32 and item.ir.shape[:2] == (1, 1) and item.vis.shape == item.ir.shape
        assert 0.0 <= item.ir.min() and item.ir.max() <= 1.0 and item.ir.std() > 0.02  # a real frame, not a blank
    assert len({i.size for i in inputs}) > 1  # native sizes vary in RoadScene


def test_static_export_names_shapes_metadata_and_parity(tmp_path, student, train_inputs):
    out = tmp_path / "m.onnx"
    report = export_onnx(student, out, imgsz=SIZE, metadata={"training_config_hash": "cafe"},
                         check_pairs=train_inputs)
    assert out.is_file() and report["parity"]["passed"]
    assert report["parity"]["max_abs"] <= 1e-4 and report["parity"]["pairs"] == 3
    graph = onnx.load(str(out))
    assert graph.opset_import[0].version >= 17
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["ir", "vis"]
    assert [o.name for o in session.get_outputs()] == ["fused"]
    assert session.get_inputs()[0].shape == [1, 1, *SIZE]
    assert static_input_size(out) == SIZE
    meta = read_onnx_metadata(out)
    assert meta["colour_convention"] == "luminance BT.601 full range"
    assert meta["input_range"] == "[0, 1]" and meta["variant"] == "tiny-test"
    assert meta["training_config_hash"] == "cafe" and meta["dynamic"] == "false"
    # The check compares against PyTorch for real: recompute independently.
    item = train_inputs[1]
    expected = student(torch.from_numpy(item.ir), torch.from_numpy(item.vis)).detach().numpy()
    got = session.run(None, item.feeds())[0]
    assert np.abs(expected - got).max() <= 1e-4
    assert np.abs(expected - 0.5 * (item.ir + item.vis)).max() > 1e-3  # the model is not the trivial average


def test_dynamic_export_runs_native_sizes_and_batches(tmp_path, student, roadscene):
    out = tmp_path / "d.onnx"
    inputs = load_inputs(roadscene, roadscene / "train.txt", 2, None)
    report = export_onnx(student, out, imgsz=SIZE, dynamic=True, check_pairs=inputs)
    assert report["parity"]["pairs"] == 3  # two native sizes and one batch of two
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "N" and session.get_inputs()[0].shape[2:] == ["H", "W"]
    assert static_input_size(out) is None
    ir = np.random.default_rng(0).random((3, 1, 37, 71), dtype=np.float32)
    fused = session.run(None, {"ir": ir, "vis": ir[::-1].copy()})[0]
    assert fused.shape == (3, 1, 37, 71)


def test_input_size_is_read_from_the_ir_input(tmp_path):
    """The size is the `ir` input's wherever it stands in the graph (here after a `vis` of another size), and a model
    without an `ir` input is named as not a fusion model."""
    from onnx import TensorProto, helper
    from runtime.errors import FusionError

    def graph_with(inputs, path):
        values = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs]
        node = helper.make_node("Add", [inputs[0][0], inputs[1][0]], ["fused"])
        output = helper.make_tensor_value_info("fused", TensorProto.FLOAT, None)
        onnx.save(helper.make_model(helper.make_graph([node], "g", values, [output])), str(path))
        return path

    assert static_input_size(graph_with([("vis", [1, 1, 32, 48]), ("ir", [1, 1, 64, 96])], tmp_path / "a.onnx")) \
        == (64, 96)
    assert static_input_size(graph_with([("vis", [1, 1, 32, 48]), ("ir", [1, 1, "H", 96])], tmp_path / "b.onnx")) \
        is None
    with pytest.raises(FusionError, match="takes 'ir' and 'vis'"):
        static_input_size(graph_with([("a", [1, 1, 8, 8]), ("b", [1, 1, 8, 8])], tmp_path / "c.onnx"))


class ShapeDependent(torch.nn.Module):
    """Takes another path above a width the tracer never sees: the export is wrong at native sizes."""

    def forward(self, ir, vis):
        return ir * 0.75 + vis * 0.25 if int(ir.shape[-1]) <= SIZE[1] else ir * 0.25 + vis * 0.75


def test_parity_failure_gives_numbers_and_writes_nothing(tmp_path, roadscene):
    out = tmp_path / "bad.onnx"
    inputs = load_inputs(roadscene, roadscene / "train.txt", 2, None)
    with pytest.raises(ParityError, match=r"differs from PyTorch by up to [0-9.e-]+ .*tolerance"):
        export_onnx(ShapeDependent(), out, imgsz=SIZE, dynamic=True, check_pairs=inputs)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_check_parity_catches_other_weights(tmp_path, student, train_inputs):
    out = tmp_path / "m.onnx"
    export_onnx(student, out, imgsz=SIZE, check_pairs=train_inputs)
    with pytest.raises(ParityError):
        check_parity(out, random_student(seed=1), train_inputs)


def test_cli_exports_with_settings_json_and_fails_cleanly(tmp_path, roadscene, capsys):
    folder = save_student(random_student(), tmp_path / "student", metadata={"config_hash": "0123abcd"})
    assert weights_metadata(folder)["training_config_hash"] == "0123abcd"
    out = tmp_path / "out" / "model.onnx"
    code = fusion_main(["export", "--weights", str(folder), "--format", "onnx", "--dynamic", "--data",
                        str(roadscene), "--check-count", "2", "--out", str(out)])
    assert code == 0 and out.is_file()
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not the temporary file's private 0600
    settings = json.loads((tmp_path / "out" / "model.onnx.json").read_text())
    assert settings["settings"]["dynamic"] is True and settings["parity"]["max_abs"] <= 1e-4
    assert settings["metadata"]["training_config_hash"] == "0123abcd"
    assert read_onnx_metadata(out)["weights_sha256"] == settings["metadata"]["weights_sha256"]
    # the resolved config beside the output, named in the report, reads back as the command that made it
    assert settings["config"] == "model.onnx.config.yaml"
    assert load_config(ExportConfig, config_path(out)) == ExportConfig(
        weights=str(folder), format="onnx", precision="fp32", dynamic=True, data=str(roadscene), check_count=2,
        out=str(out))
    capsys.readouterr()
    assert fusion_main(["export", "--weights", str(tmp_path / "missing"), "--format", "onnx"]) == 2
    assert "student weights not found" in capsys.readouterr().err
    assert fusion_main(["export", "--weights", str(folder), "--format", "onnx", "--precision", "fp16"]) == 2
    assert fusion_main(["export", "--weights", str(folder), "--data", str(tmp_path / "nodata")]) == 2
    assert "real pairs" in capsys.readouterr().err


def test_rgb_student_exports_three_channel_vis(tmp_path, roadscene):
    model = random_student(vis_channels=3)
    inputs = load_inputs(roadscene, roadscene / "train.txt", 2, SIZE, vis_channels=3)
    assert inputs[0].vis.shape == (1, 3, *SIZE) and not np.allclose(inputs[0].vis[0, 0], inputs[0].vis[0, 2])
    out = tmp_path / "rgb.onnx"
    report = export_onnx(model, out, imgsz=SIZE, check_pairs=inputs)
    assert report["parity"]["max_abs"] <= 1e-4
    meta = read_onnx_metadata(out)
    assert meta["colour_convention"] == "RGB" and meta["vis_channels"] == "3"
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[1].shape == [1, 3, *SIZE] and session.get_outputs()[0].shape == [1, 3, *SIZE]


def test_reports_record_repository_relative_paths(tmp_path):
    from export.pairs import REPO_ROOT, shown_path
    assert shown_path(REPO_ROOT / "runtime" / "models" / "default") == "runtime/models/default"
    assert shown_path(REPO_ROOT.parent / "shared" / "data" / "roadscene") == "../shared/data/roadscene"
    assert shown_path(tmp_path / "m.onnx") == str(tmp_path / "m.onnx")


def _export_imports() -> dict[str, list[tuple[str, list[str]]]]:
    """Every import of an export module by an export module, at any depth (handlers import inside functions):
    {module: [(imported module, [names])]}."""
    import ast
    from export.pairs import REPO_ROOT
    found = {}
    for path in sorted((REPO_ROOT / "export").glob("*.py")):
        module = f"export.{path.stem}"
        edges = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("export"):
                if node.module == "export":  # from export import quantize
                    edges += [(f"export.{a.name}", []) for a in node.names]
                else:
                    edges.append((node.module, [a.name for a in node.names]))
            elif isinstance(node, ast.Import):
                edges += [(a.name, []) for a in node.names if a.name.startswith("export.")]
        found[module] = edges
    return found


def test_export_has_no_import_circle_and_lends_no_private_names():
    imports = _export_imports()
    assert "export.common" in imports and "export.cli" in imports
    private = [(m, target, n) for m, edges in imports.items() for target, names in edges for n in names
               if n.startswith("_") and target != m]
    assert not private, f"private names imported across modules: {private}"
    graph = {m: {t for t, _ in edges if t in imports and t != m} for m, edges in imports.items()}
    assert "export.cli" not in set().union(*graph.values()), "nothing imports the CLI module back"

    def cycle_from(start, node, seen):
        for nxt in graph[node]:
            if nxt == start:
                return [node, nxt]
            if nxt not in seen:
                seen.add(nxt)
                rest = cycle_from(start, nxt, seen)
                if rest:
                    return [node] + rest
        return None

    for module in graph:
        cycle = cycle_from(module, module, {module})
        assert cycle is None, f"import circle: {' -> '.join(cycle)}"
