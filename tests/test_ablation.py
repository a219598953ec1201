"""Ablation runner: targeted vs size-matched random ablations, statistics, verdicts, reports."""
import warnings
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import modprobe as mp
from modprobe import ablation
from modprobe.ablation._masks import control_masks, build_specs
from modprobe._stats import adjust_pvalues
from modprobe.ablation._stats import bootstrap_ci, empirical_p
from modprobe.subroutine import accuracy, r2


@dataclass
class FakeSubnetwork:
    """What pruning.Subnetwork offers the ablation runner (duck typed)."""

    name: str
    masks: dict
    granularity: str = "weight"
    units: dict | None = None
    layout: dict | None = None
    config: SimpleNamespace = field(init=False)

    def __post_init__(self):
        self.config = SimpleNamespace(granularity=self.granularity)


def _run(*args, **kwargs):
    kwargs.setdefault("progress", False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the p-value resolution warning has its own test
        return ablation.run(*args, **kwargs)


def _row(rep, subnetwork, task, condition):
    (row,) = [r for r in rep.rows if (r["subnetwork"], r["eval_task"], r["condition"])
              == (subnetwork, task, condition)]
    return row


# ----------------------------------------------------------------------- planted two-branch model
H = 32  # hidden units per sign per branch


def _planted():
    """Branch a: 2H hidden units read x[0] only and vote for A's logits (outputs 0-1); branch b
    the same for x[4] and B (outputs 2-3). Redundant units, so a few random removals do nothing."""
    m = nn.Sequential(nn.Linear(8, 4 * H), nn.ReLU(), nn.Linear(4 * H, 4))
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        for br, xi in ((0, 0), (1, 4)):
            base = 2 * br * H
            m[0].weight[base:base + H, xi] = 1.0
            m[0].weight[base + H:base + 2 * H, xi] = -1.0
            m[2].weight[2 * br + 1, base:base + H] = 1.0 / H
            m[2].weight[2 * br, base + H:base + 2 * H] = 1.0 / H
    return mp.wrap(m)


def _planted_tasks(n=400):
    x = torch.randn(n, 8, generator=torch.Generator().manual_seed(1))
    return {"A": mp.Subroutine((x, (x[:, 0] > 0).long()), readout=lambda o: o[:, :2]),
            "B": mp.Subroutine((x, (x[:, 4] > 0).long()), readout=lambda o: o[:, 2:])}


def _branch_masks(br):
    """Exactly the weights of branch ``br``."""
    w1 = torch.zeros(4 * H, 8, dtype=torch.bool)
    w1[2 * br * H:2 * (br + 1) * H, 4 * br] = True
    w2 = torch.zeros(4, 4 * H, dtype=torch.bool)
    w2[2 * br:2 * br + 2, 2 * br * H:2 * (br + 1) * H] = True
    return {"0.weight": w1, "2.weight": w2}


@pytest.fixture(scope="module")
def planted_report():
    return _run(_planted(), {"A": _branch_masks(0), "B": _branch_masks(1)}, _planted_tasks(),
                n_random=100, seed=0, n_bootstrap=200)


def test_ablating_a_planted_branch_drops_its_task_to_chance_and_spares_the_other(planted_report):
    rep = planted_report
    a, b = _row(rep, "A", "A", "ablate"), _row(rep, "A", "B", "ablate")
    full_b = _row(rep, None, "B", "full")["value"]
    assert _row(rep, None, "A", "full")["value"] == 1.0
    assert abs(a["value"] - a["chance"]) < 0.05
    assert abs(b["value"] - full_b) <= 0.02
    control = _row(rep, "A", "A", "random_ablate")
    assert control["value"] > 0.95 and control["p_value"] < 0.05
    assert control["effect"] > 0.4


def test_planted_branches_are_isolated(planted_report):
    for name, other in (("A", "B"), ("B", "A")):
        verdict = planted_report.isolation_of(name)
        assert verdict["isolated"] is True, verdict["reason"]
        assert verdict["p_target_adjusted"] < 0.05
        (evidence,) = verdict["others"]
        assert evidence["task"] == other and not evidence["hurt"] and evidence["p_value"] == 1.0
        # Break It Down scores: keep-only A succeeds on A only; ablating A fails on A only
        assert evidence["subnetwork_score"] > 0.4 and evidence["ablation_score"] < -0.4


def test_keep_only_a_planted_branch_keeps_its_task(planted_report):
    assert _row(planted_report, "A", "A", "keep_only")["value"] == 1.0
    b = _row(planted_report, "A", "B", "keep_only")
    assert b["value"] <= b["chance"] + 0.05


def test_overlap_of_disjoint_branches_is_zero(planted_report):
    overall = [o for o in planted_report.overlap if o["tensor"] == "*"]
    assert len(overall) == 1 and overall[0]["jaccard"] == 0.0 and overall[0]["jaccard_chance"] > 0


# ----------------------------------------------------------------------- shared bottleneck
def test_subnetworks_sharing_a_bottleneck_unit_are_not_isolated():
    """A (x0 > 0) and B (x0 > 0.5) both read one tanh unit; removing it breaks both."""
    m = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 4))
    with torch.no_grad():
        m[0].weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
        m[0].weight[0].zero_()
        m[0].weight[0, 0] = 3.0
        m[0].bias.zero_()
        m[2].weight.zero_()
        m[2].weight[1, 0] = 1.0       # A: class 1 iff tanh(3 x0) > 0
        m[2].weight[3, 0] = 1.0       # B: class 1 iff tanh(3 x0) > tanh(1.5)
        m[2].bias.copy_(torch.tensor([0.0, 0.0, 0.0, -float(torch.tanh(torch.tensor(1.5)))]))
    x = torch.randn(400, 16, generator=torch.Generator().manual_seed(2))
    tasks = {"A": mp.Subroutine((x, (x[:, 0] > 0).long()), readout=lambda o: o[:, :2]),
             "B": mp.Subroutine((x, (x[:, 0] > 0.5).long()), readout=lambda o: o[:, 2:])}
    w1 = torch.zeros(64, 16, dtype=torch.bool)
    w1[0, 0] = True
    w2a, w2b = torch.zeros(4, 64, dtype=torch.bool), torch.zeros(4, 64, dtype=torch.bool)
    w2a[1, 0], w2b[3, 0] = True, True
    rep = _run(mp.wrap(m), {"A": {"0.weight": w1, "2.weight": w2a},
                            "B": {"0.weight": w1, "2.weight": w2b}}, tasks, n_random=100,
               n_bootstrap=0)
    assert _row(rep, None, "B", "full")["value"] == 1.0
    for name, other in (("A", "B"), ("B", "A")):
        verdict = rep.isolation_of(name)
        assert verdict["isolated"] is False
        assert verdict["p_target_adjusted"] < 0.05  # it does hurt its own task ...
        assert verdict["others"][0]["hurt"] and other in verdict["reason"]  # ... and the other
    assert [o["jaccard"] for o in rep.overlap if o["tensor"] == "0.weight"] == [1.0]


