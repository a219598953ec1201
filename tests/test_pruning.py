"""Subnetwork discovery: masks land in planted modules, stay faithful, and leave the model intact."""
import dataclasses
import math

import pytest
import torch
from torch import nn

import modprobe as mp
from modprobe.pruning import MaskConfig, Subnetwork, train_subnetwork, train_subnetworks
from modprobe.pruning import methods
from modprobe.pruning.layout import Slot, slots as layout
from modprobe.pruning.masks import MaskSet


def _branch(d, h):
    return nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 2))


class Planted(nn.Module):
    """Branch a computes A from x[:, :8] into out[:, :2]; branch b computes B from x[:, 8:]."""

    def __init__(self, d=8, h=32):
        super().__init__()
        self.d = d
        self.a, self.b = _branch(d, h), _branch(d, h)

    def forward(self, x):
        return torch.cat([self.a(x[:, :self.d]), self.b(x[:, self.d:])], dim=-1)


def _planted_data(n, seed, d=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2 * d, generator=g)
    ya = (x[:, 0] * x[:, 1] + x[:, 2] > 0).long()
    yb = (x[:, d] + x[:, d + 1] * x[:, d + 2] > 0).long()
    return x, ya, yb


def _read_a(out):
    return out[:, :2]


def _read_b(out):
    return out[:, 2:]


def _subroutines(n, seed):
    x, ya, yb = _planted_data(n, seed)
    return {"A": mp.Subroutine((x, ya), readout=_read_a), "B": mp.Subroutine((x, yb), readout=_read_b)}


