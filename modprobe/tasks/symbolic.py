"""Digit sequences under two operations, reverse and add-k mod 10, and their composition.

Each example is one token sequence ``[reverse?, +k, x_1 .. x_L, = .. =]``: two operation tokens,
``L`` digits, then ``L`` answer slots. The answer is ``(reverse(x) if reverse else x) + k mod 10``
digit by digit. Targets are per position, ``-100`` (ignored by cross-entropy and by
:func:`token_accuracy`) everywhere but the answer slots, so a per-position head gives logits
``(B, T, 10)`` and causal models see the whole input before answering. Subroutine ``reverse`` uses
``k = 0`` and ``add`` uses no reversal, so each target depends on one operation only.
Combinations are the operation pairs ``(reverse, k)``; ``frac_ood`` of the true compositions
(reverse with ``k >= 1``) are held out.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .base import (Draw, Task, TaskConfig, assemble, check_int, cycle, holdout, make_config,
                   n_heldout, stream_rng)

IGNORE = -100
PAD, ANSWER, KEEP, REVERSE = 0, 11, 12, 13   # digits d are tokens 1 + d; "+k" is token 14 + k


@dataclass(frozen=True)
class SymbolicConfig(TaskConfig):
    """``length``: digits per sequence; ``n_shifts``: k ranges over 0 .. n_shifts - 1."""

    length: int = 6
    n_shifts: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("length", self.length, 2, 64)
        check_int("n_shifts", self.n_shifts, 3, 10)


def token_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of answer digits predicted right (positions labelled ``-100`` are skipped)."""
    keep = targets != IGNORE
    return (logits.argmax(-1)[keep] == targets[keep]).float().mean()


def make(progress: bool = False, **options) -> Task:
    """The ``symbolic`` task: composite = add-k after optional reverse; one subroutine per op."""
    config = make_config(SymbolicConfig, "symbolic", options)
    n_shifts = config.n_shifts
    combos = np.arange(2 * n_shifts)                  # id = reverse * n_shifts + k
    compositions = combos[n_shifts + 1:]              # reverse and k >= 1
    # frac_ood < 1 always leaves at least one composition in training
    held = holdout(stream_rng(config.seed, "heldout"), compositions,
                    n_heldout(len(compositions), config.frac_ood), lambda h: True, "")
    train = np.setdiff1d(combos, held)
    vocab = (["<pad>"] + [str(d) for d in range(10)] + ["=", "keep", "reverse"]
             + [f"+{k}" for k in range(n_shifts)])
    info = {"summary": "add-k mod 10 after optional reverse, per digit",
            "vocab": vocab, "vocab_size": len(vocab),
            "sequence_length": 2 + 2 * config.length,
            "answer_positions": [2 + config.length, 2 + 2 * config.length],
            "train_combinations": [_combo_name(c, n_shifts) for c in train],
            "heldout_combinations": [_combo_name(c, n_shifts) for c in held]}
    return assemble("symbolic", config, _Symbolic(config.length, n_shifts), train, held,
                     n_classes=10, chance=0.1, input_kind="tokens", info=info,
                     metric=token_accuracy, progress=progress)


def _combo_name(combo: int, n_shifts: int) -> list:
    return [bool(combo // n_shifts), int(combo % n_shifts)]


class _Symbolic:
    subroutines = ("reverse", "add")

    def __init__(self, length: int, n_shifts: int):
        self.length, self.n_shifts = length, n_shifts

    def draw(self, view: str, n: int, combos: np.ndarray, rng: np.random.Generator) -> Draw:
        if view == "reverse":
            combos = np.array([0, self.n_shifts])      # k = 0, reverse off / on
        elif view == "add":
            combos = np.arange(self.n_shifts)           # reverse off, every k
        ops = cycle(rng, n, combos)
        reverse, shift = ops // self.n_shifts, ops % self.n_shifts
        digits = rng.integers(0, 10, (n, self.length))
        answer = (np.where(reverse[:, None] == 1, digits[:, ::-1], digits) + shift[:, None]) % 10
        L = self.length
        tokens = np.concatenate([np.where(reverse == 1, REVERSE, KEEP)[:, None],
                                 14 + shift[:, None], 1 + digits, np.full((n, L), ANSWER)], axis=1)
        targets = np.concatenate([np.full((n, 2 + L), IGNORE), answer], axis=1)
        return Draw(tokens.astype(np.int64), targets.astype(np.int64), ops,
                     {"reverse": reverse, "add": shift})

    def encode(self, raw: list[np.ndarray]) -> list[torch.Tensor]:
        return [torch.from_numpy(tokens) for tokens in raw]