# ----------------------------------------------------------------------- controls
def _random_masks(model, density, seed):
    g = torch.Generator().manual_seed(seed)
    return {p: torch.rand(w.shape, generator=g) < d
            for (p, w), d in zip(model.params("*.weight").items(), density)}


def test_random_controls_remove_exactly_the_subnetworks_count_per_tensor():
    hm = mp.scratch.mlp([10, 20, 30, 5])
    spec = build_specs(hm, {"S": _random_masks(hm, (0.1, 0.4, 0.05), 0)})["S"]
    drawn = list(control_masks(spec, 30, seed=3, kind="random_ablate"))
    for removed in drawn:
        assert {p: int(r.sum()) for p, r in removed.items()} == \
               {p: int(m.sum()) for p, m in spec.masks.items()}
    patterns = {tuple(r["fc2.weight"].flatten().tolist()) for r in drawn}
    assert len(patterns) == 30  # distinct draws, not one mask reused
    for removed in control_masks(spec, 10, seed=3, kind="complement_sampled"):
        for p, r in removed.items():
            assert int(r.sum()) == int(spec.masks[p].sum()) and not (r & spec.masks[p]).any()


def test_random_controls_are_seeded_and_independent_of_other_subnetworks():
    hm = mp.scratch.mlp([10, 20, 5])
    masks = _random_masks(hm, (0.2, 0.2), 0)
    alone = build_specs(hm, {"S": masks})["S"]
    among = build_specs(hm, {"T": _random_masks(hm, (0.5, 0.5), 1), "S": masks})["S"]
    first = list(control_masks(alone, 5, 7, "random_ablate"))
    again = list(control_masks(among, 5, 7, "random_ablate"))
    other = list(control_masks(alone, 5, 8, "random_ablate"))
    assert all(torch.equal(a[p], b[p]) for a, b in zip(first, again) for p in a)
    assert not all(torch.equal(a[p], b[p]) for a, b in zip(first, other) for p in a)


