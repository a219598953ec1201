"""Minimum description length probing: the online code of Voita & Titov (2020).

The rows are put in one seeded random order (whole fold units together, so the rows of one
combination are transmitted side by side) and cut at the standard block fractions. The first
block is sent with the uniform code (log2 K bits per label); every later block with a linear
probe fitted on all the rows before it. The codelength is the total; the compression is the
uniform codelength (every label at log2 K bits) over the online codelength: 1 means the
representation helps no more than knowing the label set, and a probe that can only memorise
needs many examples before its code gets short, so the measure rewards codes that are easy to
learn, not just eventually decodable.

Each block's probe uses the regularisation that coded the block before it best (the receiver can
repeat that choice: it only looks at transmitted labels); the first coded block uses the
strongest penalty of the grid. Probabilities are mixed with the uniform distribution at weight
``_UNIFORM_MIX``, which costs at most 0.0015 bits per label and keeps one confident mistake (or a
class the prefix never showed) from costing an unbounded number of bits. Blocks are sent
uniformly until every label set has shown two classes.

:class:`OnlineCodeMeasure` is the ``"mdl"`` probe measure (see :mod:`.measures`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .measures import ProbeBatch, ProbeMeasure, register

FRACTIONS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.0625, 0.125, 0.25, 0.5, 1.0)
_UNIFORM_MIX = 1e-3


@dataclass
class OnlineCode:
    codelength: np.ndarray  # (H, L) bits of the online code
    uniform: np.ndarray  # (L,) bits of the uniform code
    blocks: list[int]  # block ends (rows)

    @property
    def compression(self) -> np.ndarray:
        """(H, L) uniform codelength / online codelength."""
        return self.uniform[None] / self.codelength


def block_ends(n_rows: int, fractions: Sequence[float] = FRACTIONS) -> list[int]:
    """Rows transmitted by the end of each block: at least one per block, strictly increasing,
    the last one every row."""
    ends: list[int] = []
    for f in fractions:
        end = min(n_rows, max(int(round(f * n_rows)), ends[-1] + 1 if ends else 1))
        if not ends or end > ends[-1]:
            ends.append(end)
    if ends[-1] != n_rows:
        ends.append(n_rows)
    return ends


def transmission_order(unit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows in a random order of their units, the rows of one unit together in row order."""
    rank = rng.permutation(int(unit.max()) + 1)
    return np.lexsort((np.arange(len(unit)), rank[unit]))


def online_code(features: Sequence[torch.Tensor], labels: torch.Tensor,
                n_classes: Sequence[int], order: np.ndarray, grid: Sequence[float],
                fit: Callable, fractions: Sequence[float] = FRACTIONS) -> OnlineCode:
    """Online codelength of every label set (L, R) at every hook, in bits.

    ``features[h]``: (R', D) with R' >= R (rows past ``len(order)`` are ignored); ``order``: the
    transmission order of the R rows; ``grid``: C values, strongest penalty first; ``fit``:
    :func:`.linear.fit_predict` with the engine's options bound.
    """
    ends = block_ends(len(order), fractions)
    seen = labels[:, torch.as_tensor(order)]
    while len(ends) > 1 and any(len(torch.unique(y[:ends[0]])) < 2 for y in seen):
        ends = ends[1:]  # a prefix without two classes of every label set: send it uniformly
    splits = [(order[:start], order[start:end]) for start, end in zip(ends[:-1], ends[1:])]
    grid_arr = np.asarray(grid, dtype=float)
    n_hooks, n_sets = len(features), labels.shape[0]
    reg = np.broadcast_to(grid_arr, (n_hooks, len(splits), n_sets, len(grid_arr)))
    with warnings.catch_warnings():  # a probe short of convergence only lengthens the code
        warnings.filterwarnings("ignore", message=".*did not converge")
        nll = fit(features, splits, labels, n_classes, reg, output="nll",
                  desc="probes: online code")
    k = torch.as_tensor(np.asarray(n_classes, dtype=float))[None, :, None]
    bits = np.zeros((n_hooks, len(splits), n_sets, len(grid_arr)))
    for s in range(len(splits)):
        for h in range(n_hooks):
            p = torch.exp(-nll[h][s].double())  # (n_eval, L, G)
            q = (1 - _UNIFORM_MIX) * p + _UNIFORM_MIX / k
            bits[h, s] = (-torch.log2(q)).sum(0).numpy()
    # block s is coded with the grid value that coded block s - 1 best (the first: grid[0])
    choice = np.concatenate([np.zeros((n_hooks, 1, n_sets), dtype=int),
                             bits[:, :-1].argmin(-1)], axis=1)
    coded = np.take_along_axis(bits, choice[..., None], axis=-1)[..., 0].sum(1)  # (H, L)
    log_k = np.log2(np.asarray(n_classes, dtype=float))
    return OnlineCode(ends[0] * log_k[None] + coded, len(order) * log_k, ends)


class OnlineCodeMeasure(ProbeMeasure):
    """``measure="mdl"``: the online codelength (bits), the uniform codelength, their ratio
    ``compression`` and the same compression on the control task, for discrete constituents
    (None for continuous ones)."""

    name = "mdl"
    columns = ("codelength", "uniform_codelength", "compression", "control_compression")
    table = ("compression", "control_compression")

    def measure(self, batch: ProbeBatch) -> list[list[dict[str, Any]]]:
        n = len(batch.constituents)
        if not batch.discrete:
            return [[dict.fromkeys(self.columns) for _ in range(n)] for _ in batch.hooks]
        order = transmission_order(batch.unit, batch.rng)
        code = online_code(batch.features, batch.labels, batch.n_classes, order, batch.grid,
                           batch.fit)
        return [[dict(codelength=float(code.codelength[h, i]),
                      uniform_codelength=float(code.uniform[i]),
                      compression=float(code.compression[h, i]),
                      control_compression=(float(code.compression[h, n + i])
                                           if batch.control else None))
                 for i in range(n)] for h in range(len(batch.hooks))]


register(OnlineCodeMeasure())
