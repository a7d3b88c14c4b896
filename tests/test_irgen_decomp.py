"""Decomposition generator: pseudo-labels (and their cache), the physics-inspired fusion, training on real pairs."""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from runtime.color import luminance
from runtime.imageio import discover_pairs, read_pair
from teacher.irgen import pseudo_labels as pl

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from teacher.irgen.decomp import DecompConfig, DecompositionGenerator  # noqa: E402
from teacher.irgen.decomp_net import DecompositionNet, PhysicsFusion  # noqa: E402

TINY = dict(backbone_width=8, hidden_dim=16, embed_dim=16, full_res_channels=8)
TINY_OVERRIDES = [f"model.{k}={v}" for k, v in TINY.items()] + [
    "data.scale=0.25", "data.crop=48", "data.batch_size=4", "optim.lr=2e-3", "optim.warmup_steps=2",
    "labels.kmeans_samples_per_image=300", "train.log_every=5", "train.save_every=100"]


@pytest.fixture
def names_file(tmp_path, train_names):
    path = tmp_path / "names.txt"
    path.write_text("\n".join(train_names[:6]) + "\n")
    return path


@pytest.fixture(scope="module")
def real_pair(roadscene, train_names):
    ir, vis = read_pair(discover_pairs(data=roadscene, names=train_names[:1])[0])
    return ir[::2, ::2].copy(), vis[::2, ::2].copy()


def test_context_maps_describe_the_rgb(real_pair):
    _, rgb = real_pair
    maps = pl.context_maps(rgb)
    assert maps.shape == rgb.shape[:2] + (8,) and maps.dtype == np.float32
    assert 0 <= maps.min() and maps.max() <= 1
    np.testing.assert_allclose(maps[..., pl.CONTEXT_NAMES.index("brightness")], luminance(rgb), atol=1e-6)
    # a dark square on a bright wall is a shadow; the wall is not
    wall = np.full((64, 64, 3), 0.8, np.float32)
    wall[24:40, 24:40] = 0.2
    shadow = pl.context_maps(wall)[..., pl.CONTEXT_NAMES.index("shadow")]
    assert shadow[32, 32] > 0.9 and shadow[4, 4] < 0.1
    gradient = pl.context_maps(wall)[..., pl.CONTEXT_NAMES.index("gradient")]
    assert gradient[24, 32] > gradient[32, 32]  # the edge, not the flat inside


def test_intensity_is_the_per_image_normalised_ir(real_pair):
    ir, _ = real_pair
    intensity = pl.normalised_intensity(ir)
    assert np.percentile(intensity, 0.5) == 0 and np.percentile(intensity, 99.5) == 1
    # invariant to the camera's gain and offset
    np.testing.assert_allclose(pl.normalised_intensity(0.5 * ir + 0.2), intensity, atol=1e-5)


def test_quantised_material_bins():
    red = np.zeros((2, 2, 3), np.float32)
    red[..., 0] = 0.9
    blue = np.zeros((2, 2, 3), np.float32)
    blue[..., 2] = 0.9
    gray = np.full((2, 2, 3), 0.5, np.float32)
    labels = {name: int(pl.quantised_material(img)[0, 0]) for name, img in
              (("red", red), ("blue", blue), ("gray", gray))}
    assert len(set(labels.values())) == 3 and all(0 <= v < 32 for v in labels.values())


