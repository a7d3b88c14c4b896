"""teacher.training_utils: the checkpoint folder, EMA and learning-rate factor every training loop shares."""
from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")

from teacher.training_utils import (ModelEMA, find_checkpoint, save_checkpoint,  # noqa: E402
                                    set_learning_rate, warmup_cosine)


def _trained(seed: int = 0):
    """A small model and the AdamW that took three steps on it (so the optimizer holds real state)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(16, 4)).pow(2).mean().backward()
        optimizer.step()
    return model, optimizer


def _same_optimizer_state(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for index, entry in sa["state"].items():
        for key, value in entry.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(sb["state"][index][key])), (index, key)


def test_checkpoint_round_trips_weights_optimizer_and_state_without_pickles(tmp_path):
    model, optimizer = _trained()
    folder = save_checkpoint(tmp_path / "last", 3, tensors={"model": model.state_dict()}, optimizer=optimizer,
                             state={"best_score": -math.inf, "note": "x"})
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors", "optimizer.safetensors", "state.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]  # no .partial / .old left behind

    fresh_model, fresh_optimizer = _trained(seed=1)
    found = find_checkpoint(tmp_path / "last")
    assert found.step == 3 and found.state["best_score"] == -math.inf and found.state["note"] == "x"
    fresh_model.load_state_dict(found.tensors("model"))
    found.restore_optimizer(fresh_optimizer)
    _same_optimizer_state(optimizer, fresh_optimizer)
    for key, value in model.state_dict().items():
        assert torch.equal(value, fresh_model.state_dict()[key]), key


def test_a_second_save_replaces_the_first_and_a_crash_mid_swap_falls_back_to_old(tmp_path):
    model, optimizer = _trained()
    save_checkpoint(tmp_path / "ckpt", 1, tensors={"model": model.state_dict()})
    save_checkpoint(tmp_path / "ckpt", 2, tensors={"model": model.state_dict()},
                    write_model=lambda path: (path / "extra.txt").write_text("made by the loop"))
    assert find_checkpoint(tmp_path / "ckpt").step == 2
    assert (tmp_path / "ckpt" / "extra.txt").read_text() == "made by the loop"
    # the moment between "ckpt -> ckpt.old" and "ckpt.partial -> ckpt": only the old one is complete
    (tmp_path / "ckpt").rename(tmp_path / "ckpt.old")
    (tmp_path / "ckpt.partial").mkdir()
    found = find_checkpoint(tmp_path / "ckpt")
    assert found.folder == tmp_path / "ckpt.old" and found.step == 2
    assert find_checkpoint(tmp_path / "nothing") is None


def test_older_checkpoint_layouts_still_resume(tmp_path):
    """distill's trainer_state.json, the irgen/diffusion `optimizer_scalars` layout and the prior's optimizer.pt."""
    from safetensors.torch import save_file
    model, optimizer = _trained()
    state = optimizer.state_dict()

    distill = tmp_path / "distill"
    save_checkpoint(distill, 7, optimizer=optimizer)
    (distill / "state.json").rename(distill / "trainer_state.json")
    scalars_layout = tmp_path / "irgen"
    scalars_layout.mkdir()
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if value.ndim > 0:
                tensors[f"{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = float(value)
    save_file(tensors, str(scalars_layout / "optimizer.safetensors"))
    (scalars_layout / "state.json").write_text(json.dumps({"step": 7, "param_groups": state["param_groups"],
                                                           "optimizer_scalars": scalars}))
    prior = tmp_path / "prior"
    prior.mkdir()
    torch.save(state, str(prior / "optimizer.pt"))  # what teacher/prior.py wrote before: read as tensors only
    (prior / "state.json").write_text(json.dumps({"step": 7}))

    for folder in (distill, scalars_layout, prior):
        found = find_checkpoint(folder)
        assert found is not None and found.step == 7, folder
        _, restored = _trained(seed=1)
        found.restore_optimizer(restored)
        _same_optimizer_state(optimizer, restored)


def test_warmup_cosine_warms_up_linearly_then_decays_to_the_floor():
    factor = warmup_cosine(4, 104, 0.1)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(4) == 1.0
    assert factor(54) == pytest.approx(0.55)
    assert factor(104) == pytest.approx(0.1) and factor(10_000) == pytest.approx(0.1)
    constant = warmup_cosine(2, 100, 1.0)  # warm-up then constant (LoRA fine-tuning)
    assert [constant(s) for s in (0, 1, 2, 50, 99)] == [0.5, 1.0, 1.0, 1.0, 1.0]
    assert warmup_cosine(0, 10, 1.0)(0) == 1.0

    optimizer = torch.optim.SGD([{"params": [torch.zeros(1)]}, {"params": [torch.zeros(1)], "lr_scale": 0.1}], lr=1)
    set_learning_rate(optimizer, 2e-3, 0.5)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-3, 1e-4])


def test_ema_warms_up_its_decay_and_copies_integer_buffers():
    model = torch.nn.BatchNorm1d(2)
    ema = ModelEMA(model, decay=0.99)
    with torch.no_grad():
        model.weight.fill_(3.0)
    model.num_batches_tracked.fill_(5)
    ema.update(model)
    decay = 2 / 11  # update 1: min(0.99, (1 + 1) / (10 + 1))
    assert torch.allclose(ema.module.weight, torch.full((2,), decay * 1.0 + (1 - decay) * 3.0))
    assert int(ema.module.num_batches_tracked) == 5 and ema.updates == 1
    assert not any(p.requires_grad for p in ema.module.parameters())
