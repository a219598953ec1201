"""Probe measures: small objects behind a registry, looked up by ``ProbeConfig.measure``.

A measure adds columns to every probe row (model x hook x constituent). :func:`.decodability`
hands it the probes of one batch of constituents, all discrete or all continuous, at every hook
(a :class:`ProbeBatch`) and takes back one dict of columns per hook and constituent. Adding one
is one file::

    import torch
    from modprobe.probes.measures import ProbeMeasure, register

    class Majority(ProbeMeasure):
        name, columns = "majority", ("majority",)

        def measure(self, batch):
            share = [float(torch.bincount(y).max()) / len(y) if batch.discrete else None
                     for y in batch.real]
            return [[{"majority": s} for s in share] for _ in batch.hooks]

    register(Majority())

after which ``ProbeConfig(measure=("score", "majority"))`` validates, ``--probe-measure``
offers it, and the rows carry a ``majority`` column. This module holds the registry and the
measure every run reports, ``"score"``; ``"mdl"`` lives in :mod:`.mdl`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from .._registry import Registry
from .crossval import baseline_predictions, cross_validate
from .folds import Split, Splits
from .stats import bootstrap_ci, permutation_pvalue, score

if TYPE_CHECKING:
    from .decodability import ProbeConfig


@dataclass
class ProbeBatch:
    """What a measure sees: the constituents of one kind (all discrete or all continuous) at
    every hook point of one :func:`.decodability` run.

    ``features[h]``: (R + R_heldout, D) rows of ``hooks[h]``, the R in-distribution rows first.
    ``labels``: (S, R + R_heldout) label sets, the constituents' (``constituents[i]`` is set i)
    then, with a control task, their control labels (set ``len(constituents) + i``); class ids,
    or floats when ``discrete`` is False; zeros in the held-out columns of a set that has none.
    ``n_classes``: classes per label set (None when continuous). ``heldout``: per constituent its
    (R_heldout,) labels, or None; ``heldout_split``: (in-distribution rows, held-out rows) of
    ``features``, None without held-out combinations. ``splits``: the run's folds; ``unit`` /
    ``heldout_unit``: the fold and bootstrap unit of each row. ``grid``: the regularisation grid,
    strongest penalty first; ``fit``: :func:`.linear.fit_predict` with the run's engine options
    bound. ``rng``: this measure's own random stream for the run (one per measure, so a measure
    never shifts another's draws).
    """

    config: "ProbeConfig"
    hooks: list[str]
    constituents: list[str]
    discrete: bool
    features: list[torch.Tensor]
    labels: torch.Tensor
    n_classes: list[int] | None
    n_rows: int
    control: bool
    heldout: list[torch.Tensor | None] | None
    heldout_split: Split | None
    splits: Splits
    unit: np.ndarray
    heldout_unit: np.ndarray | None
    grid: list[float]
    fit: Callable
    rng: np.random.Generator

    @property
    def real(self) -> list[torch.Tensor]:
        """Each constituent's (R,) in-distribution labels."""
        return [self.labels[i, :self.n_rows] for i in range(len(self.constituents))]

    @property
    def controls(self) -> list[torch.Tensor] | None:
        """Each constituent's (R,) control labels, or None without a control task."""
        if not self.control:
            return None
        n = len(self.constituents)
        return [self.labels[n + i, :self.n_rows] for i in range(n)]


class ProbeMeasure:
    """One thing the probes report per row.

    ``name``: the ``ProbeConfig.measure`` entry that selects it. ``columns``: the row keys it
    adds. ``table``: those of them :meth:`.ProbeReport.table` shows by default.
    """

    name: str = ""
    columns: tuple[str, ...] = ()
    table: tuple[str, ...] = ()

    def measure(self, batch: ProbeBatch) -> list[list[dict[str, Any]]]:
        """``out[h][i]``: the columns of hook ``batch.hooks[h]`` and constituent
        ``batch.constituents[i]`` (None for a value that does not apply to the batch's kind)."""
        raise NotImplementedError


_REGISTRY: Registry[ProbeMeasure] = Registry("probe measure", ProbeMeasure, __name__)
# register(measure, replace=False): make ``measure`` available as
# ``ProbeConfig(measure=measure.name)``; unregister(name); names(): the registered names,
# built-ins first; get(name): one measure.
register, unregister, names, get = (_REGISTRY.register, _REGISTRY.unregister, _REGISTRY.names,
                                    _REGISTRY.get)


