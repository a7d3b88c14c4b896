"""EM fusion and the baselines on real RoadScene pairs: convergence, what the fused image keeps, batching."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from runtime.color import luminance  # noqa: E402
from runtime.imageio import discover_pairs, read_pair  # noqa: E402
from teacher.baselines import LaplacianPyramidFusion, MaxFusion, MeanFusion  # noqa: E402
from teacher.em import EMConfig, EMFusion, EMTeacher, em_step, gradient, gradient_adjoint  # noqa: E402

torch.set_num_threads(1)


def _pair(roadscene, name, step=1):
    pair = discover_pairs(roadscene, names=[name])[0]
    ir, vis = read_pair(pair)
    return ir[::step, ::step].copy(), luminance(vis)[::step, ::step].copy()


def _t(img):
    return torch.from_numpy(np.ascontiguousarray(img))[None, None]


def _grad_mag(img):
    gy, gx = np.gradient(img.astype(np.float64))
    return np.hypot(gx, gy)


def test_gradient_adjoint_is_the_transpose():
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(2, 1, 7, 9, generator=gen, dtype=torch.float64)
    u = torch.randn(2, 2, 7, 9, generator=gen, dtype=torch.float64)
    assert torch.allclose((gradient(h) * u).sum(), (h * gradient_adjoint(u)).sum())


def test_em_objective_decreases_and_reaches_a_fixed_point(roadscene, train_names):
    ir, vis = _pair(roadscene, train_names[0], step=3)
    config = EMConfig()
    result = EMFusion(config).run(_t(ir), _t(vis), track_objective=True)
    values = np.array([float(v[0]) for v in result.objective])
    assert bool(result.converged[0]) and result.iterations < config.max_iter
    # Generalised EM: the negative log posterior never goes up (float32 round-off aside) and drops overall.
    assert np.all(np.diff(values) <= 1e-5 * np.abs(values[:-1]) + 1e-6), np.diff(values).max()
    assert values[-1] < values[0] - 0.5
    # Not the degenerate optimum of a mis-specified model (a copy of one source).
    for source in (ir, vis):
        assert float((result.fused - _t(source)).abs().mean()) > 0.01


def test_em_fixed_point_is_stable_under_more_iterations(roadscene, train_names):
    ir, vis = _pair(roadscene, train_names[1], step=3)
    short = EMFusion(EMConfig()).run(_t(ir), _t(vis))
    longer = EMFusion(EMConfig(tol=1e-6, max_iter=short.iterations + 60)).run(_t(ir), _t(vis))
    # 60 more iterations past convergence barely move the image (< 1 grey level on average).
    assert float((short.fused - longer.fused).abs().mean()) < 1.0 / 255


def test_em_keeps_ir_hot_targets_and_visible_texture(roadscene, train_names):
    teacher = EMTeacher()
    for name in train_names[2:5]:
        ir, vis = _pair(roadscene, name, step=2)
        fused = teacher.fuse(ir, vis)
        assert fused.shape == ir.shape and fused.dtype == np.float32
        assert 0.0 <= fused.min() and fused.max() <= 1.0
        # Hot IR targets (top 1% of IR) stay hot: most of the IR-over-VIS excess survives, far more than the
        # half that averaging keeps.
        hot = ir >= np.percentile(ir, 99)
        kept = (fused[hot].mean() - vis[hot].mean()) / (ir[hot].mean() - vis[hot].mean())
        assert kept > 0.65, (name, kept)
        # Visible texture comes in: the fused gradients follow the visible gradients more than the IR's do.
        g_fused, g_ir, g_vis = _grad_mag(fused), _grad_mag(ir), _grad_mag(vis)
        follow_vis = np.corrcoef(g_fused.ravel(), g_vis.ravel())[0, 1]
        ir_alone = np.corrcoef(g_ir.ravel(), g_vis.ravel())[0, 1]
        assert follow_vis > ir_alone + 0.03, (name, follow_vis, ir_alone)
        # And more contrast than the mean of the two (the baseline every fusion must beat).
        assert fused.std() > (0.5 * (ir + vis)).std() * 1.2


def test_em_batch_matches_single_pairs(roadscene, train_names):
    a = _pair(roadscene, train_names[5], step=4)
    b = _pair(roadscene, train_names[6], step=4)
    h = min(a[0].shape[0], b[0].shape[0])
    w = min(a[0].shape[1], b[0].shape[1])
    a = [x[:h, :w] for x in a]
    b = [x[:h, :w] for x in b]
    teacher = EMTeacher()
    batch = teacher.fuse_batch(torch.stack([_t(a[0])[0], _t(b[0])[0]]), torch.stack([_t(a[1])[0], _t(b[1])[0]]))
    single = teacher.fuse(*a)
    assert batch.shape == (2, 1, h, w)
    # Each image keeps its own hyperparameters and stopping rule, so batching changes it by at most the tolerance.
    assert np.abs(batch[0, 0].numpy() - single).max() < 5e-3


def test_em_handles_small_and_odd_sizes():
    gen = np.random.default_rng(0)
    ir = gen.random((5, 7)).astype(np.float32)
    vis = gen.random((5, 7)).astype(np.float32)
    fused = EMTeacher().fuse(ir, vis)
    assert fused.shape == (5, 7) and np.isfinite(fused).all()


def test_baselines_on_a_real_pair(roadscene, train_names):
    ir, vis = _pair(roadscene, train_names[0], step=2)
    np.testing.assert_allclose(MeanFusion().fuse(ir, vis), (ir + vis) / 2, atol=1e-6)
    np.testing.assert_allclose(MaxFusion().fuse(ir, vis), np.maximum(ir, vis), atol=1e-6)
    lap = LaplacianPyramidFusion()
    # The pyramid reconstructs exactly when both inputs agree, at odd sizes too.
    odd = ir[:97, :131]
    np.testing.assert_allclose(lap.fuse(odd, odd), odd, atol=1e-5)
    fused = lap.fuse(ir, vis)
    # Max-abs detail selection keeps the stronger edges of both: more gradient energy than either average.
    assert _grad_mag(fused).mean() > _grad_mag((ir + vis) / 2).mean() * 1.2
    assert 0.0 <= fused.min() and fused.max() <= 1.0


def test_fuse_rejects_mismatched_arrays():
    from runtime.errors import FusionError
    with pytest.raises(FusionError, match="differ in size"):
        MeanFusion().fuse(np.zeros((4, 5), np.float32), np.zeros((5, 4), np.float32))
    with pytest.raises(FusionError, match="gray"):
        MeanFusion().fuse(np.zeros((4, 5), np.float32), np.zeros((4, 5, 3), np.float32))
