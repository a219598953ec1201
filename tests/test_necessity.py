"""Necessity: a redundant module survives the removal of its sufficient subnetwork, so the search
peels until the subroutine breaks, and the verdict says what the evidence shows."""
import pytest
import torch

import modprobe as mp
from modprobe import validate
from modprobe.ablation import VerdictRules
from modprobe.ablation._verdict import judge
from modprobe.pruning import MaskConfig, Subnetwork, train_subnetworks


@pytest.fixture(scope="module")
def branches():
    """The validity issue's model: an MLP branch for A, far wider than A needs, beside a conv
    branch for B; pruned with the defaults, ablated against 100 size-matched random controls."""
    return validate.study("branches", 32, 0)


def test_removing_the_sufficient_subnetwork_leaves_a_redundant_branch_working(branches):
    _, subnets, report = branches
    rows = {(r["subnetwork"], r["eval_task"], r["condition"]): r["value"] for r in report.rows}
    assert rows[("A", "A", "keep_only")] > 0.95  # S1 is sufficient ...
    assert rows[("A", "A", "ablate_sufficient")] > 0.9  # ... but not necessary: A survives it
    assert len(subnets["A"].necessity["rounds"]) >= 2


def test_peeling_grows_the_necessary_set_inside_the_module_until_a_breaks(branches):
    _, subnets, report = branches
    a = subnets["A"]
    assert a.necessity["broken"]
    assert a.necessary_density > a.density
    assert all(a.necessary[n][m].all() for n, m in a.masks.items())  # S1 within the union
    assert not a.necessary["b.2.weight"].any()  # nothing of B's branch
    rows = {(r["subnetwork"], r["eval_task"], r["condition"]): r for r in report.rows}
    assert rows[("A", "A", "ablate")]["value"] < 0.65
    assert rows[("A", "A", "random_ablate")]["value"] - rows[("A", "A", "ablate")]["value"] > 0.2
    assert rows[("A", "B", "ablate")]["value"] == rows[(None, "B", "full")]["value"]


def test_the_planted_modules_are_called_isolated(branches):
    _, _, report = branches
    for name in ("A", "B"):
        entry = report.isolation_of(name)
        assert entry["verdict"] == "isolated", entry["reason"]
        assert entry["others"][0]["overlap"] == 0  # the two necessary sets share no weight


def test_a_search_without_necessity_ablates_the_sufficient_subnetwork(branches):
    planted, _, _ = branches
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(5))
    ya, _ = planted.labels(x)
    sub = mp.Subroutine((x, ya), readout=lambda o: o[:, :2], chance=0.5)
    config = MaskConfig(params=("a.2.weight",), l0_lambda=10.0, epochs=4, necessity="none")
    subnet = train_subnetworks(mp.wrap(planted.model), {"A": sub}, config, progress=False)["A"]
    assert subnet.necessary is None and subnet.necessity == {}
    report = mp.ablation.run(planted.model, {"A": subnet}, {"A": sub}, n_random=10, n_bootstrap=0,
                             complement=False, progress=False)
    assert {r["condition"] for r in report.rows} == {"full", "ablate", "keep_only",
                                                     "random_ablate"}


def test_necessary_sets_survive_save_and_load(branches, tmp_path):
    _, subnets, _ = branches
    subnets["A"].save(tmp_path / "A")
    back = Subnetwork.load(tmp_path / "A")
    assert back.necessity == subnets["A"].necessity
    assert all(torch.equal(back.necessary[n], subnets["A"].necessary[n]) for n in back.necessary)
    assert back.necessary_density == pytest.approx(subnets["A"].necessary_density)


def test_necessity_settings_are_checked():
    with pytest.raises(ValueError, match="unknown necessity"):
        MaskConfig(necessity="all")
    with pytest.raises(ValueError, match="max_rounds"):
        MaskConfig(max_rounds=0)
    with pytest.raises(ValueError, match="break_fraction"):
        MaskConfig(break_fraction=1.0)
    with pytest.raises(ValueError, match="faithful"):
        VerdictRules(faithful=1.5)


# ------------------------------------------------------------------ the verdict's vocabulary
def _judge(full=None, keep=0.95, ablate=0.5, other_after=0.95, p_adjusted=0.01, p_other=0.9,
           necessity=None, overlap=0, expected=5.0):
    full = full or {"A": 0.97, "B": 0.96}
    values = {("full", "A"): full["A"], ("full", "B"): full["B"], ("keep_only", "A"): keep,
              ("ablate", "A"): ablate, ("ablate", "B"): other_after}
    necessity = necessity if necessity is not None else {
        "rounds": [{"union_density": 0.1, "remainder": 0.5}], "broken": True}
    return judge("A", "A", lambda c, t: values[(c, t)], {"A": 0.5, "B": 0.5},
                 {"p_adjusted": p_adjusted, "value": 0.9},
                 [{"task": "B", "p_value": p_other, "overlap": overlap,
                   "overlap_expected": expected, "p_separate": 0.01}],
                 necessity, VerdictRules(), 0.05)[0]


@pytest.mark.parametrize("case, expected", [
    (dict(), "isolated"),
    (dict(full={"A": 0.6, "B": 0.96}), "cannot judge"),
    (dict(full={"A": 0.97, "B": 0.55}), "cannot judge"),
    (dict(keep=0.7), "not found"),
    (dict(keep=0.99, full={"A": 0.9, "B": 0.96}), "cannot tell"),
    (dict(necessity={"rounds": [{"union_density": 0.3, "remainder": 0.93}], "broken": False}),
     "redundant"),
    (dict(p_adjusted=0.2), "not isolated"),
    (dict(p_other=0.01), "shared"),
    (dict(other_after=0.85), "shared"),  # hurt by more than max_other_drop, even if random does too
    (dict(overlap=4, expected=5.0), "shared"),  # B runs on A's weights, though it survives
    (dict(overlap=0, expected=0.4), "isolated"),  # too few units to tell: no sharing claimed
])
def test_each_verdict_follows_from_its_evidence(case, expected):
    assert _judge(**case) == expected


def test_a_twin_that_performs_the_subroutine_adds_a_caution_and_one_that_fails_does_not():
    from modprobe.ablation._verdict import twin_caution

    entry = {"chance_target": 0.5, "target_task": "A"}
    assert twin_caution(entry, 0.52, 0.95, VerdictRules()) is None
    assert "random-init twin also performs A" in twin_caution(entry, 0.9, 0.95, VerdictRules())