@pytest.fixture(scope="module")
def planted():
    torch.manual_seed(0)
    model = Planted()
    x, ya, yb = _planted_data(2048, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(600):
        i = torch.randint(0, len(x), (128,))
        out = model(x[i])
        loss = (nn.functional.cross_entropy(out[:, :2], ya[i])
                + nn.functional.cross_entropy(out[:, 2:], yb[i]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return mp.wrap(model)


@pytest.fixture(scope="module")
def planted_subnets(planted):
    before = {k: v.clone() for k, v in planted.module.state_dict().items()}
    subnets = train_subnetworks(planted, _subroutines(1024, seed=0), MaskConfig(),
                                validation=_subroutines(1024, seed=1), progress=False)
    return subnets, before


def _keep_only_accuracy(hm, subnet, sub):
    weights = hm.params(list(subnet.masks))
    keep = {n: weights[n] * subnet.masks[n] for n in subnet.masks}
    (x, y) = sub.data
    with torch.no_grad():
        return float((sub.read(hm.forward_with(keep, x)).argmax(-1) == y).float().mean())


@pytest.mark.parametrize("name, own", [("A", "a."), ("B", "b.")])
def test_planted_module_mask_keeps_its_own_branch(planted_subnets, name, own):
    subnet = planted_subnets[0][name]
    kept = {n: int(m.sum()) for n, m in subnet.masks.items()}
    inside = sum(k for n, k in kept.items() if n.startswith(own)) / sum(kept.values())
    assert inside >= 0.9
    assert subnet.density < 0.3  # sparse: most of its own branch is pruned too


@pytest.mark.parametrize("name", ["A", "B"])
def test_planted_module_keep_only_stays_faithful_on_held_out_data(planted, planted_subnets, name):
    subnet = planted_subnets[0][name]
    held_out = _subroutines(1024, seed=1)[name]
    full = float((held_out.read(planted(held_out.data[0])).argmax(-1) == held_out.data[1]).float().mean())
    keep_only = _keep_only_accuracy(planted, subnet, held_out)
    assert full > 0.9 and keep_only >= 0.95 * full
    assert subnet.metrics["val_accuracy"] == pytest.approx(keep_only)
    assert subnet.metrics["val_full_accuracy"] == pytest.approx(full)


def test_training_leaves_the_model_bit_identical_without_grads(planted, planted_subnets):
    before = planted_subnets[1]
    after = planted.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in planted.module.parameters())
    assert planted.module.training  # modes restored after running in eval mode


def test_history_records_the_schedule_and_stops_early_once_the_mask_is_stable(planted):
    # A long schedule: the mask settles well before its end (here at epoch 69 of 80; with 40
    # epochs a few logits on the threshold kept flipping to the end on some CPUs).
    config = MaskConfig(l0_lambda=1.0, epochs=80, necessity="none")
    subnet = train_subnetwork(planted, _subroutines(1024, seed=0)["A"], config, progress=False)
    history = subnet.history
    assert history[0]["beta"] == 1.0 and len(history) < config.epochs
    betas = [h["beta"] for h in history]
    assert all(b2 > b1 for b1, b2 in zip(betas, betas[1:]))
    assert betas[-1] >= config.stop_beta
    kept = sum(int(m.sum()) for m in subnet.masks.values())
    assert all(h["changed"] <= 0.01 * kept for h in history[-config.patience:])  # settled
    assert history[-config.patience - 1]["changed"] > 0.01 * kept  # ... only just
    assert history[-1]["density"] == pytest.approx(subnet.density)


def test_masked_model_starts_as_the_unmasked_function(planted):
    names = planted.param_names("*.weight")
    slots = layout(planted, names, "weight")
    weights = planted.params(names)
    for init, margin in ((0.0, 0.05), (0.05, 0.0), (0.5, 0.05), (2.0, 0.0)):
        masks = MaskSet(slots, weights, methods.get("continuous"), init, margin=margin)
        masked, _ = masks.masked(beta=1.0)
        x = torch.randn(16, 16)
        assert torch.allclose(planted.forward_with(masked, x), planted(x), atol=1e-6)


def _slots(model, names, kind):
    """Slots of every layout the masks support, including grouped (head-like) units on any axis."""
    if kind in ("weight", "neuron"):
        return layout(model, names, kind)
    shapes = {n: tuple(w.shape) for n, w in model.params(names).items()}
    if kind == "input_columns":
        return [Slot(n, shape, 1, 1) for n, shape in shapes.items()]
    return [Slot(n, shape, 0, 2) for n, shape in shapes.items()]  # "heads" of 2 rows


@pytest.mark.parametrize("kind", ["weight", "neuron", "input_columns", "grouped_rows"])
def test_hand_written_mask_gradient_matches_autograd(planted, kind):
    names = planted.param_names("*.weight")
    slots = _slots(planted, names, kind)
    weights = planted.params(names)
    masks = MaskSet(slots, weights, methods.get("continuous"), init=0.5, margin=0.05)
    with torch.no_grad():
        masks.logits.copy_(torch.randn(masks.logits.shape, generator=torch.Generator().manual_seed(0)))
    beta, lam, x = 2.0, 3.0, torch.randn(16, 16)  # beta * init = 1: the rescale r is far from 1
    masked, kept = masks.masked(beta)
    ours = torch.autograd.grad(planted.forward_with(masked, x).square().mean() + lam * kept,
                               [masks.logits])[0].clone()

    s = masks.logits.detach().clone().requires_grad_(True)
    keep = torch.sigmoid(beta * s)
    r = 1.0 + math.exp(-(beta * 0.5 + 0.05 * (beta - 1)))  # 1 / sigmoid(beta * c)
    parts = keep.split([sl.n_units for sl in slots])
    reference = {sl.name: weights[sl.name] * sl.broadcast((p * r).clamp(max=1.0))
                 for sl, p in zip(slots, parts)}
    sizes = torch.cat([torch.full((sl.n_units,), float(sl.unit_size)) for sl in slots])
    ref_kept = (keep * sizes).sum() / sizes.sum()
    expected = torch.autograd.grad(planted.forward_with(reference, x).square().mean()
                                   + lam * ref_kept, [s])[0]
    assert float(kept.detach()) == pytest.approx(float(ref_kept.detach()), rel=1e-6)
    assert all(torch.allclose(masked[n], reference[n], atol=1e-7) for n in names)
    assert torch.allclose(ours, expected, rtol=1e-5, atol=1e-8)
    assert (keep * r > 1).any()  # some gates are capped: never amplified beyond the weight
    assert all((masked[n].abs() <= weights[n].abs()).all() for n in names)


def test_same_seed_gives_identical_masks(planted):
    subs = _subroutines(256, seed=2)
    config = MaskConfig(epochs=6, method="hard_concrete", init=0.0)  # gates undecided: noise shows
    first = train_subnetwork(planted, subs["A"], config, progress=False)
    second = train_subnetwork(planted, subs["A"], config, progress=False)
    other = train_subnetwork(planted, subs["A"], dataclasses.replace(config, seed=1), progress=False)
    assert all(torch.equal(first.masks[n], second.masks[n]) for n in first.masks)
    assert first.history == second.history
    assert any(not torch.equal(first.masks[n], other.masks[n]) for n in first.masks)


def test_hard_concrete_also_finds_the_planted_branch(planted):
    subnet = train_subnetwork(planted, _subroutines(1024, seed=0)["A"],
                              MaskConfig(method="hard_concrete"), progress=False)
    kept = {n: int(m.sum()) for n, m in subnet.masks.items()}
    assert sum(k for n, k in kept.items() if n.startswith("a.")) / sum(kept.values()) >= 0.9
    assert subnet.metrics["accuracy"] >= 0.95 * subnet.metrics["full_accuracy"]
    assert subnet.density < 0.5


def test_lambda_grid_picks_the_sparsest_mask_faithful_on_validation(planted):
    subs, vals = _subroutines(512, seed=3), _subroutines(512, seed=4)
    config = MaskConfig(l0_lambda=(0.1, 1.0, 100.0), tolerance=0.03)
    subnet = train_subnetwork(planted, subs["A"], config, validation=vals["A"], progress=False)
    rows = subnet.selection
    assert [r["l0_lambda"] for r in rows] == [0.1, 1.0, 100.0]
    assert rows[0]["density"] > rows[1]["density"] > rows[2]["density"]
    full = subnet.metrics["val_full_accuracy"]
    ok = [r for r in rows if r["val_accuracy"] >= full - 0.03]
    assert subnet.config.l0_lambda == min(ok, key=lambda r: r["density"])["l0_lambda"]
    assert rows[2]["val_accuracy"] < full - 0.03  # the harshest λ breaks the subroutine
    assert subnet.density == pytest.approx(min(r["density"] for r in ok))


def test_magnitude_pruning_ranks_absolute_values_per_tensor():
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[-5.0, 0.1, 3.0, -0.2], [0.3, -0.4, 0.01, 9.0]]))
    hm = mp.wrap(nn.Sequential(layer))
    x, y = torch.randn(8, 4), torch.zeros(8, dtype=torch.long)
    subnet = train_subnetwork(hm, (x, y), MaskConfig(method="magnitude", density=0.5), progress=False)
    assert subnet.masks["0.weight"].tolist() == [[True, False, True, False], [False, True, False, True]]
    assert subnet.history == [] and subnet.density == 0.5


