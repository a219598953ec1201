"""Necessity: every weight a subroutine can run on, found by peeling sufficient subnetworks.

A mask trained to *perform* subroutine A with a sparsity penalty finds one sparse subnetwork that
is sufficient for A. An over-parameterised network holds several such subnetworks side by side,
so removing the one found usually leaves A intact: sufficiency says nothing about necessity.

``peel`` repeats the search on what is left: round 1 is the sufficient subnetwork S1; round r
trains a fresh mask on the model with S1 ∪ … ∪ S(r-1) removed (zeroed), and stops once the
remainder can no longer perform A on held-out data (its metric falls to ``chance +
break_fraction · (full - chance)``) or after ``max_rounds``. The union is A's *necessary set*:
ablating it tests necessity, while S1 stays the minimal sufficient subnetwork. Neither the stop
rule nor any setting looks at the other subroutines or at an ablation effect.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..models import HookedModel
from ..subroutine import Subroutine, evaluate
from .masks import scaled_weights


@dataclass
class Peeling:
    """The outcome of :func:`peel`: the union of every round's units and what each round saw.

    ``rounds``: one dict per round: ``round``, ``density`` (of the units that round added, over
    all masked entries), ``union_density``, ``keep_only`` (the round's own subnetwork on the
    remainder it was trained on) and ``remainder`` (the metric with the union so far removed).
    ``broken``: the remainder fell to the break level within ``max_rounds``.
    """

    units: torch.Tensor
    rounds: list[dict] = field(default_factory=list)
    broken: bool = False
    level: float = 0.0


def peel(hm: HookedModel, judge: Subroutine, slots: list, weights: dict[str, torch.Tensor],
         first: torch.Tensor, fit_round: Callable[[dict[str, torch.Tensor], int], torch.Tensor],
         density: Callable[[torch.Tensor], float], *, full: float, chance: float,
         break_fraction: float, max_rounds: int) -> Peeling:
    """Union of sufficient subnetworks until the remainder cannot perform the subroutine.

    ``judge``: held-out data the stop rule is scored on. ``first``: round 1's per-unit bool mask.
    ``fit_round(base_weights, round)`` trains one mask on ``base_weights`` (the masked tensors
    with the union so far zeroed) and returns its per-unit bool mask. ``full`` and ``chance``:
    the unmasked model's metric on ``judge`` and the metric of a guess.
    """
    level = chance + break_fraction * (full - chance)
    union = first.clone()
    result = Peeling(union, level=level)
    result.rounds.append(_round(1, first, union, None, density))
    for number in range(2, max_rounds + 2):
        remainder = scaled_weights(slots, weights, ~union)
        left = evaluate(hm, judge, remainder)
        result.rounds[-1]["remainder"] = left
        if left <= level:
            result.broken = True
            break
        if number > max_rounds:
            break
        found = fit_round(remainder, number)
        added = found & ~union
        if not bool(added.any()):  # the search keeps only what is already gone: nothing to peel
            break
        union |= added
        keep_only = evaluate(hm, judge, scaled_weights(slots, weights, added))
        result.rounds.append(_round(number, added, union, keep_only, density))
    return result


def _round(number: int, added: torch.Tensor, union: torch.Tensor, keep_only: float | None,
           density: Callable[[torch.Tensor], float]) -> dict:
    return {"round": number, "density": density(added), "union_density": density(union),
            "keep_only": keep_only, "remainder": None}