def test_neuron_controls_remove_whole_neurons():
    hm = mp.scratch.mlp([10, 20, 5])
    rows = torch.zeros(20, dtype=torch.bool)
    rows[[2, 5, 11]] = True
    sub = FakeSubnetwork("S", {"fc1.weight": rows[:, None].expand(20, 10).clone(),
                               "fc1.bias": rows.clone()}, granularity="neuron")
    spec = build_specs(hm, {"S": sub})["S"]
    for removed in control_masks(spec, 20, 0, "random_ablate"):
        w = removed["fc1.weight"]
        assert (w.all(1) | ~w.any(1)).all() and int(w.all(1).sum()) == 3
        assert int(removed["fc1.bias"].sum()) == 3


def test_head_controls_remove_whole_heads():
    hm = mp.wrap(nn.Sequential(nn.Linear(8, 12)))  # 3 "heads" of 4 output rows
    heads = torch.tensor([False, True, False])
    mask = heads.repeat_interleave(4)[:, None].expand(12, 8).clone()
    spec = build_specs(hm, {"S": FakeSubnetwork("S", {"0.weight": mask}, "head",
                                           units={"0.weight": heads})})["S"]
    seen = set()
    for removed in control_masks(spec, 30, 0, "random_ablate"):
        per_head = removed["0.weight"].view(3, 4, 8)
        assert (per_head.all((1, 2)) | ~per_head.any((1, 2))).all()
        seen.add(tuple(per_head.all((1, 2)).tolist()))
    assert len(seen) == 3  # every single head drawn at some point
    with pytest.raises(ValueError, match="per-head bool mask"):
        build_specs(hm, {"S": FakeSubnetwork("S", {"0.weight": mask}, "head")})


def test_controls_follow_the_unit_layout_the_subnetwork_records():
    from modprobe.pruning.layout import Slot

    hm = mp.wrap(nn.Sequential(nn.Linear(8, 12)))  # 4 units of 2 input columns each
    mask = torch.zeros(12, 8, dtype=torch.bool)
    mask[:, 2:4] = True
    layout = {"0.weight": Slot("0.weight", (12, 8), axis=1, block=2)}
    sub = FakeSubnetwork("S", {"0.weight": mask}, "head", layout=layout)
    spec = build_specs(hm, {"S": sub})["S"]
    assert spec.layouts == layout
    seen = set()
    for removed in control_masks(spec, 30, 0, "random_ablate"):
        pairs = removed["0.weight"][0].view(4, 2)
        assert (pairs.all(1) | ~pairs.any(1)).all() and int(pairs.all(1).sum()) == 1
        seen.add(tuple(pairs.all(1).tolist()))
    assert len(seen) == 4
    split = mask.clone()
    split[:, 3] = False  # half of a unit
    with pytest.raises(ValueError, match="splits a unit of 2"):
        build_specs(hm, {"S": FakeSubnetwork("S", {"0.weight": split}, "head", layout=layout)})


# ----------------------------------------------------------------------- statistics
@pytest.mark.parametrize("metric", ["accuracy", "r2"])
def test_bootstrap_ci_covers_the_true_value_at_about_the_nominal_rate(metric):
    """Simulate many samples from a population with a known metric value; count coverage."""
    gen = torch.Generator().manual_seed(0)
    n, sims, covered = 200, 150, 0
    for s in range(sims):
        if metric == "accuracy":
            truth = 0.7
            correct = torch.rand(n, generator=gen) < truth
            logits = torch.stack([~correct, correct], 1).float()
            targets, fn = torch.ones(n, dtype=torch.long), accuracy
        else:
            truth = 1 - 0.5 / 1.5  # y = pred + noise, Var(pred) = 1, Var(noise) = 0.5
            logits = torch.randn(n, 1, generator=gen)
            targets, fn = logits + 0.5 ** 0.5 * torch.randn(n, 1, generator=gen), r2
        low, high = bootstrap_ci(lambda idx: float(fn(logits[idx], targets[idx])), n, 250,
                                  torch.Generator().manual_seed(s))
        covered += low <= truth <= high
    assert 0.88 <= covered / sims <= 0.99


