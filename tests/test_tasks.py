"""The task contract, as every family keeps it: one output format, seeds, held-out data, errors.

The contract also runs on ``examples/custom_task.py``, a task built through the public API.
"""
import json
import sys
from pathlib import Path

import pytest
import torch

from modprobe import tasks
from modprobe.subroutine import Subroutine

sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))
import custom_task  # noqa: E402

SMALL = {"n_train": 64, "n_test": 32}


def _load(name, **options):
    """A built-in family by name, or the example's own task."""
    if name == "symbol_pairs":
        return custom_task.make_task(**options)
    return tasks.load(name, **options)


@pytest.fixture(scope="module", params=tasks.names() + ["symbol_pairs"])
def task(request):
    return _load(request.param, seed=3, **SMALL)


def _subroutines(task):
    subs = [task.composite.train, task.composite.test, task.heldout]
    for split in task.subroutines.values():
        subs += [split.train, split.test]
    return subs


def _first(inputs):
    return inputs["input_ids"] if isinstance(inputs, dict) else inputs


def test_names_lists_the_four_families():
    assert tasks.names() == ["hyperteacher", "language", "symbolic", "vision"]


def test_unknown_family_error_names_the_choices():
    with pytest.raises(ValueError, match="unknown task family 'visoin'.*hyperteacher.*vision"):
        tasks.load("visoin")


def test_every_subroutine_shares_one_input_and_output_format(task):
    subs = _subroutines(task)
    assert all(isinstance(s, Subroutine) and s.readout is None for s in subs)
    inputs = [_first(s.data[0]) for s in subs]
    targets = [s.data[1] for s in subs]
    assert len({(x.shape[1:], x.dtype) for x in inputs}) == 1
    assert len({(y.shape[1:], y.dtype) for y in targets}) == 1
    if task.n_classes:  # one head of n_classes logits scores every view, through its reduce
        head = torch.randn(len(targets[0]), task.n_classes)
        for s in subs:
            n_read = s.read(head).shape[-1]
            assert int(s.targets().max()) < n_read
            assert s.chance_level() == pytest.approx(1 / n_read)
    if isinstance(subs[0].data[0], dict):
        assert all(set(s.data[0]) == {"input_ids", "attention_mask"} for s in subs)


def test_sizes_follow_the_options(task):
    assert len(task.composite.train) == 64 and len(task.composite.test) == 32
    assert all(len(s.train) == 64 and len(s.test) == 32 for s in task.subroutines.values())
    assert len(task.heldout) == 32 and len(task.heldout_constituents) == 32
    assert len(task.constituents) == 32 == len(task.constituents.groups)
    assert all(len(v) == 32 for v in task.constituents.labels.values())
    assert len(task.composite.train_groups) == 64


def test_chance_matches_the_label_space(task):
    expected = {None: 0.0, 2: 0.5, 4: 0.25, 10: 0.1}[task.n_classes]
    assert task.composite.train.chance_level() == expected


def test_constituent_labels_are_int64_or_float32(task):
    for name, labels in task.constituents.labels.items():
        assert labels.dtype in (torch.int64, torch.float32), name
    assert task.constituents.groups.dtype == torch.int64


def test_heldout_combinations_never_appear_in_training(task):
    heldout = set(task.heldout_constituents.groups.tolist())
    assert heldout
    trained = set(task.composite.train_groups.tolist()) | set(task.constituents.groups.tolist())
    for split in task.subroutines.values():
        trained |= set(split.train_groups.tolist()) | set(split.test_groups.tolist())
    assert not heldout & trained


def test_same_seed_same_data_other_seed_other_data(task):
    again = _load(task.name, seed=3, **SMALL)
    other = _load(task.name, seed=4, **SMALL)
    x, y = _first(task.composite.train.data[0]), task.composite.train.data[1]
    assert torch.equal(x, _first(again.composite.train.data[0]))
    assert torch.equal(y, again.composite.train.data[1])
    assert torch.equal(task.constituents.groups, again.constituents.groups)
    assert not torch.equal(x, _first(other.composite.train.data[0]))


def test_training_data_do_not_change_with_n_test(task):
    bigger = _load(task.name, seed=3, n_train=64, n_test=48)
    assert torch.equal(_first(task.composite.train.data[0]),
                       _first(bigger.composite.train.data[0]))


def test_options_are_json_and_describe_names_the_task(task):
    assert json.loads(json.dumps(task.options))["seed"] == 3
    json.dumps(task.info)
    line = task.describe()
    assert line.startswith(task.name) and "train 64 / test 32" in line


def test_frac_ood_zero_holds_nothing_out():
    task = tasks.load("symbolic", frac_ood=0.0, **SMALL)
    assert task.heldout is None and task.heldout_constituents is None
    assert "nothing held out" in task.describe()


@pytest.mark.parametrize("family", tasks.names())
@pytest.mark.parametrize("option, value, message", [
    ("n_train", 0, r"n_train must be an integer in \[8, 10000000\], got 0"),
    ("n_test", 2.5, r"n_test must be an integer in \[8, "),
    ("frac_ood", 1.0, r"frac_ood must be a number in \[0, 1\), got 1.0"),
    ("seed", -1, r"seed must be an integer in \[0, "),
    ("n_trian", 10, r"unknown option\(s\) \['n_trian'\].*valid options: \['seed', 'n_train'"),
])
def test_bad_common_options_name_the_valid_range(family, option, value, message):
    with pytest.raises(ValueError, match=message):
        tasks.load(family, **{option: value})


