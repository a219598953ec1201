"""Break It Down's two scores for each subnetwork (Lepori, Serre & Pavlick 2023).

For the subnetwork of subroutine A and another subroutine B, with accuracies floored at chance:

- subnetwork score = max(acc_A, chance_A) - max(acc_B, chance_B) when only the subnetwork is
  kept (positive: the subnetwork performs A and not B);
- ablation score = the same difference after the subnetwork is removed (negative: removing it
  hurts A more than B).

The paper removes the sufficient subnetwork (``ablate_sufficient`` here; with necessity search off,
``ablate``). Several other subroutines are averaged. Scores need no random controls; the verdicts
(``_verdict``) are the tested claims, these make results comparable with the paper's.
"""
from __future__ import annotations

from typing import Any, Sequence

# The paper's trained models, recomputed from the authors' result files (see docs/comparison.md).
PUBLISHED = {"subnetwork_score": (0.35, 0.74), "ablation_score": (-0.58, 0.02)}


def break_it_down_scores(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, subnetwork): ``subnetwork_score`` and ``ablation_score`` from ablation rows.

    A subnetwork gets ``None`` for a score whose condition is missing, or when its subroutine has
    no other evaluation task to compare with.
    """
    value: dict[tuple[Any, ...], float] = {}
    chance: dict[str, float] = {}
    for r in rows:
        value[(r["model"], r["subnetwork"], r["eval_task"], r["condition"])] = r["value"]
        if r.get("chance") is not None:
            chance[r["eval_task"]] = r["chance"]
    pairs = sorted({(r["model"], r["subnetwork"]) for r in rows if r["subnetwork"] is not None},
                   key=str)
    tasks = sorted({r["eval_task"] for r in rows})
    ablated = ("ablate_sufficient" if any(k[3] == "ablate_sufficient" for k in value)
               else "ablate")
    out = []
    for model, sub in pairs:
        others = [t for t in tasks if t != sub]
        entry: dict[str, Any] = {"model": model, "subnetwork": sub, "ablation_condition": ablated}
        for score, condition in (("subnetwork_score", "keep_only"), ("ablation_score", ablated)):
            entry[score] = _difference(value, chance, model, sub, condition, others)
        out.append(entry)
    return out


def mean_score(scores: Sequence[dict[str, Any]], name: str) -> float | None:
    """Mean of one score over the subnetworks that have it (``None`` if none has)."""
    values = [s[name] for s in scores if s.get(name) is not None]
    return sum(values) / len(values) if values else None


def _difference(value: dict[tuple[Any, ...], float], chance: dict[str, float], model: Any,
                sub: str, condition: str, others: list[str]) -> float | None:
    own = value.get((model, sub, sub, condition))
    rest = [value.get((model, sub, t, condition)) for t in others]
    if own is None or not rest or any(v is None for v in rest):
        return None

    def floor(task: str, v: float) -> float:
        return max(v, chance.get(task, 0.0))

    return floor(sub, own) - sum(floor(t, v) for t, v in zip(others, rest)) / len(rest)