def test_empirical_p_value_counts_ties_and_adds_one():
    assert empirical_p(0.5, [0.9] * 99) == pytest.approx(1 / 100)
    assert empirical_p(0.5, [0.5, 0.9, 0.4, 0.9]) == pytest.approx(3 / 5)


def test_holm_adjustment():
    assert adjust_pvalues([0.01, 0.04, 0.03, 0.2], "holm") == pytest.approx([0.04, 0.09, 0.09, 0.2])


def test_warns_when_too_few_controls_for_any_holm_significant_result():
    with pytest.warns(UserWarning, match="n_random >= 80"):
        ablation.run(_planted(), {"A": _branch_masks(0), "B": _branch_masks(1)},
                     _planted_tasks(40), n_random=10, n_bootstrap=0, progress=False)


# ----------------------------------------------------------------------- strategies
def _regression_setup():
    hm = mp.scratch.mlp([6, 16, 3], seed=1)
    x = torch.randn(300, 6, generator=torch.Generator().manual_seed(0))
    y = hm(x) + 0.05 * torch.randn(300, 3, generator=torch.Generator().manual_seed(1))
    return hm, {"T": mp.Subroutine((x, y.detach()))}, x, y.detach()


def test_random_strategy_puts_reinitialised_weights_in_place_of_removed_ones():
    hm, tasks, x, y = _regression_setup()
    masks = _random_masks(hm, (0.3, 0.3), 0)
    rep = _run(hm, {"S": masks}, tasks, n_random=2, seed=5, strategy="random", n_bootstrap=0)
    fresh = mp.reinitialize(hm, seed=5).params(list(masks))
    params = {p: torch.where(m, fresh[p], w) for (p, w), m in
              zip(hm.params(list(masks)).items(), masks.values())}
    with torch.no_grad():
        expected = float(r2(hm.forward_with(params, x), y))
    assert _row(rep, "S", "T", "ablate")["value"] == pytest.approx(expected, abs=1e-6)


def test_mean_strategy_gives_removed_neurons_their_mean_activation():
    hm, tasks, x, y = _regression_setup()
    rows = torch.zeros(16, dtype=torch.bool)
    rows[[0, 3, 4, 9]] = True
    sub = FakeSubnetwork("S", {"fc1.weight": rows[:, None].expand(16, 6).clone()}, "neuron")
    rep = _run(hm, {"S": sub}, tasks, n_random=2, strategy="mean", n_bootstrap=0)
    fc1, fc2 = hm.module.fc1, hm.module.fc2
    with torch.no_grad():
        hidden = fc1(x)
        hidden = torch.where(rows, hidden.mean(0), hidden)  # mean over the eval data by default
        expected = float(r2(fc2(torch.relu(hidden)), y))
    assert _row(rep, "S", "T", "ablate")["value"] == pytest.approx(expected, abs=1e-5)


def test_mean_strategy_rejects_masks_that_are_not_whole_output_units():
    hm, tasks, *_ = _regression_setup()
    with pytest.raises(ValueError, match="whole output units"):
        _run(hm, {"S": _random_masks(hm, (0.3, 0.3), 0)}, tasks, n_random=2, strategy="mean")


def test_vmap_over_masks_gives_the_same_scores_as_the_loop():
    hm, tasks, *_ = _regression_setup()
    subnets = {"S": _random_masks(hm, (0.2, 0.5), 0)}
    loop = _run(hm, subnets, tasks, n_random=12, n_bootstrap=0, vectorize=False)
    vmap = _run(hm, subnets, tasks, n_random=12, n_bootstrap=0, vectorize=True, mask_chunk=5)
    for a, b in zip(loop.controls, vmap.controls):
        assert a["values"] == pytest.approx(b["values"], abs=1e-6)