def test_save_load_round_trip_is_exact(planted_subnets, tmp_path):
    subnet = planted_subnets[0]["A"]
    subnet.save(tmp_path / "A")
    loaded = Subnetwork.load(tmp_path / "A")
    assert list(loaded.masks) == list(subnet.masks)
    assert all(torch.equal(loaded.masks[n], subnet.masks[n]) for n in subnet.masks)
    assert all(m.dtype == torch.bool for m in loaded.masks.values())
    assert (loaded.name, loaded.config, loaded.metrics, loaded.history, loaded.units) == (
        subnet.name, subnet.config, subnet.metrics, subnet.history, None)
    assert sorted(p.name for p in (tmp_path / "A").iterdir()) == ["masks.safetensors",
                                                                   "subnetwork.json"]


def test_neuron_masks_are_whole_rows_and_round_trip_with_units(planted, tmp_path):
    subnet = train_subnetwork(planted, _subroutines(512, seed=0)["A"],
                              MaskConfig(granularity="neuron", epochs=8), progress=False)
    for name, mask in subnet.masks.items():
        units = subnet.units[name]
        assert mask.shape == planted.params(name)[name].shape
        assert units.shape == (mask.shape[0],)
        assert torch.equal(mask, units[:, None].expand_as(mask))
    subnet.save(tmp_path / "n")
    loaded = Subnetwork.load(tmp_path / "n")
    assert all(torch.equal(loaded.units[n], subnet.units[n]) for n in subnet.units)
    assert {n: (s.axis, s.block) for n, s in subnet.layout.items()} == {
        n: (0, 1) for n in subnet.masks}  # nn.Linear neurons are rows
    assert loaded.layout == subnet.layout


def test_subnetworks_saved_before_layouts_were_recorded_still_load(planted_subnets, tmp_path):
    import json

    planted_subnets[0]["A"].save(tmp_path / "A")
    meta = json.loads((tmp_path / "A" / "subnetwork.json").read_text())
    del meta["layout"]
    meta["schema_version"] = 2
    (tmp_path / "A" / "subnetwork.json").write_text(json.dumps(meta))
    loaded = Subnetwork.load(tmp_path / "A")
    assert loaded.layout is None and list(loaded.masks) == list(planted_subnets[0]["A"].masks)