def test_kmeans_labels_are_global_and_cached(roadscene, train_names, tmp_path, monkeypatch):
    pairs = discover_pairs(data=roadscene, names=train_names[:4])
    images = []
    for pair in pairs:
        ir, vis = read_pair(pair)
        images.append((pair, vis[::4, ::4].copy(), ir[::4, ::4].copy()))
    config = pl.LabelConfig(kmeans_samples_per_image=400)
    labeler = pl.PseudoLabeler(config, classes=8, cache_dir=tmp_path, scale=0.25)
    labeler.prepare(images)
    assert labeler.centroids.shape == (8, 5)
    assert np.all(np.diff(labeler.centroids[:, -1]) >= 0)  # sorted by IR: class 0 is the coldest
    first = labeler(*images[0])
    assert first["material"].shape == images[0][2].shape and first["material"].max() < 8
    assert len(np.unique(first["material"])) > 2
    assert first["context"].shape == images[0][2].shape + (8,)
    # the mean normalised IR rises with the class id: the clusters carry thermal meaning across images
    means = []
    for k in range(8):
        values = np.concatenate([pl.normalised_intensity(ir)[labeler(p, rgb, ir)["material"] == k]
                                 for p, rgb, ir in images])
        if values.size > 200:
            means.append(values.mean())
    assert means[0] < means[-1]
    # second time: from the cache, without computing
    again = pl.PseudoLabeler(config, classes=8, cache_dir=tmp_path, scale=0.25)
    again.prepare(images)
    np.testing.assert_array_equal(again.centroids, labeler.centroids)
    monkeypatch.setattr(again, "compute", lambda *a: pytest.fail("labels were recomputed instead of cached"))
    cached = again(*images[0])
    np.testing.assert_array_equal(cached["material"], first["material"])


def test_physics_fusion_starts_as_a_t4_law_and_is_monotonic_in_t():
    fusion = PhysicsFusion(num_materials=4, context_channels=8)
    assert float(fusion.exponent.detach()) == pytest.approx(4.0, abs=1e-5)
    t = torch.linspace(0.05, 0.95, 10).view(1, 1, 1, 10)
    probs = torch.full((1, 4, 1, 10), 0.25)
    ir, emissivity, environment = fusion(t, probs, torch.rand(1, 8, 1, 10))
    assert ir.shape == t.shape and bool((ir.diff(dim=-1) > 0).all())
    assert 0 < float(emissivity.detach().min()) and float(emissivity.detach().max()) < 1
    ir.sum().backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in fusion.parameters())


def test_network_heads_and_round_trip(tmp_path):
    torch.manual_seed(0)
    model = DecompositionNet(DecompConfig(**TINY)).eval()
    rgb = np.random.default_rng(1).random((45, 67, 3)).astype(np.float32)
    with torch.no_grad():
        ir, maps = model(torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None], return_all=True)
    assert ir.shape == (1, 1, 45, 67)
    assert maps["material_logits"].shape == (1, 32, 45, 67) and maps["context"].shape == (1, 8, 45, 67)
    model.save_pretrained(tmp_path)
    generator = DecompositionGenerator.from_pretrained(tmp_path)
    np.testing.assert_allclose(generator.generate(rgb), ir[0, 0].numpy(), atol=1e-6)
    panel = generator.visualize(rgb, generator.generate(rgb))
    assert panel.dtype == np.uint8 and panel.shape[2] == 3
    assert set(generator.decompose(rgb)) == {"intensity", "material", "context", "emissivity", "environment",
                                             "reconstruction"}


def test_training_on_real_pairs_lowers_every_loss(roadscene, names_file, tmp_path):
    from teacher.irgen.data import PairedCrops, load_training_pairs
    from teacher.irgen.training import to_tensors
    args = argparse.Namespace(data=str(roadscene), names=str(names_file), config=None, out=str(tmp_path / "run"),
                              resume=False, device="cpu", seed=0, base=None, self_check=0,
                              overrides=TINY_OVERRIDES + ["train.steps=40"])
    cfg = DecompositionGenerator.load_train_config(args)
    data = PairedCrops(load_training_pairs(args.data, args.names), cfg.data,
                       extras=DecompositionGenerator.extras(cfg, args, tmp_path / "run"), progress=False)
    batch = to_tensors(data.batch(seed=999, step=0, batch_size=8), "cpu")

    def parts(model):
        model.train()
        with torch.no_grad():
            return DecompositionGenerator.compute_loss(model, batch, cfg)[1]

    torch.manual_seed(0)
    before = parts(DecompositionGenerator.build_model(cfg))
    assert DecompositionGenerator.train(args) == 0
    after = parts(DecompositionNet.from_pretrained(tmp_path / "run"))
    assert after["loss"] < 0.85 * before["loss"], (before, after)
    for key in ("intensity", "material", "context", "physics"):
        assert after[key] < before[key], (key, before[key], after[key])
    assert any((tmp_path / "run" / "pseudo_labels").rglob("*.npz"))