# --------------------------------------------------------------------- the built-in score
class Score(ProbeMeasure):
    """The nested cross-validated ``score`` (accuracy, or R^2 for continuous constituents: the
    row's ``metric`` says which) with its cluster bootstrap interval, the control task's score
    and the selectivity, the uninformed baseline, the permutation p-value, the held-out
    combinations' score, and the chosen regularisation. Every run reports it."""

    name = "score"
    columns = ("score", "ci_low", "ci_high", "control_score", "selectivity", "baseline",
               "p_value", "heldout_score", "heldout_ci_low", "heldout_ci_high",
               "heldout_baseline", "regularization")
    table = ("score", "ci_low", "ci_high", "control_score", "selectivity", "baseline",
             "heldout_score")

    def measure(self, batch: ProbeBatch) -> list[list[dict[str, Any]]]:
        result = cross_validate(batch.features, batch.labels, batch.n_classes, batch.splits,
                                batch.heldout_split, batch.grid, batch.fit)
        scorer = _Scorer(batch.config, batch.splits, batch.unit, batch.rng)
        real, controls, n = batch.real, batch.controls, len(batch.constituents)
        out = []
        for h in range(len(batch.hooks)):
            cells = []
            for i in range(n):
                cols = scorer.cv(result.oof[h][i], real[i], batch.discrete,
                                 result.oof[h][n + i] if controls else None,
                                 controls[i] if controls else None)
                held = batch.heldout[i] if batch.heldout is not None else None
                cols.update(scorer.heldout(
                    result.heldout[h][i] if batch.heldout_split is not None else None, held,
                    real[i], batch.heldout_unit, batch.discrete))
                cols["regularization"] = float(result.reg[h, i])
                cells.append(cols)
            out.append(cells)
        return out


class _Scorer:
    """Scores, intervals, p-values and baselines of one batch's out-of-fold predictions."""

    def __init__(self, config: "ProbeConfig", splits: Splits, unit: np.ndarray,
                 rng: np.random.Generator):
        self.config, self.splits, self.unit, self.rng = config, splits, unit, rng
        first = np.unique(unit, return_index=True)[1]
        self.fold_of_unit = splits.fold_of_row[first]

    def cv(self, pred: torch.Tensor, y: torch.Tensor, discrete: bool,
           control_pred: torch.Tensor | None, control_y: torch.Tensor | None) -> dict[str, Any]:
        cfg = self.config
        value = _num(score(pred, y, discrete))
        low, high = self._interval(pred, y, self.unit, discrete)
        control = None
        if control_pred is not None:
            control = _num(score(control_pred, control_y, discrete))
        base = torch.zeros_like(y)
        for (_, test), guess in zip(self.splits.outer,
                                    baseline_predictions(y, self.splits.outer, discrete)):
            base[torch.as_tensor(test)] = guess
        p_value = None
        if cfg.n_permutations:  # shuffle whole units, or rows where a unit's labels vary
            unit, fold_of_unit = self.unit, self.fold_of_unit
            first = np.unique(unit, return_index=True)[1]
            if not torch.equal(y[torch.as_tensor(first)][torch.as_tensor(unit)], y):
                unit, fold_of_unit = np.arange(len(y)), self.splits.fold_of_row
            p_value = permutation_pvalue(pred, y, unit, fold_of_unit, discrete,
                                         cfg.n_permutations, self.rng)
        return dict(score=value, ci_low=low, ci_high=high, control_score=control,
                    selectivity=None if control is None or value is None else value - control,
                    baseline=_num(score(base, y, discrete)), p_value=p_value)

    def heldout(self, pred: torch.Tensor | None, y: torch.Tensor | None, train_y: torch.Tensor,
                unit: np.ndarray | None, discrete: bool) -> dict[str, Any]:
        if pred is None or y is None:
            return dict(heldout_score=None, heldout_ci_low=None, heldout_ci_high=None,
                        heldout_baseline=None)
        split = [(np.arange(len(train_y)), np.arange(len(y)))]
        guess = baseline_predictions(train_y, split, discrete)[0]
        low, high = self._interval(pred, y, unit, discrete)
        return dict(heldout_score=_num(score(pred, y, discrete)), heldout_ci_low=low,
                    heldout_ci_high=high, heldout_baseline=_num(score(guess, y, discrete)))

    def _interval(self, pred, y, unit, discrete) -> tuple[float | None, float | None]:
        if not self.config.n_bootstrap:
            return None, None
        low, high = bootstrap_ci(pred, y, unit, discrete, self.config.n_bootstrap,
                                 self.config.ci, self.rng)
        return _num(low), _num(high)


def _num(value: Any) -> float | None:
    """A plain float, or None for NaN (e.g. R^2 of constant labels)."""
    value = float(value)
    return value if np.isfinite(value) else None


register(Score())