class _EveryOther(methods.MaskMethod):
    """A toy untrained method: keeps every other unit of each tensor."""

    name, trained, searched = "every_other", False, ("density",)

    def select(self, slots, weights, config):
        return torch.cat([torch.arange(s.n_units) % 2 == 0 for s in slots])


def test_a_registered_method_is_one_class_and_one_line():
    methods.register(_EveryOther())
    try:
        assert "every_other" in methods.names()
        hm = mp.wrap(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)))
        x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
        subnet = train_subnetwork(hm, (x, y), MaskConfig(method="every_other",
                                                         granularity="neuron"), progress=False)
        assert subnet.units["0.weight"].tolist() == [True, False] * 3
        assert subnet.units["2.weight"].tolist() == [True, False]
        assert subnet.density == pytest.approx((3 * 4 + 1 * 6) / (24 + 12))
        with pytest.raises(ValueError, match="already"):
            methods.register(_EveryOther())
    finally:
        methods.unregister("every_other")
    with pytest.raises(ValueError, match="unknown method 'every_other'"):
        MaskConfig(method="every_other")


def test_conv_neuron_is_a_whole_output_channel():
    hm = mp.scratch.cnn(in_channels=1, channels=(4,), n_classes=2, image_size=8)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 2, (32,))
    subnet = train_subnetwork(hm, (x, y), MaskConfig(granularity="neuron", epochs=2), progress=False)
    mask, units = subnet.masks["conv1.weight"], subnet.units["conv1.weight"]
    assert mask.shape == (4, 1, 3, 3) and units.shape == (4,)
    assert torch.equal(mask, units.view(4, 1, 1, 1).expand(4, 1, 3, 3))
    assert subnet.units["fc.weight"].shape == (2,)


def test_multihead_attention_heads_and_neurons_are_maskable():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, num_heads=2, batch_first=True)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.attn(x, x, x)[0].mean(1))

    torch.manual_seed(0)
    hm = mp.wrap(Attn())
    x, y = torch.randn(16, 5, 8), torch.randint(0, 2, (16,))
    heads = train_subnetwork(hm, (x, y), MaskConfig(granularity="head", epochs=2), progress=False)
    assert {n: tuple(u.shape) for n, u in heads.units.items()} == {
        "attn.in_proj_weight": (6,), "attn.out_proj.weight": (2,)}  # q, k, v heads; output heads
    out_mask, out_units = heads.masks["attn.out_proj.weight"], heads.units["attn.out_proj.weight"]
    assert torch.equal(out_mask, out_units.repeat_interleave(4)[None, :].expand(8, 8))
    neurons = train_subnetwork(hm, (x, y), MaskConfig(granularity="neuron", epochs=2), progress=False)
    assert neurons.units["attn.in_proj_weight"].shape == (24,)


@pytest.fixture(scope="module")
def tiny_gpt2():
    return mp.scratch.transformer("gpt2", n_layers=1, d_model=16, n_heads=2, d_mlp=32,
                                  vocab_size=20, max_len=8)


def _last_token_two_way(out):
    return out[:, -1, :2]


def test_bridge_is_bit_identical_after_training_and_dead_fused_qkv_is_left_out(tiny_gpt2):
    before = {k: v.clone() for k, v in tiny_gpt2.module.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    tokens, y = torch.randint(0, 20, (32, 6), generator=g), torch.randint(0, 2, (32,), generator=g)
    subnet = train_subnetwork(tiny_gpt2, mp.Subroutine((tokens, y), readout=_last_token_two_way),
                              MaskConfig(epochs=3), progress=False)
    after = tiny_gpt2.module.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in tiny_gpt2.module.parameters())
    assert "blocks.0.attn.q.weight" in subnet.masks and "blocks.0.attn.qkv.weight" not in subnet.masks
    assert not any("embed" in n for n in subnet.masks)
    assert any("blocks.0.attn.qkv.weight" in note for note in subnet.notes)


