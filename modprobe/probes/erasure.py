"""Causal erasure: does a subroutine *use* what a probe can read?

``erase`` fits LEACE (Belrose et al. 2023, the ``concept-erasure`` package) on a hook point's
pooled activations and a constituent's labels: an affine map that leaves no linear classifier
better than a constant at predicting the constituent, while moving the activations as little as
possible. ``erased(model, erasure)`` applies it through a forward hook on that hook point for the
calls inside the ``with`` block; the model's tensors are never touched.

``erasure_effects`` asks, for every subroutine, hook point and constituent, how much the
subroutine's metric drops when the constituent is erased there, beyond erasing as many random
directions. The control is LEACE itself fitted to a random linear concept of the same rank
(``rank`` random orthonormal directions of the whitened activations), so it has the same
affine form, the same shrinkage and removes the same whitened variance; only the direction is
random. Effect = mean control metric - erased metric, with a paired bootstrap interval over the
subroutine's examples. Its p-value asks whether the erased metric lies below the controls'
distribution: a one-sided t prediction test, ``t = effect / (sd * sqrt(1 + 1/n))`` with n - 1
degrees of freedom, Holm-adjusted over rows (the empirical p-value ``(1 + #controls <= erased) /
(n + 1)`` is reported too, but it cannot fall below 1/(n + 1), so with many rows it would need
hundreds of controls per row).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from .._results import Report
from .._stats import adjust_pvalues
from ..ablation._evaluate import EvalData
from ..ablation._stats import empirical_p, percentile_interval
from ..models import HookedModel, wrap
from ..subroutine import as_subroutine
from .activations import check_hooks, collect, default_hooks, pooling_name

_POOLINGS = ("mean", "tokens")  # poolings that commute with an eraser applied at every position


@dataclass
class Erasure:
    """A fitted eraser for one hook point: ``eraser`` acts on the feature axis (the last axis of
    ``(N, D)`` and ``(N, T, D)`` activations, the channel axis of ``(N, C, *spatial)`` maps)."""

    hook: str
    eraser: Any  # concept_erasure.LeaceEraser
    rank: int  # directions removed

    def __call__(self, act: torch.Tensor) -> torch.Tensor:
        e = self.eraser
        left, right = e.proj_left.to(act), e.proj_right.to(act)
        bias = e.bias.to(act) if e.bias is not None else None
        channels_last = act.dim() > 3
        x = act.movedim(1, -1) if channels_last else act
        delta = x - bias if bias is not None else x
        out = x - (delta @ right.mH) @ left.mH
        return out.movedim(-1, 1) if channels_last else out


def erase(model: Any, hook: str, inputs: Any, labels: Any, *, pooling: str = "mean",
          batch_size: int = 64) -> Erasure:
    """Fit LEACE for ``labels`` ((N,) classes or floats: the constituent) on the ``pooling``-pooled
    activations of ``inputs`` at ``hook``. With "mean" the eraser, applied at every position,
    erases the mean-pooled representation exactly (pooling commutes with an affine map); with
    "tokens" it is fitted on every position's activation."""
    pooling = pooling_name(pooling, "erase.pooling", stacklevel=3)
    hm = wrap(model)
    feats = _features(hm, [hook], inputs, pooling, batch_size)
    return _fit(hook, feats[hook], _concept(labels, feats["_example"]))


@contextlib.contextmanager
def erased(model: Any, *erasures: Erasure) -> Iterator[HookedModel]:
    """Every call of the model inside the block runs with the erasures applied at their hook
    points (forward hooks, removed on exit; no tensor of the model changes)."""
    hm = wrap(model)

    def hook_fn(erasure):
        def fn(_module, _args, out):
            if isinstance(out, torch.Tensor):
                return erasure(out)
            if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
                return (erasure(out[0]), *out[1:])
            raise TypeError(f"hook point {erasure.hook!r} returns {type(out).__name__}; erasure "
                            "needs a tensor (or a tuple whose first item is one)")
        return fn

    handles = [hm.hook_point(e.hook).register_forward_hook(hook_fn(e)) for e in erasures]
    try:
        yield hm
    finally:
        for h in handles:
            h.remove()


