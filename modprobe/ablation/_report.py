"""The result of an ablation study: tidy rows, isolation verdicts with evidence, mask overlap."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from .._results import Report, format_table


@dataclass
class AblationReport(Report):
    """Ablation results as plain JSON values.

    ``rows``: one measurement per row (``model, subnetwork, eval_task, condition, metric,
    chance, value, ci_low, ci_high, n_examples, n_controls, p_value, p_adjusted, effect, effect_z``).
    Conditions:
    ``full`` (subnetwork None), ``keep_only`` (the sufficient subnetwork alone), ``ablate`` (the
    necessary set removed, or the subnetwork when no necessity search ran), ``ablate_sufficient``
    (the sufficient subnetwork removed; value with a bootstrap CI over examples),
    ``random_ablate`` and ``complement_sampled`` (mean of the controls, the central 95% of their
    distribution, the one-sided p-value that ablating the subnetwork hurts more than such a
    control, Holm-adjusted, and the effect = mean control score - ablated score).
    ``isolation``: per subnetwork the ``verdict`` (one of ``ablation.VERDICTS``; ``isolated`` is
    True only for "isolated"), its reason, how the ablated set was found, the evidence per other task,
    including Break It Down's subnetwork and ablation scores. ``overlap``: Jaccard overlap of kept
    weights per pair of subnetworks, per tensor and overall (``tensor == "*"``). ``controls``: every
    control's score, for plots. ``config``: the settings per model label.
    """

    rows: list[dict[str, Any]]
    isolation: list[dict[str, Any]] = field(default_factory=list)
    overlap: list[dict[str, Any]] = field(default_factory=list)
    controls: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def concat(cls, reports: Sequence["AblationReport"]) -> "AblationReport":
        """One report holding the results of several (e.g. a model's and its random-init twin's,
        run with ``label="random_init"``); labels must differ."""
        reports = list(reports)
        labels = [label for r in reports for label in r.config]
        if len(labels) != len(set(labels)):
            raise ValueError(f"cannot concatenate reports with repeated model labels {labels}; "
                             "run each model with its own label=")
        merged = {name: [item for r in reports for item in getattr(r, name)]
                  for name in ("rows", "isolation", "overlap", "controls")}
        return cls(**merged, config={k: v for r in reports for k, v in r.config.items()})

    def isolation_of(self, subnetwork: str, model: str | None = None) -> dict[str, Any]:
        """The isolation entry of ``subnetwork`` (for ``model`` when several are concatenated),
        with its ``verdict``."""
        hits = [v for v in self.isolation if v["subnetwork"] == subnetwork
                and (model is None or v["model"] == model)]
        if len(hits) != 1:
            known = sorted({(v["model"], v["subnetwork"]) for v in self.isolation})
            raise KeyError(f"{len(hits)} isolation entries for subnetwork {subnetwork!r} "
                           f"(model {model!r}); known (model, subnetwork): {known}")
        return hits[0]

    def table(self, columns: Sequence[str] | None = None, max_rows: int = 40) -> str:
        """A compact terminal summary (one line per subnetwork x task, then the verdicts);
        with ``columns``, the raw rows instead."""
        if columns is not None:
            return format_table(self.rows, columns, max_rows)
        several = len({r["model"] for r in self.rows}) > 1
        lines = format_table(_pivot(self.rows, several), max_rows=max_rows)
        verdicts = [f"{(v['model'] + ' ') if several else ''}{v['subnetwork']}: "
                    f"{v.get('verdict') or 'no verdict'} - {v['reason']}" for v in self.isolation]
        return "\n".join([lines, "", *verdicts]) if verdicts else lines



def _pivot(rows: Sequence[dict[str, Any]], with_model: bool) -> list[dict[str, Any]]:
    """One line per (model, subnetwork, task) with the conditions side by side."""
    full = {(r["model"], r["eval_task"]): r["value"] for r in rows if r["condition"] == "full"}
    lines: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        if r["condition"] == "full":
            continue
        key = (r["model"], r["subnetwork"], r["eval_task"])
        line = lines.setdefault(key, {
            **({"model": r["model"]} if with_model else {}),
            "subnet": r["subnetwork"], "task": r["eval_task"], "metric": r["metric"],
            "chance": r["chance"], "full": full.get((r["model"], r["eval_task"]))})
        if r["condition"] == "ablate":
            line["ablate"] = r["value"]
            line["ablate 95% CI"] = f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]" \
                if r["ci_low"] is not None else None
        elif r["condition"] == "random_ablate":
            line.update({"random": r["value"], "p": r["p_value"], "p_adjusted": r["p_adjusted"],
                         "effect": r["effect"]})
        elif r["condition"] == "ablate_sufficient":
            line["ablate S1"] = r["value"]
        elif r["condition"] == "complement_sampled":
            line["complement"] = r["value"]
        else:
            line[r["condition"]] = r["value"]
    order = ["subnet", "task", "metric", "chance", "full", "keep_only", "ablate S1", "ablate",
             "ablate 95% CI", "random", "complement", "p", "p_adjusted", "effect"]
    order = ["model", *order] if with_model else order
    return [{k: line.get(k) for k in order} for line in lines.values()]
