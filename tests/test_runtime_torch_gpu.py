"""`--backend torch-gpu` (runtime/backends/torch_fast.py): on this CPU the same code path as on a GPU (fp32, eager)
must give today's torch backend's output, through the model interface and through the whole frame path (uint8 in,
resize, colour split/merge, uint8 out) of the pipeline, on real RoadScene pairs with the shipped student. The CUDA
tests (fp16, CUDA graphs) run only where there is a GPU."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from helpers import requires_gpu  # noqa: E402
from runtime.backends import TorchBackend, create_backend  # noqa: E402
from runtime.backends.torch_fast import GraphRunner, TorchGpuBackend  # noqa: E402
from runtime.cli import main as fusion  # noqa: E402
from runtime.imageio import discover_pairs, read_pair, read_raw  # noqa: E402
from runtime.pipeline import FusionPipeline  # noqa: E402


@pytest.fixture(scope="module")
def raw_pairs(roadscene, test_names):
    """Raw (ir, vis) frames as files hold them (uint8; some IR stored as 3-channel JPEG), of different sizes."""
    return [(read_raw(p.ir), read_raw(p.vis)) for p in discover_pairs(roadscene, names=test_names[:3])]


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_cpu_fallback_is_fp32_eager_and_infers_like_the_torch_backend(roadscene, test_names):
    fast = create_backend("default", "torch-gpu", device="cpu")
    assert isinstance(fast, TorchGpuBackend) and not fast.half and not fast.graphs
    assert "fp32" in fast.provider and "CUDA graphs" not in fast.provider
    ir, vis = read_pair(discover_pairs(roadscene, names=test_names[:1])[0])
    from runtime.color import luminance
    ir_in, vis_in = ir[None, None].astype(np.float32), luminance(vis)[None, None].astype(np.float32)
    reference = TorchBackend("runtime/models/default", device="cpu").infer(ir_in, vis_in)
    np.testing.assert_allclose(fast.infer(ir_in, vis_in), reference, atol=1e-6)


@pytest.mark.parametrize("imgsz", ["native", "auto"])
def test_frame_path_matches_the_pipeline_with_the_torch_backend(raw_pairs, imgsz):
    """Whole frames: native size (no resize) and the default 640-wide model size (shrink or enlarge, chroma from the
    full-size VIS). Within 0.75 levels of 255 on average and a few levels nearly everywhere (resizes of uint8 vs float
    frames, OpenCV's 3-digit YCrCb coefficients vs exact BT.601). The tail allows for the default model keeping the
    detail of both sources (band gains up to 1.1 on each, and band weights that follow the sources' energy shares,
    which move fastest at the strong edges where the two resamplers differ most): measured on these frames, at most
    12 of ~570k values more than 5 levels apart, the largest 11.6 (the default of the morning, without detail bands:
    9 values, 9.6)."""
    slow = FusionPipeline(backend=TorchBackend("runtime/models/default", device="cpu"), imgsz=imgsz, verbose=False)
    fast = FusionPipeline(backend=TorchGpuBackend("runtime/models/default", device="cpu"), imgsz=imgsz,
                          verbose=False)
    for ir, vis in raw_pairs:
        a, b = slow.fuse(ir, vis), fast.fuse(ir, vis)
        assert a.shape == b.shape and a.shape[2] == 3
        difference = np.abs(a - b) * 255
        tail = int((difference > 5).sum())
        assert difference.mean() < 0.75 and tail <= 40 and difference.max() <= 16, (difference.mean(), tail,
                                                                                     difference.max())


def test_fusion_run_folder_mode_with_torch_gpu(tmp_path, roadscene, test_names):
    import shutil
    for sub in ("ir", "vi"):
        (tmp_path / "data" / sub).mkdir(parents=True)
        for name in test_names[:2]:
            shutil.copy(next((roadscene / sub).glob(f"{name}.*")), tmp_path / "data" / sub)
    outputs = {}
    for backend in ("torch", "torch-gpu"):
        out = tmp_path / backend
        assert fusion(["run", "--ir", str(tmp_path / "data" / "ir"), "--vis", str(tmp_path / "data" / "vi"),
                       "--output", str(out), "--backend", backend, "--device", "cpu", "-q"]) == 0
        outputs[backend] = {p.stem: read_raw(p).astype(int) for p in out.glob("*.png")}
    assert outputs["torch"].keys() == outputs["torch-gpu"].keys() == set(test_names[:2])
    for stem, image in outputs["torch"].items():
        assert np.abs(image - outputs["torch-gpu"][stem]).mean() < 0.75


def test_graph_runner_without_cuda_calls_through():
    calls = []
    runner = GraphRunner(lambda x: calls.append(x.shape) or x * 2, "cpu", graphs=True)
    assert not runner.graphs
    assert torch.equal(runner(torch.ones(2)), torch.full((2,), 2.0)) and runner.captured == 0 and len(calls) == 1


@requires_gpu
def test_cuda_fp16_graphs_match_fp32_and_capture_once_per_shape(raw_pairs, monkeypatch):
    import runtime.backends.torch_fast as torch_fast
    graph_runners = []

    class CountedRunner(GraphRunner):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if self.graphs:
                graph_runners.append(self)
    fast = TorchGpuBackend("runtime/models/default", device="cuda")
    exact = TorchGpuBackend("runtime/models/default", device="cuda", half=False, graphs=False)
    assert fast.half and fast.graphs
    monkeypatch.setattr(torch_fast, "GraphRunner", CountedRunner)   # counts the frame runners made from now on
    for ir, vis in raw_pairs:
        for size in ((480, 640), (1080, 1920)):
            a = fast.fuse_frames(ir, vis, size, size).astype(int)
            a_again = fast.fuse_frames(ir, vis, size, size).astype(int)
            b = exact.fuse_frames(ir, vis, size, size).astype(int)
            assert np.array_equal(a, a_again)
            assert np.abs(a - b).mean() < 1.0 and np.abs(a - b).max() <= 8
    assert len(graph_runners) == 2                                  # one per (model size, output size), reused
    ir = np.random.default_rng(0).random((1, 1, 480, 640), dtype=np.float32)
    np.testing.assert_allclose(fast.infer(ir, ir), exact.infer(ir, ir), atol=4e-3)


def test_auto_takes_torch_gpu_only_on_cuda_without_an_ort_gpu_provider(monkeypatch):
    """GPU presence faked: auto prefers torch-gpu to ONNX Runtime on the CPU, but not to an ORT GPU provider."""
    import runtime.backends as backends
    monkeypatch.setattr(backends, "cuda_gpu_present", lambda: True)
    monkeypatch.setattr(backends, "_torch_cuda", lambda: True)
    monkeypatch.setattr(backends, "_ort_gpu_provider", lambda: False)
    assert isinstance(create_backend("default", "auto", device="cpu"), TorchGpuBackend)
    monkeypatch.setattr(backends, "_ort_gpu_provider", lambda: True)
    assert create_backend("default", "auto", device="cpu").name == "onnxruntime"
    monkeypatch.setattr(backends, "cuda_gpu_present", lambda: False)
    monkeypatch.setattr(backends, "_ort_gpu_provider", lambda: False)
    assert create_backend("default", "auto", device="cpu").name == "onnxruntime"