def random_erasure(features: torch.Tensor, hook: str, rank: int,
                   gen: torch.Generator) -> Erasure:
    """LEACE fitted to ``rank`` random orthonormal directions of the whitened features: the
    random-direction control of an eraser of that rank."""
    from concept_erasure import LeaceFitter

    x = features.double()
    fitter = LeaceFitter.fit(x, x[:, :1])  # only for its (shrunk) covariance
    eigval, eigvec = torch.linalg.eigh(fitter.sigma_xx)
    keep = eigval > eigval[-1] * len(eigval) * torch.finfo(eigval.dtype).eps
    whiten = (eigvec * torch.where(keep, eigval.clamp_min(1e-300).rsqrt(), 0.0)) @ eigvec.T
    basis = torch.linalg.qr(torch.randn(x.shape[1], rank, generator=gen, dtype=x.dtype))[0]
    concept = (x - x.mean(0)) @ whiten @ basis
    return _fit(hook, x, concept)


# --------------------------------------------------------------------- effects on subroutines
@dataclass
class ErasureReport(Report):
    """One row per subroutine x hook point x constituent.

    Row keys: ``subroutine``, ``hook``, ``constituent``, ``rank`` (directions erased),
    ``metric``, ``full`` (the model's metric), ``erased`` (with ``constituent`` erased at
    ``hook``) with ``erased_ci_low`` / ``erased_ci_high``, ``random_mean`` / ``random_sd`` over
    ``n_random`` random-direction erasures of the same rank, ``effect = random_mean - erased``
    (positive: erasing the constituent hurts beyond random directions) with ``ci_low`` /
    ``ci_high`` (paired bootstrap over examples), ``p_value`` (one-sided t prediction test against
    the controls), ``p_adjusted``, ``p_empirical``, ``used`` (p_adjusted < 0.05 and ci_low > 0), ``n_examples``.
    """

    rows: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)

    def used(self, subroutine: str) -> list[tuple[str, str]]:
        """``(constituent, hook)`` pairs whose erasure hurts ``subroutine`` beyond random."""
        return [(r["constituent"], r["hook"]) for r in self.rows
                if r["subroutine"] == subroutine and r["used"]]


def erasure_effects(model: Any, subroutines: Mapping[str, Any], constituents: Any,
                    hooks: Sequence[str] | None = None, *, n_random: int = 20,
                    n_bootstrap: int = 200, pooling: str = "mean", seed: int = 0,
                    batch_size: int = 64, level: float = 0.95) -> ErasureReport:
    """Erase every constituent at every hook point (LEACE fitted on ``constituents``, an object
    with ``.inputs`` and ``.labels``, e.g. ``task.constituents``) and score every subroutine
    (``{name: Subroutine}``, its evaluation data) against ``n_random`` random-direction erasures
    of the same rank. ``hooks``: default every block's output; ``pooling``: as for
    :func:`erase`."""
    pooling = pooling_name(pooling, "erasure_effects.pooling", stacklevel=3)
    if n_random < 2 or n_bootstrap < 1:
        raise ValueError(f"n_random must be >= 2 and n_bootstrap >= 1, got {n_random}, "
                         f"{n_bootstrap}")
    if not (hasattr(constituents, "inputs") and hasattr(constituents, "labels")):
        raise TypeError("constituents must have .inputs and .labels (e.g. task.constituents)")
    if not subroutines:
        raise ValueError("subroutines is empty: pass {name: Subroutine} of evaluation data")
    hm = wrap(model)
    hooks = check_hooks(hm, list(hooks) if hooks is not None else default_hooks(hm))
    feats = _features(hm, hooks, constituents.inputs, pooling, batch_size)
    tasks = {name: EvalData(as_subroutine(sub), hm.device, None)
             for name, sub in subroutines.items()}
    gen = torch.Generator().manual_seed(seed)
    boot = {name: torch.randint(len(t.targets), (n_bootstrap, len(t.targets)), generator=gen)
            for name, t in tasks.items()}
    full = {name: _readouts(hm, t) for name, t in tasks.items()}
    rows = []
    with hm.evaluating(), torch.no_grad():
        for hook in hooks:
            for constituent, labels in constituents.labels.items():
                erasure = _fit(hook, feats[hook], _concept(labels, feats["_example"]))
                controls = [random_erasure(feats[hook], hook, erasure.rank, gen)
                            for _ in range(n_random)]
                for name, task in tasks.items():
                    out = _readouts(hm, task, erasure)
                    rand = [_readouts(hm, task, c) for c in controls]
                    rows.append(_row(name, hook, constituent, erasure.rank, task, full[name],
                                     out, rand, boot[name], level))
    for row, p in zip(rows, adjust_pvalues([r["p_value"] for r in rows], "holm")):
        row["p_adjusted"] = p
        row["used"] = bool(p < 0.05 and row["ci_low"] is not None and row["ci_low"] > 0)
    config = dict(hooks=hooks, n_random=n_random, n_bootstrap=n_bootstrap, pooling=pooling,
                  seed=seed, level=level, method="leace")
    return ErasureReport(rows, config)


