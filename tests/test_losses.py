"""Losses: known values on known inputs (SSIM against scikit-image on a real image, Sobel on ramps, source terms),
the perceptual term's local-weights loading and its clear 'off' report, feature distillation, the L1 warm-up."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.losses import (FeatureDistillationLoss, FusionLoss, LossWeights, PerceptualLoss, gradient_loss,
                            gradient_magnitude, intensity_loss, l1, sobel, source_gradient_loss, ssim, ssim_loss)

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def real_crop(roadscene, train_names):
    from runtime.imageio import read_ir
    ir = read_ir(roadscene / "ir" / f"{train_names[0]}.jpg")
    return ir[:96, :128].copy()


def test_ssim_matches_scikit_image(real_crop):
    from skimage.metrics import structural_similarity
    rng = np.random.default_rng(0)
    noisy = np.clip(real_crop + rng.normal(0, 0.05, real_crop.shape), 0, 1).astype(np.float32)
    expected = structural_similarity(real_crop, noisy, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False, data_range=1.0)
    got = float(ssim(torch.from_numpy(real_crop)[None, None], torch.from_numpy(noisy)[None, None]))
    assert abs(got - expected) < 1e-4
    assert 0.2 < got < 0.95  # a real difference, not a degenerate case


def test_ssim_map_is_kornias_in_value_and_gradient(real_crop):
    """The moments filtered as one tensor give kornia.metrics.ssim's map (several channels, odd sizes) and the same
    gradient; the source term's one-pass form is the mean of its two SSIMs."""
    import kornia
    from distill.losses import source_ssim_loss, ssim_map
    rng = np.random.default_rng(1)
    base = torch.from_numpy(real_crop)[None, None]
    x = torch.cat([base, base.flip(-1)], dim=1)[..., :95, :121].contiguous().requires_grad_(True)
    y = (x.detach() + torch.from_numpy(rng.normal(0, 0.05, x.shape).astype(np.float32))).clamp(0, 1)
    ours = ssim_map(x, y)
    theirs = kornia.metrics.ssim(x, y, 11, max_val=1.0, padding="valid")
    assert ours.shape == theirs.shape == (1, 2, 85, 111)
    assert (ours - theirs).abs().max() < 3e-4      # float32: kornia filters separably, rounding differs (8e-5 seen)
    assert (ours - theirs).abs().mean() < 1e-5
    (grad_ours,) = torch.autograd.grad(ours.mean(), x)
    (grad_theirs,) = torch.autograd.grad(theirs.mean(), x)
    assert (grad_ours - grad_theirs).abs().max() < 1e-3 * grad_theirs.abs().max()
    fused, ir, vis = y[:, :1], base[..., :95, :121], base.flip(-1)[..., :95, :121]
    expected = 1 - 0.5 * (ssim(fused, ir) + ssim(fused, vis))
    assert float(source_ssim_loss(fused, ir, vis)) == pytest.approx(float(expected), abs=1e-6)


def test_ssim_loss_zero_for_identical_and_positive_otherwise(real_crop):
    x = torch.from_numpy(real_crop)[None, None]
    assert float(ssim_loss(x, x)) == pytest.approx(0.0, abs=1e-6)
    assert float(ssim_loss(x, 1 - x)) > 1.0  # anti-correlated: SSIM < 0


def test_sobel_of_a_ramp():
    a = 0.01
    ramp = (torch.arange(20, dtype=torch.float32) * a).repeat(12, 1)[None, None]   # (1, 1, 12, 20)
    g = sobel(ramp)
    assert g.shape == (1, 1, 2, 12, 20)
    assert torch.allclose(g[0, 0, 0, :, 1:-1], torch.full((12, 18), a), atol=1e-6)
    assert torch.allclose(g[0, 0, 0, :, 0], torch.full((12,), a / 2), atol=1e-6)   # replicated border
    assert torch.allclose(g[0, 0, 1], torch.zeros(12, 20), atol=1e-6)
    assert torch.allclose(gradient_magnitude(ramp)[..., 1:-1], torch.full((1, 1, 12, 18), a), atol=1e-5)


def test_gradient_loss_known_values():
    a, width = 0.02, 20
    ramp = (torch.arange(width, dtype=torch.float32) * a).repeat(10, 1)[None, None]
    # d/dx is a inside and a/2 on the two border columns, d/dy is 0; the loss averages both components
    expected = a * (width - 1) / width / 2
    assert float(gradient_loss(ramp, torch.zeros_like(ramp))) == pytest.approx(expected, rel=1e-5)
    # a constant offset changes L1 but not the gradients
    assert float(gradient_loss(ramp, ramp + 0.3)) == pytest.approx(0.0, abs=1e-7)
    assert float(l1(ramp, ramp + 0.3)) == pytest.approx(0.3, rel=1e-5)


