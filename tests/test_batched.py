"""Masks trained together equal masks trained alone; replayed prefixes equal recomputed ones;
early stopping never ends on an unfaithful mask."""
import dataclasses

import pytest
import torch
from torch import nn

import modprobe as mp
from modprobe._prefix import Prefix
from modprobe.pruning import MaskConfig, train_subnetworks
from modprobe.pruning.batched import fit_masks
from modprobe.pruning.layout import slots as layout


class Blocks(nn.Module):
    """Residual blocks in a ModuleList, like a transformer's."""

    def __init__(self, d=12, n=4):
        super().__init__()
        self.embed = nn.Linear(16, d)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(),
                                                  nn.Linear(2 * d, d)) for _ in range(n))
        self.head = nn.Linear(d, 2)

    def forward(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)


def _model_and_data(seed=0, n=384):
    torch.manual_seed(seed)
    model = Blocks().eval()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, 16, generator=g)
    y = (x[:, 0] * x[:, 1] + x[:, 2] > 0).long()
    with torch.no_grad():  # a few steps of training so the task is solvable by the model
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        for _ in range(150):
            with torch.enable_grad():
                loss = nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
            opt.step()
    return model, x, mp.Subroutine((x, y), batch_size=64)


UPPER = ["blocks.2.0.weight", "blocks.2.2.weight", "blocks.3.0.weight", "blocks.3.2.weight"]


def test_replayed_prefix_gives_bit_identical_outputs():
    model, x, _ = _model_and_data()
    hm = mp.wrap(model)
    x = x[:64]
    prefix = Prefix(hm, UPPER, x)
    assert [type(m).__name__ for m in prefix.modules] == ["Sequential", "Sequential"]
    weights = {n: w * 0.5 for n, w in hm.params(UPPER).items()}
    expected = hm.forward_with(weights, x)
    with prefix.replaying(prefix.record(x)):
        got = hm.forward_with(weights, x)
    assert torch.equal(got, expected)
    assert not hasattr(prefix.modules[0], "__dict__") or "forward" not in vars(prefix.modules[0])


def test_nothing_is_skipped_below_a_masked_first_block_or_in_training_mode():
    model, x, _ = _model_and_data()
    hm = mp.wrap(model)
    x = x[:8]
    assert not Prefix(hm, ["embed.weight", *UPPER], x)
    assert not Prefix(hm, ["blocks.0.0.weight"], x)
    model.train()
    assert not Prefix(hm, UPPER, x)


@pytest.mark.parametrize("method", ["continuous", "hard_concrete"])
def test_masks_trained_together_equal_masks_trained_alone(method):
    model, _, sub = _model_and_data()
    hm = mp.wrap(model)
    weights = hm.params(UPPER)
    slots = layout(hm, UPPER, "weight")
    base = MaskConfig(method=method, epochs=6, patience=1, stop_beta=2.0, seed=3,
                      lr=0.3 if method == "hard_concrete" else None)
    configs = [dataclasses.replace(base, l0_lambda=lam) for lam in (0.1, 1.0, 30.0)]
    labels = [f"λ={c.l0_lambda}" for c in configs]
    together = fit_masks(hm, sub, slots, weights, configs, labels, progress=False)
    alone = [fit_masks(hm, sub, slots, weights, [c], [label], progress=False)[0]
             for c, label in zip(configs, labels)]
    for a, b in zip(together, alone):
        assert torch.equal(a.units, b.units)
        assert torch.equal(a.masks.logits, b.masks.logits)
        assert a.history == b.history
    assert len({t.units.sum().item() for t in together}) > 1  # the settings differ


def test_a_grid_search_is_the_same_with_and_without_sharing():
    model, x, sub = _model_and_data()
    val = mp.Subroutine((x[:128], sub.targets()[:128]))
    config = MaskConfig(params=UPPER, l0_lambda=(0.3, 3.0), epochs=5)
    found = [train_subnetworks(model, {"A": sub}, dataclasses.replace(config, share_prefix=share),
                               validation={"A": val}, progress=False)["A"]
             for share in (True, False)]
    a, b = found
    assert a.selection == b.selection and a.history == b.history and a.metrics == b.metrics
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)
    assert all(torch.equal(a.necessary[n], b.necessary[n]) for n in a.necessary)


def test_early_stopping_never_ends_on_an_unfaithful_mask():
    model, _, sub = _model_and_data()
    hm = mp.wrap(model)
    weights = hm.params(UPPER)
    slots = layout(hm, UPPER, "weight")
    eager = MaskConfig(epochs=8, patience=1, stop_beta=1.0, stable_total=1.0)  # settled at once
    faithful, harsh = fit_masks(hm, sub, slots, weights,
                                [dataclasses.replace(eager, l0_lambda=0.01),
                                 dataclasses.replace(eager, l0_lambda=1e4)], ["mild", "harsh"],
                                progress=False)
    full = mp.subroutine.evaluate(hm, sub)
    # the mild penalty keeps a faithful mask: it stops at the first check
    assert len(faithful.history) < eager.epochs
    assert faithful.history[-1]["stop_check"] >= full - eager.tolerance
    # the harsh one prunes the task away: every check fails, so it trains to the end
    assert len(harsh.history) == eager.epochs
    checks = [h["stop_check"] for h in harsh.history if h["stop_check"] is not None]
    assert checks and all(c < full - eager.tolerance for c in checks)


@pytest.mark.filterwarnings("ignore:with n_random")
@pytest.mark.parametrize("strategy,vectorize", [("zero", False), ("random", False),
                                               ("zero", True)])
def test_ablation_scores_are_the_same_with_a_replayed_prefix(strategy, vectorize):
    model, x, sub = _model_and_data()
    subnet = train_subnetworks(model, {"A": sub}, MaskConfig(params=UPPER, l0_lambda=1.0,
                                                             epochs=4, necessity="none"),
                               progress=False)["A"]
    hm = mp.wrap(model)
    from modprobe.ablation._evaluate import Evaluator
    assert Evaluator(hm, {"A": sub}, UPPER, "zero").recorded  # the prefix is in use
    reports = [mp.ablation.run(model, {"A": subnet}, {"A": sub, "B": sub}, n_random=12, n_bootstrap=50,
                               strategy=strategy, reuse_prefix=reuse, vectorize=vectorize,
                               progress=False)
               for reuse in (True, False)]
    rows = [[{k: v for k, v in r.items()} for r in rep.rows] for rep in reports]
    assert rows[0] == rows[1]
    assert reports[0].controls == reports[1].controls
