"""Statistics of an ablation study: bootstrap CIs over examples, empirical p-values against
random controls, effect sizes (Holm's correction lives in modprobe/_stats.py)."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

_TIE = 1e-9  # control scores within this of the targeted score count as "hurt as much"


def bootstrap_ci(score: Callable[[torch.Tensor], float], n: int, n_bootstrap: int,
                  gen: torch.Generator, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of ``score(indices)`` over ``n`` examples resampled with
    replacement. Pass identically seeded generators to get paired resamples across conditions."""
    values = [score(torch.randint(n, (n,), generator=gen)) for _ in range(n_bootstrap)]
    return percentile_interval(values, level)


def percentile_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Central ``level`` percentile interval (NaNs ignored)."""
    arr = np.asarray(values, dtype=float)
    if np.isnan(arr).all():
        return float("nan"), float("nan")
    tail = (1 - level) / 2
    low, high = np.nanquantile(arr, [tail, 1 - tail])
    return float(low), float(high)


def empirical_p(observed: float, null: Sequence[float]) -> float:
    """One-sided p-value that ``observed`` is lower than the null draws, with the +1 correction
    (Phipson & Smyth 2010): ``(1 + #{null <= observed}) / (1 + n)``; never 0."""
    arr = np.asarray(null, dtype=float)
    return float((1 + np.sum(arr <= observed + _TIE)) / (1 + len(arr)))


def effect_size(observed: float, null: Sequence[float]) -> tuple[float, float | None]:
    """``(mean(null) - observed, that / sd(null))``: the extra drop of the targeted ablation over
    the average control, raw and in control standard deviations (None when the sd is 0)."""
    arr = np.asarray(null, dtype=float)
    effect = float(arr.mean() - observed)
    sd = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return effect, (effect / sd if sd > 0 else None)

