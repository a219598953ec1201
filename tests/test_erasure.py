"""Causal erasure with LEACE: a planted model that uses one constituent and ignores another."""
import pytest
import torch
from torch import nn

import modprobe as mp
from modprobe.probes import erase, erased, erasure_effects
from modprobe.subroutine import Subroutine


class Reader(nn.Module):
    """``enc`` rotates the input (a linear code of every coordinate); the head reads sign(x0)
    (subroutine A, logits 0-1) and sign(x1) (subroutine B, logits 2-3) from it. Coordinate 2 is
    encoded just as linearly but never read."""

    def __init__(self, dim=12, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        q = torch.linalg.qr(torch.randn(dim, dim, generator=g))[0]
        self.enc, self.head = nn.Linear(dim, dim), nn.Linear(dim, 4)
        with torch.no_grad():
            self.enc.weight.copy_(q)
            self.enc.bias.zero_()
            self.head.weight.copy_(4 * torch.stack([-q[:, 0], q[:, 0], -q[:, 1], q[:, 1]]))
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(self.enc(x))


def _data(n, seed):
    x = torch.randn(n, 12, generator=torch.Generator().manual_seed(seed))
    return x, {c: (x[:, i] > 0).long() for i, c in enumerate("abc")}


class _Constituents:
    def __init__(self, n, seed):
        self.inputs, self.labels = _data(n, seed)


def _subroutines(n=300, seed=1):
    x, y = _data(n, seed)
    return {"A": Subroutine((x, y["a"]), readout=lambda out: out[:, :2]),
            "B": Subroutine((x, y["b"]), readout=lambda out: out[:, 2:])}


def test_erasing_a_used_constituent_hurts_its_subroutine_beyond_random_directions():
    model = Reader()
    report = erasure_effects(model, _subroutines(), _Constituents(600, 0), hooks=["enc"],
                             n_random=30, n_bootstrap=200, seed=0)
    rows = {(r["subroutine"], r["constituent"]): r for r in report.rows}
    used = rows["A", "a"]
    assert used["full"] > 0.95 and used["erased"] < 0.65 and used["rank"] == 1
    assert used["random_mean"] > 0.85 and used["ci_low"] > 0.2 and used["p_adjusted"] < 0.05
    for key in (("A", "b"), ("A", "c"), ("B", "a"), ("B", "c")):  # not read by that subroutine
        assert not rows[key]["used"] and rows[key]["effect"] < 0.03, key
    assert report.used("A") == [("a", "enc")] and report.used("B") == [("b", "enc")]


def test_erasure_removes_linear_information_and_leaves_the_model_bit_identical():
    model = Reader()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, labels = _data(600, 0)
    erasure = erase(model, "enc", x, labels["a"])
    hm = mp.wrap(model)
    with erased(hm, erasure):
        _, cache = hm.run_with_cache(x, names=["enc"])
    # after erasure no direction of enc's output separates the classes' means
    h = cache["enc"]
    gap = h[labels["a"] == 1].mean(0) - h[labels["a"] == 0].mean(0)
    assert gap.abs().max() < 1e-4
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.enc._forward_hooks  # the hook is gone
    _, clean = hm.run_with_cache(x, names=["enc"])
    assert torch.allclose(clean["enc"], model.enc(x))


def test_erasure_rejects_bad_input_before_work():
    model = Reader()
    with pytest.raises(ValueError, match="pooling"):
        erasure_effects(model, _subroutines(), _Constituents(50, 0), hooks=["enc"],
                        pooling="first")
    with pytest.raises(TypeError, match=".inputs and .labels"):
        erasure_effects(model, _subroutines(), {"a": 1}, hooks=["enc"])
    with pytest.raises(ValueError, match="unknown hook point"):
        erasure_effects(model, _subroutines(), _Constituents(50, 0), hooks=["encoder"])


def test_mean_pooled_erasure_through_a_bridge_hook_point_erases_the_pooled_code():
    """Fitted on mean-pooled activations and applied at every position of a TransformerLens
    hook point, the eraser leaves the pooled representation with equal class means."""
    bert = mp.scratch.transformer("bert", n_layers=1, d_model=16, n_heads=2, d_mlp=32,
                                  vocab_size=30, seed=0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 30, (120, 6), generator=g)
    y = torch.arange(120) % 2
    ids[:, 1] = 3 + y  # the label is a token
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    before = {k: v.clone() for k, v in bert.module.state_dict().items()}
    erasure = erase(bert, "blocks.0.hook_out", inputs, y)
    with erased(bert, erasure):
        _, cache = bert.run_with_cache(inputs, names=["blocks.0.hook_out"])
    pooled = cache["blocks.0.hook_out"].mean(1)
    assert (pooled[y == 1].mean(0) - pooled[y == 0].mean(0)).abs().max() < 1e-4
    _, clean = bert.run_with_cache(inputs, names=["blocks.0.hook_out"])
    raw = clean["blocks.0.hook_out"].mean(1)
    assert (raw[y == 1].mean(0) - raw[y == 0].mean(0)).abs().max() > 0.1
    assert all(torch.equal(before[k], v) for k, v in bert.module.state_dict().items())