# ----------------------------------------------------------------------- contract
def test_same_seed_gives_an_identical_report_and_another_seed_does_not():
    hm, tasks, *_ = _regression_setup()
    subnets = {"S": _random_masks(hm, (0.2, 0.5), 0)}
    one, two = (_run(hm, subnets, tasks, n_random=8, seed=3, strategy="random", n_bootstrap=50)
                for _ in range(2))
    assert one.to_json() == two.to_json()
    other = _run(hm, subnets, tasks, n_random=8, seed=4, strategy="random", n_bootstrap=50)
    assert other.controls[0]["values"] != one.controls[0]["values"]


def test_the_model_is_bit_identical_afterwards_with_no_grads_and_its_mode_restored():
    hm, tasks, *_ = _regression_setup()
    hm.module.train()
    before = {k: v.clone() for k, v in hm.module.state_dict().items()}
    for strategy in ("zero", "random"):
        _run(hm, {"S": _random_masks(hm, (0.2, 0.5), 0)}, tasks, n_random=3, n_bootstrap=5,
             strategy=strategy)
    after = hm.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in hm.module.parameters())
    assert hm.module.training


def test_accepts_subnetwork_objects_and_plain_mask_dicts_alike():
    hm, tasks, *_ = _regression_setup()
    masks = _random_masks(hm, (0.2, 0.5), 0)
    plain = _run(hm, {"S": masks}, tasks, n_random=4, n_bootstrap=0)
    duck = _run(hm, {"S": FakeSubnetwork("S", masks)}, tasks, n_random=4, n_bootstrap=0)
    assert plain.to_json() == duck.to_json()


def test_report_round_trips_through_json_and_prints_a_compact_table(planted_report):
    again = ablation.AblationReport.from_json(planted_report.to_json())
    assert again == planted_report
    text = str(planted_report)
    assert "ablate 95% CI" in text and "A: isolated" in text and "B: isolated" in text
    assert len(text.splitlines()) == 2 + 4 + 1 + 2  # header, 2 subnets x 2 tasks, gap, verdicts


def test_a_random_init_twins_report_combines_with_a_model_column(planted_report):
    hm = _planted()
    twin = _run(mp.reinitialize(hm, seed=0), {"A": _branch_masks(0), "B": _branch_masks(1)},
                _planted_tasks(), n_random=20, n_bootstrap=0, label="random_init")
    both = ablation.AblationReport.concat([planted_report, twin])
    assert {r["model"] for r in both.rows} == {"model", "random_init"}
    assert both.isolation_of("A", model="random_init")["isolated"] is False
    assert "random_init" in both.table()
    with pytest.raises(ValueError, match="repeated model labels"):
        ablation.AblationReport.concat([planted_report, planted_report])


def test_overlap_jaccard_per_tensor_and_overall():
    hm = mp.scratch.mlp([4, 2, 2])
    a1 = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    b1 = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    a2 = torch.tensor([[1, 1], [0, 0]], dtype=torch.bool)
    rep = _run(hm, {"a": {"fc1.weight": a1, "fc2.weight": a2}, "b": {"fc1.weight": b1}},
               {"T": (torch.randn(20, 4), torch.randint(0, 2, (20,)))}, n_random=2, n_bootstrap=0,
               complement=False)
    got = {o["tensor"]: o["jaccard"] for o in rep.overlap}
    assert got == pytest.approx({"fc1.weight": 2 / 4, "fc2.weight": 0.0, "*": 2 / 6})


def test_subnetwork_without_a_matching_task_gets_no_verdict_unless_targets_maps_it():
    hm, tasks, *_ = _regression_setup()
    masks = {"X": _random_masks(hm, (0.2, 0.5), 0)}
    tasks = {**tasks, "U": tasks["T"]}
    assert _run(hm, masks, tasks, n_random=2, n_bootstrap=0).isolation_of("X")["isolated"] is None
    mapped = _run(hm, masks, tasks, n_random=2, n_bootstrap=0, targets={"X": "T"}).isolation_of("X")
    assert mapped["target_task"] == "T" and mapped["others"][0]["task"] == "U"