def test_source_terms_known_values():
    torch.manual_seed(0)
    ir, vis = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    brighter = torch.maximum(ir, vis)
    assert float(intensity_loss(brighter, ir, vis)) == pytest.approx(0.0, abs=1e-7)
    assert float(intensity_loss(torch.zeros_like(ir), ir, vis)) == pytest.approx(float(brighter.mean()), rel=1e-6)
    flat = torch.full_like(vis, 0.5)
    # with a flat VIS, the stronger source gradient is IR's everywhere, so IR itself is the optimum
    assert float(source_gradient_loss(ir, ir, flat)) == pytest.approx(0.0, abs=1e-6)
    assert float(source_gradient_loss(flat, ir, flat)) == pytest.approx(float(gradient_magnitude(ir).mean()),
                                                                         rel=1e-4)


def _vgg_features_file(tmp_path):
    import torchvision
    torch.manual_seed(0)
    features = torchvision.models.vgg16(weights=None).features[:16]
    from safetensors.torch import save_file
    path = tmp_path / "vgg16_features.safetensors"
    save_file({f"features.{k}": v.contiguous() for k, v in features.state_dict().items()}, str(path))
    return path


def test_perceptual_loss_from_local_weights(tmp_path):
    loss = PerceptualLoss.from_path(_vgg_features_file(tmp_path))
    torch.manual_seed(1)
    x, y = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    assert float(loss(x, x)) == pytest.approx(0.0, abs=1e-7)
    assert float(loss(x, y)) > 0
    assert not any(p.requires_grad for p in loss.parameters())


def test_perceptual_loss_reports_when_weights_are_absent(tmp_path):
    messages = []
    assert PerceptualLoss.from_path(None, log=messages.append) is None
    assert PerceptualLoss.from_path(tmp_path / "vgg16.safetensors", log=messages.append) is None
    assert len(messages) == 2 and all(m.startswith("perceptual loss: off") for m in messages)
    assert "not found" in messages[1]


def test_feature_distillation():
    torch.manual_seed(0)
    loss = FeatureDistillationLoss([4, 8], [4, 6])
    with torch.no_grad():
        loss.adapters[0].weight.copy_(torch.eye(4)[:, :, None, None])
        loss.adapters[0].bias.zero_()
    student = [torch.rand(2, 4, 8, 8), torch.rand(2, 8, 4, 4)]
    same = float(_only_first(loss)(student[:1], [student[0] * 3 + 1]).detach())
    assert same == pytest.approx(0.0, abs=1e-6)  # normalised: scale and offset of the teacher do not matter
    value = loss(student, [torch.rand(2, 4, 16, 16), torch.rand(2, 6, 8, 8)])  # teacher maps at another size
    value.backward()
    assert float(value.detach()) > 0 and loss.adapters[1].weight.grad is not None


def _only_first(loss):
    first = FeatureDistillationLoss([4], [4])
    first.adapters[0] = loss.adapters[0]
    return first


def test_fusion_loss_warmup_and_weighting():
    torch.manual_seed(0)
    fused, teacher = torch.rand(2, 1, 24, 24), torch.rand(2, 1, 24, 24)
    ir, vis = torch.rand(2, 1, 24, 24), torch.rand(2, 1, 24, 24)
    weights = LossWeights(l1=1.0, ssim=1.0, gradient=0.5, perceptual=0.1, feature=0.5, intensity=0.2,
                          source_gradient=0.3, warmup_l1_steps=10)
    loss = FusionLoss(weights)  # no VGG weights, no teacher features: those terms are off
    total, terms = loss(fused, teacher, ir, vis, step=3)
    assert set(terms) == {"l1"}
    assert float(total) == pytest.approx(float(l1(fused, teacher)), rel=1e-6)
    total, terms = loss(fused, teacher, ir, vis, step=10)
    assert set(terms) == {"l1", "ssim", "gradient", "intensity", "source_gradient"}
    expected = (l1(fused, teacher) + ssim_loss(fused, teacher) + 0.5 * gradient_loss(fused, teacher)
                + 0.2 * intensity_loss(fused, ir, vis) + 0.3 * source_gradient_loss(fused, ir, vis))
    assert float(total) == pytest.approx(float(expected), rel=1e-5)


def test_fusion_loss_three_channel_source_terms_use_luminance():
    torch.manual_seed(0)
    fused, vis = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    ir = torch.rand(1, 1, 16, 16)
    loss = FusionLoss(LossWeights(l1=0, ssim=0, gradient=0, perceptual=0, feature=0, intensity=1.0))
    total, _ = loss(fused, fused, ir, vis)
    from runtime.color import luminance
    expected = intensity_loss(luminance(fused, 1)[:, None], ir, luminance(vis, 1)[:, None])
    assert float(total) == pytest.approx(float(expected), rel=1e-6)