@pytest.mark.parametrize("family, options, message", [
    ("hyperteacher", {"max_active": 17}, r"max_active must be an integer in \[2, 16\], got 17"),
    ("hyperteacher", {"encoding": "tokens"}, r"encoding must be one of \['identity', 'rotation'"),
    ("hyperteacher", {"support": "connected"}, r"support must be one of \['random'"),
    ("hyperteacher", {"n_modules": 64, "max_active": 10}, r"combinations; at most 200,000"),
    ("vision", {"image_size": 16}, r"image_size must be an integer in \[32, 512\], got 16"),
    ("symbolic", {"n_shifts": 11}, r"n_shifts must be an integer in \[3, 10\], got 11"),
    ("symbolic", {"length": 1}, r"length must be an integer in \[2, 64\], got 1"),
    ("language", {"tokenizer": 3}, r"tokenizer must be None .* got int"),
])
def test_bad_family_options_name_the_valid_range(family, options, message):
    with pytest.raises(ValueError, match=message):
        tasks.load(family, **options)


def test_task_families_build_on_public_names_of_base_only():
    import ast
    import importlib

    from modprobe.tasks import base

    for name in tasks.names():
        source = Path(importlib.import_module(f"modprobe.tasks.{name}").__file__).read_text()
        imported = [a.name for node in ast.walk(ast.parse(source))
                    if isinstance(node, ast.ImportFrom) and node.module == "base"
                    for a in node.names]
        assert imported and not [n for n in imported if n.startswith("_")], name
        assert all(n in tasks.__all__ and getattr(tasks, n) is getattr(base, n)
                   for n in imported), name
    assert not hasattr(base, "_assemble") and not hasattr(base, "_Draw")


class _Bad:
    subroutines = ("a", "b")

    def __init__(self, wrong):
        self.wrong = wrong

    def draw(self, view, n, combos, rng):
        import numpy as np

        n_out = n - 1 if self.wrong == "size" else n
        targets = np.full(n_out, 5 if self.wrong == "label" else 1, dtype=np.int64)
        return tasks.Draw(np.zeros((n, 3), np.float32), targets, np.zeros(n, np.int64),
                          {"c": np.zeros(n, np.int64)})

    def encode(self, raw):
        return [torch.from_numpy(x) for x in raw]


@pytest.mark.parametrize("wrong, message", [
    ("size", r"asked for 64 examples but gave \{'targets': 63\}"),
    ("label", r"targets must be integers in 0..1"),
])
def test_a_family_that_breaks_the_contract_gets_an_error_naming_it(wrong, message):
    import numpy as np

    with pytest.raises(ValueError, match=message):
        tasks.assemble("bad", tasks.TaskConfig(**SMALL), _Bad(wrong), np.arange(4), np.arange(0),
                       n_classes=2, chance=0.5, input_kind="vectors")


def test_language_task_for_a_model_uses_its_tokenizer_or_says_it_has_none():
    class NoTokenizer:
        tokenizer = None

    with pytest.raises(ValueError, match="tokenized with the model's own tokenizer.*has none"):
        tasks.load("language", model=NoTokenizer())


@pytest.mark.parametrize("family", ["language", "vision"])
def test_two_relation_tasks_score_each_relation_on_its_own_logits(family):
    """One head of two logits per relation: the composite is scored on both relations at once,
    each subroutine view on its own pair, so a head that knows only relation a is perfect on
    a's view, at chance on b's, and right on the composite only where it guesses b right."""
    options = {"image_size": 32} if family == "vision" else {}
    task = tasks.load(family, n_train=64, n_test=32, **options)
    a_view, b_view = (task.subroutines[name].test for name in task.subroutines)
    composite = task.composite.test
    cells = composite.targets()
    a, b = cells // 2, cells % 2
    one_hot = torch.nn.functional.one_hot
    knows_both = torch.cat([one_hot(a, 2), one_hot(b, 2)], -1).float() * 10
    assert composite.score(composite.read(knows_both), cells) == 1.0
    assert a_view.score(a_view.read(knows_both), a) == b_view.score(b_view.read(knows_both), b) == 1
    knows_a = torch.cat([one_hot(a, 2).float() * 10, torch.zeros(len(a), 2)], -1)
    assert a_view.score(a_view.read(knows_a), a) == 1.0
    guessed_b0 = float((b == 0).float().mean())  # argmax of equal logits: class 0
    assert b_view.score(b_view.read(knows_a), b) == pytest.approx(guessed_b0)
    assert composite.score(composite.read(knows_a), cells) == pytest.approx(guessed_b0)
    assert composite.compute_loss(knows_both, cells) < 1e-3
    assert composite.chance_level() == 0.25 and a_view.chance_level() == 0.5


def test_relation_head_needs_two_logits_per_relation():
    with pytest.raises(ValueError, match="4 logits"):
        tasks.RelationHead(0)(torch.randn(5, 2))
