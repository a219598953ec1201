"""Hyperteacher regression tasks (Redhardt et al. 2025, after the authors' public code).

A task is a choice of 1..``max_active`` of ``n_modules`` modules, each active module with a
strength in {0.5, ..., 1.0} (the constituent vector z). The teacher is a one-hidden-layer ReLU
network whose layer weights are a linear hypernetwork of z: ``W(z) = sum_m z_m / sqrt(K) Theta_m``
(biases likewise) and whose readout is shared by all tasks. The student sees
``concat(encoding(z), x)`` with ``x ~ U[-1, 1]^dim`` and regresses the teacher's output (MSE, R^2).
A fraction ``frac_ood`` of module combinations is never trained on. ``support`` picks the split:
``random`` redraws until every module is trained (compositional) and the module co-occurrence
graph of training combinations is connected; the negative controls ``non_compositional`` (the
last module never trained) and ``disconnected`` (modules of the two halves never trained together)
break one condition each. Subroutines are single-module tasks (``module_a``): their targets depend
on that module alone.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch

from .base import (Draw, Task, TaskConfig, assemble, check_choice, check_int, cycle, holdout,
                   make_config, n_heldout, stream_rng)

STRENGTHS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
ENCODINGS = ("identity", "rotation", "invertible")
SUPPORTS = ("random", "non_compositional", "disconnected")
MAX_COMBINATIONS = 200_000


@dataclass(frozen=True)
class HyperteacherConfig(TaskConfig):
    """Defaults as in Redhardt et al.: 16 modules, tasks of 1..3 modules, width 16.

    ``encoding``: how the student sees z: ``identity`` (z itself), ``rotation`` (a fixed random
    orthogonal map) or ``invertible`` (a fixed random orthogonal-leaky-ReLU-orthogonal map,
    nonlinear and invertible). ``subroutine_modules``: modules with a single-module subroutine
    (``None``: the first pair that is trained alone and together).
    """

    n_train: int = 2048
    n_test: int = 512
    n_modules: int = 16
    max_active: int = 3
    dim: int = 16
    encoding: str = "identity"
    support: str = "random"
    subroutine_modules: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("n_modules", self.n_modules, 4, 256)
        check_int("max_active", self.max_active, 2, self.n_modules)
        check_int("dim", self.dim, 1, 1024)
        check_choice("encoding", self.encoding, ENCODINGS)
        check_choice("support", self.support, SUPPORTS)
        count = sum(math.comb(self.n_modules, k) for k in range(1, self.max_active + 1))
        if count > MAX_COMBINATIONS:
            raise ValueError(f"n_modules={self.n_modules} with max_active={self.max_active} gives "
                             f"{count:,} module combinations; at most {MAX_COMBINATIONS:,} are "
                             "supported: lower max_active or n_modules")
        if self.subroutine_modules is not None:
            mods = self.subroutine_modules
            if (not isinstance(mods, (tuple, list)) or not mods or len(set(mods)) != len(mods)):
                raise ValueError("subroutine_modules must be None or a non-empty tuple of distinct "
                                 f"module indices, got {mods!r}")
            for m in mods:
                check_int("each of subroutine_modules", m, 0, self.n_modules - 1)
            object.__setattr__(self, "subroutine_modules", tuple(int(m) for m in mods))


def make(progress: bool = False, **options) -> Task:
    """The ``hyperteacher`` task family (regression, scored by R^2)."""
    config = make_config(HyperteacherConfig, "hyperteacher", options)
    M, K = config.n_modules, config.max_active
    combos = combinations(M, K)
    held = _split(config, combos)
    train = np.setdiff1d(np.arange(len(combos)), held)
    modules = _subroutine_modules(config, combos, train)
    teacher = _Teacher.sample(stream_rng(config.seed, "teacher"), M, config.dim, K)
    encoder = _Encoder(config.encoding, M, stream_rng(config.seed, "encoding"))
    family = _Hyperteacher(combos, teacher, encoder, modules)
    info = {"summary": f"{M} modules, tasks of 1..{K}, {config.encoding} encoding, "
                       f"{config.support} support",
            "input_dim": encoder.dim + config.dim, "output_dim": config.dim,
            "n_combinations": len(combos),
            "support": {"compositional": is_compositional(combos[train]),
                        "connected": is_connected(combos[train])},
            "train_combinations": _module_lists(combos[train]),
            "heldout_combinations": _module_lists(combos[held])}
    return assemble("hyperteacher", config, family, train, held, n_classes=None, chance=0.0,
                     input_kind="vector", info=info, progress=progress)


# ------------------------------------------------------------------------ combinations, support
def _module_lists(combos: np.ndarray) -> list[list[int]]:
    return [np.flatnonzero(row).tolist() for row in combos]


def combinations(n_modules: int, max_active: int) -> np.ndarray:
    """Every subset of 1..``max_active`` modules as a ``(C, n_modules)`` boolean matrix.

    Row ``i`` is combination id ``i`` (the ``groups`` of the task's data).
    """
    rows = [list(c) for k in range(1, max_active + 1)
            for c in itertools.combinations(range(n_modules), k)]
    out = np.zeros((len(rows), n_modules), bool)
    for i, row in enumerate(rows):
        out[i, row] = True
    return out


def is_compositional(combos: np.ndarray) -> bool:
    """Every module occurs in at least one of the (training) combinations."""
    return bool(np.asarray(combos, bool).any(0).all())


def is_connected(combos: np.ndarray) -> bool:
    """The graph linking modules that occur together in a combination is connected and spans all."""
    combos = np.asarray(combos, bool)
    if not is_compositional(combos):
        return False
    adjacency = (combos.T.astype(np.int64) @ combos.astype(np.int64)) > 0
    reached = np.zeros(combos.shape[1], bool)
    reached[0] = True
    while True:
        grown = reached | adjacency[reached].any(0)
        if (grown == reached).all():
            return bool(reached.all())
        reached = grown


def _split(config: HyperteacherConfig, combos: np.ndarray) -> np.ndarray:
    """Held-out combination ids: the support's forced ones plus random ones up to ``frac_ood``.

    Training must keep each module group in ``parts`` compositional and connected: all modules
    (``random``), all but the last (``non_compositional``), each half (``disconnected``).
    """
    M = config.n_modules
    half = np.arange(M) < M // 2
    if config.support == "non_compositional":
        forced, parts = combos[:, M - 1], [np.arange(M) < M - 1]
    elif config.support == "disconnected":
        forced, parts = (combos & half).any(1) & (combos & ~half).any(1), [half, ~half]
    else:
        forced, parts = np.zeros(len(combos), bool), [np.ones(M, bool)]

    def valid(held: np.ndarray) -> bool:
        train = ~forced
        train[held] = False
        return all(is_connected(combos[train][:, part]) for part in parts)

    ids = np.arange(len(combos))
    extra = max(n_heldout(len(combos), config.frac_ood) - int(forced.sum()), 0)
    picked = holdout(stream_rng(config.seed, "heldout"), ids[~forced], extra, valid,
                      f"the modules that support={config.support!r} trains compositional and "
                      "connected by co-occurrence")
    return np.union1d(ids[forced], picked)


def _subroutine_modules(config: HyperteacherConfig, combos: np.ndarray,
                        train: np.ndarray) -> tuple[int, ...]:
    """Modules whose single-module task is trained (default: the first pair trained together)."""
    trained = {int(np.flatnonzero(combos[i])[0]) for i in train if combos[i].sum() == 1}
    if config.subroutine_modules is not None:
        missing = [m for m in config.subroutine_modules if m not in trained]
        if missing:
            raise ValueError(f"the single-module tasks of modules {missing} are held out "
                             f"(support={config.support!r}, frac_ood={config.frac_ood}); choose "
                             f"subroutine_modules among {sorted(trained)}")
        return config.subroutine_modules
    pairs = {tuple(np.flatnonzero(combos[i])) for i in train if combos[i].sum() == 2}
    for a, b in itertools.combinations(sorted(trained), 2):
        if (a, b) in pairs:
            return (a, b)
    raise ValueError("no two modules are trained both alone and together in this split; pass "
                     f"subroutine_modules= a tuple of modules among {sorted(trained)}")


# ------------------------------------------------------------------------ teacher, student inputs
@dataclass
class _Teacher:
    """Per-module first-layer weights ``(M, dim, dim)`` and biases ``(M, dim)``, shared readout."""

    modules: np.ndarray
    biases: np.ndarray
    readout: np.ndarray
    max_active: int

    @classmethod
    def sample(cls, rng: np.random.Generator, n_modules: int, dim: int,
               max_active: int) -> "_Teacher":
        # as the authors' defaults: truncated-normal variance scaling (scale sqrt(3), fan-in),
        # module biases uniform in [0, 0.5]
        scale = math.sqrt(3.0)
        return cls(_truncated_normal(rng, (n_modules, dim, dim), scale / dim),
                   rng.uniform(0.0, 0.5, (n_modules, dim)),
                   _truncated_normal(rng, (dim, dim), scale / dim), max_active)

    def __call__(self, z: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Teacher outputs ``(N, dim)`` for strengths ``z (N, M)`` and inputs ``x (N, dim)``."""
        zs = z / math.sqrt(self.max_active)
        hidden = np.einsum("nm,nmh->nh", zs, np.einsum("ni,mih->nmh", x, self.modules))
        hidden = np.maximum(hidden + zs @ self.biases, 0.0)
        return hidden @ self.readout


def _truncated_normal(rng: np.random.Generator, shape: tuple[int, ...],
                      variance: float) -> np.ndarray:
    """Normal truncated at 2 standard deviations, rescaled to the given variance."""
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2
    return out * math.sqrt(variance) / 0.87962566103423978


class _Encoder:
    """The fixed map from z to what the student sees."""

    def __init__(self, kind: str, n_modules: int, rng: np.random.Generator):
        self.kind, self.dim = kind, n_modules
        self.first, _ = np.linalg.qr(rng.standard_normal((n_modules, n_modules)))
        self.second, _ = np.linalg.qr(rng.standard_normal((n_modules, n_modules)))
        self.shift = rng.uniform(-0.5, 0.5, n_modules)

    def __call__(self, z: np.ndarray) -> np.ndarray:
        if self.kind == "identity":
            return z
        if self.kind == "rotation":
            return z @ self.first.T
        pre = z @ self.first.T + self.shift
        return np.where(pre > 0, pre, 0.2 * pre) @ self.second.T


class _Hyperteacher:
    def __init__(self, combos: np.ndarray, teacher: _Teacher, encoder: _Encoder,
                 modules: tuple[int, ...]):
        self.combos, self.teacher, self.encoder = combos, teacher, encoder
        singles = {int(np.flatnonzero(c)[0]): i for i, c in enumerate(combos) if c.sum() == 1}
        self.single = {f"module_{m}": singles[m] for m in modules}
        self.subroutines = tuple(self.single)

    def draw(self, view: str, n: int, combos: np.ndarray, rng: np.random.Generator) -> Draw:
        if view in self.single:
            combos = np.array([self.single[view]])
        ids = cycle(rng, n, combos)
        active = self.combos[ids]
        z = np.where(active, rng.choice(STRENGTHS, active.shape), 0.0)
        x = rng.uniform(-1.0, 1.0, (n, self.teacher.modules.shape[1]))
        inputs = np.concatenate([self.encoder(z), x], axis=1).astype(np.float32)
        targets = self.teacher(z, x).astype(np.float32)
        labels = {}
        for m in range(active.shape[1]):
            labels[f"strength_{m}"] = z[:, m].astype(np.float32)
            labels[f"active_{m}"] = active[:, m].astype(np.int64)
        return Draw(inputs, targets, ids, labels)

    def encode(self, raw: list[np.ndarray]) -> list[torch.Tensor]:
        return [torch.from_numpy(inputs) for inputs in raw]
