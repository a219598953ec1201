"""Subroutine: every accepted data form yields the same batches; defaults follow target dtype."""
import pytest
import torch

from modprobe.subroutine import Subroutine, accuracy, as_subroutine, r2


def _pair(n=10):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, generator=g), torch.arange(n) % 2


def test_tensor_pair_dataset_and_batch_list_give_the_same_examples():
    x, y = _pair()
    forms = [(x, y), torch.utils.data.TensorDataset(x, y),
             [(x[:4], y[:4]), (x[4:8], y[4:8]), (x[8:], y[8:])]]
    for form in forms:
        sub = Subroutine(form, batch_size=4)
        xs, ys = zip(*sub.batches())
        assert torch.equal(torch.cat(xs), x) and torch.equal(torch.cat(ys), y)
        assert len(sub) == 10


@pytest.mark.parametrize("form", ["pair", "dataset", "batches", "one_batch"])
def test_holdout_splits_the_examples_disjointly_and_reproducibly(form):
    x, y = _pair(20)
    data = {"pair": (x, y), "dataset": torch.utils.data.TensorDataset(x, y),
            "batches": [(x[i:i + 2], y[i:i + 2]) for i in range(0, 20, 2)],
            "one_batch": [(x, y)]}[form]
    sub = Subroutine(data, batch_size=4)
    rest, held = sub.holdout(0.2, seed=3)
    rows = lambda part: torch.cat([i for i, _ in part.batches()])  # noqa: E731
    kept, out = rows(rest), rows(held)
    assert len(out) == 4 and len(kept) == 16
    assert sorted(torch.cat([kept, out])[:, 0].tolist()) == sorted(x[:, 0].tolist())
    assert torch.equal(rows(sub.holdout(0.2, seed=3)[1]), out)
    assert not torch.equal(rows(sub.holdout(0.2, seed=4)[1]), out)
    assert rest.batch_size == 4


def test_holdout_needs_enough_examples():
    with pytest.raises(ValueError, match="validation="):
        Subroutine(_pair(2)).holdout(0.2)


def test_shuffled_batches_are_a_seeded_permutation():
    x, y = _pair()
    sub = Subroutine((x, y), batch_size=3)
    a = torch.cat([t for _, t in sub.batches(shuffle_seed=1)])
    b = torch.cat([t for _, t in sub.batches(shuffle_seed=1)])
    assert torch.equal(a, b) and sorted(a.tolist()) == sorted(y.tolist())
    assert not torch.equal(torch.cat([i for i, _ in sub.batches(shuffle_seed=1)]), x)


def test_dict_inputs_are_sliced_per_key():
    ids = torch.arange(12).view(6, 2)
    sub = Subroutine(({"input_ids": ids, "attention_mask": torch.ones(6, 2)}, torch.zeros(6).long()),
                     batch_size=4)
    first = next(sub.batches())[0]
    assert torch.equal(first["input_ids"], ids[:4]) and first["attention_mask"].shape == (4, 2)


def test_generators_are_materialised_so_every_epoch_sees_the_data():
    x, y = _pair()
    sub = as_subroutine((b for b in [(x, y)]))
    assert len(list(sub.batches())) == len(list(sub.batches())) == 1


def test_defaults_follow_target_dtype():
    x, y = _pair()
    cls = Subroutine((x, y))
    assert cls.metric_name == "accuracy" and cls.chance_level() == 0.5
    logits = torch.nn.functional.one_hot(y, 2).float()
    assert cls.score(logits, y) == 1.0 and cls.compute_loss(logits, y) < 0.6
    reg = Subroutine((x, x[:, :2].clone()))
    assert reg.metric_name == "r2" and reg.chance_level() == 0.0
    assert reg.score(x[:, :2], x[:, :2]) == pytest.approx(1.0)


def test_metrics_are_right_on_known_values():
    assert float(accuracy(torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([0, 0]))) == 0.5
    t = torch.tensor([[1.0], [2.0], [3.0]])
    assert float(r2(t.mean().expand(3, 1), t)) == pytest.approx(0.0)


def test_bad_data_raises_clear_errors():
    with pytest.raises(ValueError, match="empty"):
        Subroutine([])
    with pytest.raises(TypeError, match="pairs"):
        Subroutine([torch.zeros(3)])
    with pytest.raises(ValueError, match="logits"):
        Subroutine(_pair()).score(torch.zeros(10), torch.zeros(10).long())