def test_complement_controls_are_skipped_when_the_subnetwork_keeps_most_weights():
    hm, tasks, *_ = _regression_setup()
    with pytest.warns(UserWarning, match="no complement of equal size"):
        rep = ablation.run(hm, {"S": _random_masks(hm, (0.9, 0.2), 0)}, tasks, n_random=100,
                           n_bootstrap=0, progress=False)
    assert {r["condition"] for r in rep.rows} == {"full", "ablate", "keep_only", "random_ablate"}


# ----------------------------------------------------------------------- errors
def _bad_calls():
    hm, tasks, *_ = _regression_setup()
    good = {"S": {"fc1.weight": torch.ones(16, 6, dtype=torch.bool)}}
    return hm, tasks, good


@pytest.mark.parametrize("case, error, match", [
    ("unknown parameter", KeyError, "closest names.*fc1.weight"),
    ("wrong shape", ValueError, r"shape \(6, 16\).*\(16, 6\)"),
    ("non-binary mask", ValueError, "0/1"),
    ("no subnetworks", ValueError, "non-empty dict"),
    ("no eval data", ValueError, "eval_data must be a non-empty"),
    ("empty eval data", ValueError, "empty"),
    ("unknown strategy", ValueError, "unknown strategy"),
    ("unknown target", ValueError, "targets maps"),
    ("readout without an example axis", ValueError, "one row per example"),
])
def test_bad_input_raises_a_clear_error(case, error, match):
    hm, tasks, good = _bad_calls()
    args = {"subnetworks": good, "eval_data": tasks}
    if case == "unknown parameter":
        args["subnetworks"] = {"S": {"fc1.weights": torch.ones(16, 6, dtype=torch.bool)}}
    elif case == "wrong shape":
        args["subnetworks"] = {"S": {"fc1.weight": torch.ones(6, 16, dtype=torch.bool)}}
    elif case == "non-binary mask":
        args["subnetworks"] = {"S": {"fc1.weight": torch.full((16, 6), 0.5)}}
    elif case == "no subnetworks":
        args["subnetworks"] = {}
    elif case == "no eval data":
        args["eval_data"] = {}
    elif case == "empty eval data":
        args["eval_data"] = {"T": (torch.zeros(0, 6), torch.zeros(0, 3))}
    elif case == "unknown strategy":
        args["strategy"] = "shuffle"
    elif case == "unknown target":
        args["targets"] = {"S": "missing"}
    elif case == "readout without an example axis":
        args["eval_data"] = {"T": mp.Subroutine(tasks["T"].data, readout=lambda o: o.reshape(-1))}
    with pytest.raises(error, match=match):
        _run(hm, n_random=2, **args)


# ----------------------------------------------------------------------- a TransformerLens bridge
def test_bridge_mean_ablation_uses_hook_points_and_leaves_the_bridge_intact():
    hm = mp.scratch.transformer("bert", n_layers=1, d_model=32, n_heads=2, d_mlp=64,
                                vocab_size=32, max_len=16, seed=0)
    ids = torch.randint(0, 32, (64, 8), generator=torch.Generator().manual_seed(0))
    target = hm(ids)[:, 0, :4].detach()
    tasks = {"T": mp.Subroutine((ids, target), readout=lambda out: out[:, 0, :4])}
    before = {k: v.clone() for k, v in hm.module.state_dict().items()}
    every = {"blocks.0.mlp.in.weight": torch.ones(64, 32, dtype=torch.bool)}
    rep = _run(hm, {"S": FakeSubnetwork("S", every, "neuron")}, tasks, n_random=2,
               strategy="mean", n_bootstrap=0)
    # mean-ablating every unit of mlp.in == weights 0 and the bias set to the mean activation
    with torch.no_grad():
        _, cache = hm.run_with_cache(ids, names=["blocks.0.mlp.in.hook_out"])
        mean = cache["blocks.0.mlp.in.hook_out"].mean((0, 1))
        manual = hm.forward_with({"blocks.0.mlp.in.weight": torch.zeros(64, 32),
                                  "blocks.0.mlp.in.bias": mean}, ids)[:, 0, :4]
    expected = float(r2(manual, target))
    assert _row(rep, "S", "T", "ablate")["value"] == pytest.approx(expected, abs=1e-5)
    after = hm.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
