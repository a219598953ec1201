"""What an ablation study may claim about one subnetwork, in words no stronger than the evidence.

Verdicts, checked in this order (the first that applies is the verdict):

- ``cannot judge``: the full model does not solve the target (or another) subroutine: a
  modularity claim about a model that does not do the task means nothing.
- ``not found``: the sufficient subnetwork does not perform its subroutine (keep-only recovers
  less than ``faithful`` of the way from chance to the full model).
- ``cannot tell``: the sufficient subnetwork scores more than ``creation_margin`` above its full
  model: the mask may create the function rather than find it (as masks do on random networks).
- ``redundant``: a sufficient subnetwork exists, but the subroutine survived the removal of every
  subnetwork the necessity search peeled (it never broke within its rounds).
- ``shared``: ablating the (necessary) set hurts its subroutine (beyond random, or at least
  halfway down to chance) and hurts another subroutine too: beyond random (p < alpha), or by
  more than ``max_other_drop`` below the full model. The weights one subroutine cannot do
  without are then needed by another, whether or not random sets of that size are as harmful.
- ``not isolated``: ablating the set hurts its subroutine no more than size-matched random
  ablations do (Holm-adjusted p >= alpha), and no other subroutine is hurt.
- ``shared`` also: ablating it hurts its subroutine beyond random and no other, but the
  other subroutine's subnetwork runs on the same weights (their ablated sets share at least
  ``shared_overlap`` of the units randomly placed sets would share, and at least one unit), even
  if it survives their removal.
- ``isolated``: sufficient, necessary and selective: it hurts its own subroutine beyond random
  and no other one, and the other subroutines' subnetworks keep off its weights.

Nothing here looks at an ablation effect to choose a setting: the thresholds are fixed up front.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .._validate import Real, check

VERDICTS = ("isolated", "shared", "redundant", "not isolated", "not found", "cannot tell",
            "cannot judge")


@dataclass(frozen=True)
class VerdictRules:
    """The fixed thresholds behind a verdict (fractions of the way from chance to a perfect or to
    the full model's score, and metric units for the drop of other subroutines).

    ``competence``: the full model must score at least ``chance + competence · (1 - chance)``
    on every evaluated subroutine. ``faithful``: keep-only must reach
    ``chance + faithful · (full - chance)``. ``creation_margin``: keep-only above
    ``full + creation_margin`` means the mask may create the function. ``max_other_drop``:
    another subroutine falling more than this below its full-model score counts as hurt even when
    random ablations hurt it as much. ``shared_overlap``: two subroutines' ablated sets that
    share at least this fraction of the units that random sets of their sizes would share (in
    expectation, when that is at least one unit) run on the same weights.
    """

    competence: float = 0.5
    faithful: float = 0.8
    creation_margin: float = 0.05
    max_other_drop: float = 0.05
    shared_overlap: float = 0.5

    def __post_init__(self) -> None:
        check(self, {"competence": Real(0, 1), "faithful": Real(0, 1), "creation_margin": Real(0),
                     "max_other_drop": Real(0), "shared_overlap": Real(0)})


def judge(name: str, target: str, value: Callable[[str, str], float],
          chance: dict[str, float], target_row: dict[str, Any], others: list[dict[str, Any]],
          necessity: dict[str, Any], rules: VerdictRules, alpha: float) -> tuple[str, str]:
    """``(verdict, reason)`` for subnetwork ``name`` of subroutine ``target``.

    ``value(condition, task)``: the measured score (conditions ``full``, ``keep_only``,
    ``ablate``). ``target_row``: the random-control row of the target task. ``others``: one entry
    per other task with its random-control ``p_value``. ``necessity``: the subnetwork's peeling
    record (empty when only the sufficient subnetwork was searched).
    """
    weak = [t for t in chance
            if value("full", t) < chance[t] + rules.competence * (1 - chance[t])]
    if weak:
        return "cannot judge", ("the model does not solve " + ", ".join(
            f"{t} (full model {value('full', t):.3f}, chance {chance[t]:.3f})" for t in weak)
            + "; no modularity claim can be made")
    full, keep = value("full", target), value("keep_only", target)
    if keep < chance[target] + rules.faithful * (full - chance[target]):
        return "not found", (f"the subnetwork alone does not perform {target} (keep-only "
                             f"{keep:.3f}, full model {full:.3f}, chance {chance[target]:.3f})")
    if keep > full + rules.creation_margin:
        return "cannot tell", (f"the subnetwork alone scores {keep:.3f} on {target}, above its full "
                               f"model ({full:.3f}): the mask may create the function rather than "
                               "find it, so the evidence cannot separate finding from creating")
    rounds = necessity.get("rounds") or []
    if rounds and not necessity.get("broken"):
        last = rounds[-1]
        return "redundant", (
            f"a sufficient subnetwork exists (keep-only {keep:.3f}), but {target} survived the "
            f"removal of {len(rounds)} peeled subnetworks (union {last['union_density']:.2%} of "
            f"the masked weights, remainder still scores {last['remainder']:.3f}); its necessary "
            "set was not reached")
    peeled = (f"necessary set of {len(rounds)} peeled subnetwork{'s' if len(rounds) != 1 else ''}"
              if rounds else "sufficient subnetwork (necessity not searched)")
    hits = target_row["p_adjusted"] < alpha
    broken = value("ablate", target) <= chance[target] + 0.5 * (full - chance[target])
    evidence = (f"ablating its {peeled} takes {target} from {full:.3f} to "
                f"{value('ablate', target):.3f} (random controls {target_row['value']:.3f}, "
                f"p_adjusted = {target_row['p_adjusted']:.3f})")
    hurt = [o for o in others if o["p_value"] < alpha
            or value("full", o["task"]) - value("ablate", o["task"]) > rules.max_other_drop]
    if hurt and (hits or broken):
        return "shared", evidence + "; it also hurts " + ", ".join(
            f"{o['task']} ({value('full', o['task']):.3f} -> {value('ablate', o['task']):.3f}, "
            f"p = {o['p_value']:.3f})" for o in hurt)
    if not hits:
        return "not isolated", evidence + ": no worse than random ablations of the same size"
    mixed = [o for o in others if o.get("overlap") is not None and o["overlap_expected"] >= 1
             and o["overlap"] >= max(1.0, rules.shared_overlap * o["overlap_expected"])]
    if mixed:
        return "shared", evidence + "; no other subroutine is hurt, but " + ", ".join(
            f"{o['task']}'s subnetwork runs on the same weights ({o['overlap']} units in common, "
            f"{o['overlap_expected']:.1f} expected of random sets, p_separate = "
            f"{o['p_separate']:.3f})" for o in mixed)
    unchecked = [o["task"] for o in others if o.get("p_separate") is None]
    if unchecked:
        evidence += (f" (no subnetwork of {', '.join(unchecked)} to check that their weights "
                     "differ)")
    return "isolated", evidence + "; no other subroutine is hurt (" + ", ".join(
        f"{o['task']} {value('full', o['task']):.3f} -> {value('ablate', o['task']):.3f}, "
        f"p = {o['p_value']:.3f}" for o in others) + ") and " + (", ".join(
        f"{o['task']}'s subnetwork keeps off its weights ({o['overlap']} units in common, "
        f"{o['overlap_expected']:.1f} expected, p_separate = {o['p_separate']:.3f})"
        for o in others if o.get("p_separate") is not None) or "no overlap was checked")


def twin_caution(entry: dict[str, Any], twin_keep_only: float, trained_full: float,
                 rules: VerdictRules) -> str | None:
    """The caution a verdict gains when the same mask search on a random-init twin also performs
    the subroutine (keep-only reaches ``faithful`` of the way from chance to the trained model's
    full score): sufficiency then cannot separate finding the function from creating it. The
    ablation evidence is about the trained weights and stands; ``None`` when there is no doubt.
    """
    chance = entry["chance_target"]
    if twin_keep_only < chance + rules.faithful * (trained_full - chance):
        return None
    return (f"caution: a mask on a random-init twin also performs {entry['target_task']} "
            f"(keep-only {twin_keep_only:.3f} vs the trained model's {trained_full:.3f}), so the "
            "subnetwork's sufficiency cannot separate finding the function from creating it; "
            "the ablation evidence is about the trained weights and stands")
