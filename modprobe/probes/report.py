"""ProbeReport: one tidy row per model x hook x constituent, and the summaries drawn from it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from .._results import Report, format_table
from . import measures
from .activations import INPUT

_TABLE = ("model", "hook", "constituent", "metric", "score", "ci_low", "ci_high",
          "control_score", "selectivity", "compression", "control_compression", "baseline",
          "p_adjusted", "heldout_score")


@dataclass
class ProbeReport(Report):
    """Decodability of constituents per hook point.

    Row keys: ``model`` (its label, e.g. "pretrained" or "random_init"), ``hook`` (``"input"``
    is the input baseline), ``constituent``, ``metric`` (what the ``score`` columns hold:
    "accuracy", or "r2" for continuous constituents), ``n``, ``score`` with ``ci_low`` /
    ``ci_high``, ``control_score`` and ``selectivity = score - control_score`` (None without a
    control task), ``baseline`` (majority class / training mean), ``p_value`` and
    ``p_adjusted``, ``heldout_score`` with its interval and ``heldout_baseline`` (None without
    held-out combinations), and the chosen ``regularization`` (C, or alpha for ridge). With
    ``measure="mdl"``: ``codelength`` (online code, bits), ``uniform_codelength``,
    ``compression`` (their ratio, uniform / online) and ``control_compression`` (None for
    continuous constituents). A measure registered in :mod:`.measures` adds its own columns.
    ``configs`` holds each model's settings. Reports of several models concatenate.
    """

    rows: list[dict[str, Any]]
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(r["model"] for r in self.rows))

    def best_layers(self, model: str | None = None) -> dict[str, str]:
        """``{constituent: hook}`` where the constituent is most selectively decodable."""
        return {c: r["hook"] for c, r in self._best(model).items()}

    def decodability_of(self, model: str) -> float:
        """Mean over constituents of the best hook's selectivity (the score above the uninformed
        baseline when there is no control task); the input baseline is not a candidate."""
        best = self._best(model)
        return sum(_effect(r) for r in best.values()) / len(best)

    @property
    def decodability(self) -> float:
        """``decodability_of`` the report's only model."""
        if len(self.models) != 1:
            raise ValueError(f"this report holds models {self.models}: call "
                             "report.decodability_of(model)")
        return self.decodability_of(self.models[0])

    @classmethod
    def concat(cls, reports: Sequence["ProbeReport"]) -> "ProbeReport":
        """One report of several models (e.g. a pretrained model and its random-init twin)."""
        configs: dict[str, dict[str, Any]] = {}
        for report in reports:
            for name, config in report.configs.items():
                if name in configs:
                    raise ValueError(f"model {name!r} occurs in two reports; pass distinct "
                                     "label= names to decodability()")
                configs[name] = config
        return cls([dict(r) for report in reports for r in report.rows], configs)

    def table(self, columns: Sequence[str] | None = None, max_rows: int = 40) -> str:
        """A terminal table; by default the columns of ``_TABLE`` and of each registered
        measure's ``table`` that hold a value in some row."""
        if columns is None:
            shown = dict.fromkeys(_TABLE)
            for name in measures.names():
                shown.update(dict.fromkeys(measures.get(name).table))
            columns = [c for c in shown if any(r.get(c) is not None for r in self.rows)]
            if len(self.models) == 1:
                columns.remove("model")
        return format_table(self.rows, columns, max_rows)

    def _best(self, model: str | None) -> dict[str, dict[str, Any]]:
        if model is None:
            if len(self.models) != 1:
                raise ValueError(f"this report holds models {self.models}; name one")
            model = self.models[0]
        best: dict[str, dict[str, Any]] = {}
        for row in self.rows:
            if row["model"] != model or row["hook"] == INPUT:
                continue
            current = best.get(row["constituent"])
            if current is None or _effect(row) > _effect(current):
                best[row["constituent"]] = row
        if not best:
            raise ValueError(f"no probed hook point for model {model!r} "
                             f"(models: {self.models})")
        return best


def _effect(row: dict[str, Any]) -> float:
    if row["selectivity"] is not None:
        return row["selectivity"]
    if row["score"] is None or row["baseline"] is None:
        return float("-inf")
    return row["score"] - row["baseline"]