def _row(name, hook, constituent, rank, task, full, out, rand, boot, level) -> dict[str, Any]:
    erased_value = task.score(out)
    rand_values = np.array([task.score(r) for r in rand])
    y = task.targets
    if task.sub.metric is None and out.dim() == 2 and y.dim() == 1 and not y.is_floating_point():
        # accuracy is a mean over examples: resample per-example hits (same numbers, faster)
        hits = torch.stack([(o.argmax(-1) == y).double() for o in [out, *rand]])  # (1 + n, N)
        means = hits[:, boot].mean(-1).numpy()  # (1 + n, n_bootstrap)
        erased_boot, rand_boot = means[0], means[1:].mean(0)
    else:
        erased_boot = np.array([task.score(out, idx) for idx in boot])
        rand_boot = np.array([[task.score(r, idx) for r in rand] for idx in boot]).mean(1)
    low, high = percentile_interval(erased_boot, level)
    effect_low, effect_high = percentile_interval(rand_boot - erased_boot, level)
    return dict(subroutine=name, hook=hook, constituent=constituent, rank=rank,
                metric=task.sub.metric_name, full=task.score(full), erased=erased_value,
                erased_ci_low=low, erased_ci_high=high, random_mean=float(rand_values.mean()),
                random_sd=float(rand_values.std(ddof=1)) if len(rand) > 1 else None,
                effect=float(rand_values.mean() - erased_value), ci_low=effect_low,
                ci_high=effect_high, p_value=_prediction_p(erased_value, rand_values),
                p_empirical=empirical_p(erased_value, rand_values),
                n_random=len(rand), n_examples=len(task.targets))


def _prediction_p(observed: float, null: np.ndarray) -> float:
    """One-sided p-value that ``observed`` falls below a new draw of the null distribution
    (t prediction interval from the null draws' mean and sd)."""
    from scipy import stats

    n = len(null)
    if n < 2:
        return 1.0
    sd = float(null.std(ddof=1)) * np.sqrt(1 + 1 / n)
    effect = float(null.mean() - observed)
    if sd == 0:
        return 0.0 if effect > 0 else 1.0
    return float(stats.t.sf(effect / sd, df=n - 1))


def _readouts(hm: HookedModel, task: EvalData, erasure: Erasure | None = None) -> torch.Tensor:
    with contextlib.ExitStack() as stack:
        stack.enter_context(hm.evaluating())
        stack.enter_context(torch.no_grad())
        if erasure is not None:
            stack.enter_context(erased(hm, erasure))
        return torch.cat([task.sub.read(hm(x)).float() for x, _ in task.batches])


# --------------------------------------------------------------------- fitting
def _features(hm: HookedModel, hooks: list[str], inputs: Any, pooling: str,
              batch_size: int) -> dict[str, torch.Tensor]:
    if pooling not in _POOLINGS:
        raise ValueError(f"erasure pooling must be one of {_POOLINGS} (an eraser applied at every "
                         f"position then erases exactly those features); got {pooling!r}")
    check_hooks(hm, hooks)
    feats, example = collect(hm, inputs, hooks, pooling, batch_size, progress=False)
    feats["_example"] = example
    return feats


def _concept(labels: Any, example: torch.Tensor) -> torch.Tensor:
    """(R, k) concept matrix: one-hot classes, or the continuous value as one column."""
    y = torch.as_tensor(np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor)
                                   else labels))
    if y.dim() != 1:
        raise ValueError(f"constituent labels must be (N,), got shape {tuple(y.shape)}")
    y = y[example]
    if y.is_floating_point():
        return y.double()[:, None]
    classes = torch.unique(y, return_inverse=True)[1]
    return torch.nn.functional.one_hot(classes).double()


def _fit(hook: str, feats: torch.Tensor, concept: torch.Tensor) -> Erasure:
    from concept_erasure import LeaceFitter

    if len(feats) != len(concept):
        raise ValueError(f"{len(concept)} labels for {len(feats)} activation rows at {hook!r}")
    fitter = LeaceFitter.fit(feats.double(), concept)
    eraser = fitter.eraser
    rank = int((torch.linalg.svdvals(eraser.proj_left @ eraser.proj_right) > 1e-6).sum())
    return Erasure(hook, eraser, rank)