def test_bridge_head_and_neuron_granularity_follow_conv1d_and_linear_layouts(tiny_gpt2):
    tokens, y = torch.randint(0, 20, (16, 6)), torch.randint(0, 2, (16,))
    sub = mp.Subroutine((tokens, y), readout=_last_token_two_way)
    heads = train_subnetwork(tiny_gpt2, sub, MaskConfig(granularity="head", epochs=1), progress=False)
    assert set(heads.masks) == {f"blocks.0.attn.{p}.weight" for p in "qkvo"}
    assert all(u.shape == (2,) for u in heads.units.values())
    q, o = heads.masks["blocks.0.attn.q.weight"], heads.masks["blocks.0.attn.o.weight"]
    # q is a Linear (heads along rows); o is an HF Conv1D (in, out): heads along its input rows too
    assert torch.equal(q, heads.units["blocks.0.attn.q.weight"].repeat_interleave(8)[:, None].expand(16, 16))
    assert torch.equal(o, heads.units["blocks.0.attn.o.weight"].repeat_interleave(8)[:, None].expand(16, 16))
    neurons = train_subnetwork(tiny_gpt2, sub, MaskConfig(granularity="neuron", epochs=1), progress=False)
    mlp_in = neurons.masks["blocks.0.mlp.in.weight"]  # Conv1D (16, 32): a neuron is a column
    assert mlp_in.shape == (16, 32) and neurons.units["blocks.0.mlp.in.weight"].shape == (32,)
    assert torch.equal(mlp_in, neurons.units["blocks.0.mlp.in.weight"][None, :].expand(16, 32))


# --------------------------------------------------------------------- errors
def test_empty_data_is_rejected(planted):
    with pytest.raises(ValueError, match="empty"):
        train_subnetwork(planted, (torch.zeros(0, 16), torch.zeros(0, dtype=torch.long)))


def test_targets_out_of_range_name_the_class_count(planted):
    x = torch.randn(8, 16)
    with pytest.raises(ValueError, match="targets run from 0 to 5.*2 classes"):
        train_subnetwork(planted, mp.Subroutine((x, torch.arange(8) % 6), readout=_read_a),
                         progress=False)


def test_nan_loss_names_the_epoch_and_lambda(planted):
    x, y = torch.randn(64, 16), torch.zeros(64, dtype=torch.long)
    x[5, 0] = math.nan
    with pytest.raises(FloatingPointError, match="epoch 1 with l0_lambda=0.5"):
        train_subnetwork(planted, mp.Subroutine((x, y), readout=_read_a),
                         MaskConfig(l0_lambda=0.5, epochs=2), progress=False)


def test_patterns_that_match_nothing_are_rejected(planted):
    x, y = torch.randn(8, 16), torch.zeros(8, dtype=torch.long)
    with pytest.raises(ValueError, match="matches no parameter"):
        train_subnetwork(planted, (x, y), MaskConfig(params=["c.*.weight"]), progress=False)


def test_a_grid_without_validation_data_holds_out_part_of_the_training_data(planted):
    sub = _subroutines(500, seed=5)["A"]
    subnet = train_subnetwork(planted, sub, MaskConfig(l0_lambda=(0.1, 1.0), epochs=4),
                              progress=False)
    assert len(subnet.selection) == 2 and "val_accuracy" in subnet.metrics
    assert any("20% of the training data" in note for note in subnet.notes)
    rest, held = sub.holdout(0.2, seed=0)
    assert subnet.metrics["val_full_accuracy"] == pytest.approx(
        mp.subroutine.evaluate(planted, held, None))
    with pytest.raises(ValueError, match="validation="):  # too little data to hold any out
        train_subnetwork(planted, (torch.randn(2, 16), torch.zeros(2, dtype=torch.long)),
                         MaskConfig(l0_lambda=(0.1, 1.0)), progress=False)


def test_config_validation_explains_the_init_rescale():
    with pytest.raises(ValueError, match="init and margin must be >= 0"):
        MaskConfig(init=-0.1)
    with pytest.raises(ValueError, match="would still be 2.000 at the end"):  # 1/sigmoid(0)
        MaskConfig(init=0.0, margin=0.0)
    assert MaskConfig(init=0.01, margin=0.0, beta_max=1000).init == 0.01  # 1/sigmoid(10) fades
    assert MaskConfig().init == 0.0 and MaskConfig().margin == 0.05  # 200 * 0.05 = 10 fades too
    with pytest.raises(ValueError, match="method"):
        MaskConfig(method="snip")
    assert MaskConfig(method="hard_concrete", init=0.0).init == 0.0
