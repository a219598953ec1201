"""hyperteacher: targets equal a direct teacher evaluation; splits have the promised support."""
import math

import numpy as np
import pytest
import torch

from modprobe import tasks
from modprobe.tasks import hyperteacher
from modprobe.tasks.base import stream_rng

M, DIM, K = 16, 16, 3


@pytest.fixture(scope="module")
def task():
    return tasks.load("hyperteacher", seed=1, n_train=1024, n_test=256)


def _z_x(inputs):
    """Identity encoding: the first M input columns are z, the rest x."""
    return inputs[:, :M].double().numpy(), inputs[:, M:].double().numpy()


def _active_sets(inputs):
    return {tuple(np.flatnonzero(row)) for row in _z_x(inputs)[0]}


def _teacher_by_hand(seed, z, x):
    """One example at a time: W = sum_m z_m / sqrt(K) Theta_m; y = R^T relu(W^T x + b)."""
    t = hyperteacher._Teacher.sample(stream_rng(seed, "teacher"), M, DIM, K)
    out = np.zeros((len(z), DIM))
    for n in range(len(z)):
        weights, bias = np.zeros((DIM, DIM)), np.zeros(DIM)
        for m in range(M):
            weights += z[n, m] / math.sqrt(K) * t.modules[m]
            bias += z[n, m] / math.sqrt(K) * t.biases[m]
        out[n] = t.readout.T @ np.maximum(weights.T @ x[n] + bias, 0)
    return out


def test_targets_equal_a_direct_teacher_evaluation(task):
    for data in (task.composite.train, task.heldout, task.subroutines["module_0"].test):
        z, x = _z_x(data.data[0][:200])
        expected = _teacher_by_hand(1, z, x)
        assert np.allclose(data.data[1][:200].numpy(), expected, atol=1e-5)


def test_inputs_are_strengths_of_one_to_k_modules_and_uniform_x(task):
    z, x = _z_x(task.composite.train.data[0])
    active = (z > 0).sum(1)
    assert active.min() == 1 and active.max() == K
    assert set(np.round(z[z > 0], 6)) == {0.5, 0.6, 0.7, 0.8, 0.9, 1.0}
    assert x.min() >= -1 and x.max() <= 1 and abs(x.mean()) < 0.02


def test_single_module_subroutines_use_that_module_alone(task):
    assert list(task.subroutines) == ["module_0", "module_1"]
    for name, split in task.subroutines.items():
        module = int(name.split("_")[1])
        assert _active_sets(split.train.data[0]) == {(module,)}
    # the pair is meaningful: both modules are also trained together
    assert [0, 1] in task.info["train_combinations"]


def test_heldout_combinations_never_occur_in_training_inputs(task):
    trained = _active_sets(task.composite.train.data[0])
    held = _active_sets(task.heldout.data[0])
    assert held and not held & trained
    assert held <= {tuple(c) for c in task.info["heldout_combinations"]}
    assert len(task.info["heldout_combinations"]) == int(0.25 * 696)


def test_constituents_are_module_strengths_and_active_bits(task):
    c = task.constituents
    z, _ = _z_x(c.inputs)
    for m in range(M):
        assert torch.allclose(c.labels[f"strength_{m}"].double(), torch.from_numpy(z[:, m]))
        active = torch.from_numpy((z[:, m] > 0).astype(np.int64))
        assert torch.equal(c.labels[f"active_{m}"], active)
    combos = hyperteacher.combinations(M, K)
    assert np.array_equal(combos[c.groups.numpy()], z > 0)


def test_random_support_is_compositional_and_connected(task):
    assert task.info["support"] == {"compositional": True, "connected": True}


def test_non_compositional_control_never_trains_the_last_module():
    task = tasks.load("hyperteacher", support="non_compositional", n_train=512, n_test=64)
    z, _ = _z_x(task.composite.train.data[0])
    assert (z[:, M - 1] == 0).all() and (z[:, : M - 1] > 0).any(0).all()
    assert task.info["support"] == {"compositional": False, "connected": False}
    assert (_z_x(task.heldout.data[0])[0][:, M - 1] > 0).any()


def test_disconnected_control_never_trains_modules_of_both_halves_together():
    task = tasks.load("hyperteacher", support="disconnected", n_train=512, n_test=64)
    z, _ = _z_x(task.composite.train.data[0])
    first, second = (z[:, : M // 2] > 0).any(1), (z[:, M // 2:] > 0).any(1)
    assert not (first & second).any() and first.any() and second.any()
    assert task.info["support"] == {"compositional": True, "connected": False}


def test_support_checks_on_small_examples():
    chain = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], bool)
    assert hyperteacher.is_connected(chain)
    assert not hyperteacher.is_connected(chain[[0, 2]])
    assert hyperteacher.is_compositional(chain[[0, 2]])
    assert not hyperteacher.is_compositional(chain[:2])


def test_rotation_keeps_norms_and_invertible_encoding_is_nonlinear_and_injective():
    rotated = tasks.load("hyperteacher", encoding="rotation", n_train=64, n_test=16)
    ident = tasks.load("hyperteacher", n_train=64, n_test=16)
    z_rot = rotated.composite.train.data[0][:, :M]
    z = ident.composite.train.data[0][:, :M]
    assert torch.allclose(z_rot.norm(dim=1), z.norm(dim=1), atol=1e-5)
    assert torch.equal(rotated.composite.train.data[1], ident.composite.train.data[1])
    enc = hyperteacher._Encoder("invertible", M, np.random.default_rng(0))
    a, b = np.eye(M)[0] * 0.5, np.eye(M)[1] * 0.9
    assert not np.allclose(enc(a + b), enc(a) + enc(b) - enc(np.zeros(M)), atol=1e-3)
    codes = enc(hyperteacher.combinations(M, K) * 0.7)
    assert len(np.unique(codes.round(6), axis=0)) == len(codes)


def test_bad_subroutine_modules_and_impossible_splits_say_what_to_do():
    with pytest.raises(ValueError, match=r"single-module tasks of modules \[15\] are held out"):
        tasks.load("hyperteacher", support="non_compositional", subroutine_modules=(0, 15))
    with pytest.raises(ValueError, match=r"subroutine_modules must be an integer in \[0, 15\]"):
        tasks.load("hyperteacher", subroutine_modules=(0, 16))
    with pytest.raises(ValueError, match="connected by co-occurrence; lower frac_ood"):
        tasks.load("hyperteacher", frac_ood=0.99)
