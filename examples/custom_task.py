"""Build a compositional task from your own data and analyse a model on it.

The data here stand for yours: each example shows two symbols (a, b), each drawn as a noisy
8-dimensional code. Subroutine ``a_even`` asks whether a is even, ``b_high`` whether b >= 3; the
composite task asks both (a even AND b high). Constituents are the symbols themselves;
combinations are the (a, b) pairs, a quarter of which are never trained on.

The recipe: a *family* with ``subroutines``, ``draw`` and ``encode``; ``split_combinations``
holds combinations out; ``assemble`` draws every split with per-stream seeds and returns a
``modprobe.tasks.Task`` that every stage of the analysis accepts.

    python examples/custom_task.py --out runs/custom [--quick]
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import modprobe as mp
from modprobe.fitting import FitConfig
from modprobe.tasks import Draw, TaskConfig, assemble, balanced, cycle, split_combinations

N_SYMBOLS, CODE = 6, 8


@dataclass(frozen=True)
class SymbolPairsConfig(TaskConfig):
    """The common options (seed, n_train, n_test, frac_ood, batch_size) plus the code noise."""

    noise: float = 0.3


class SymbolPairs:
    """Your data source: give ``n`` examples of a view, drawn from the combinations allowed."""

    subroutines = ("a_even", "b_high")

    def __init__(self, noise: float, seed: int):
        self.noise = noise
        self.codes = np.random.default_rng(seed).standard_normal((N_SYMBOLS, CODE))

    def draw(self, view: str, n: int, combos: np.ndarray, rng: np.random.Generator) -> Draw:
        # the (a_even, b_high) cell of each example: the composite task sees "both" half of the
        # time (balanced classes), the other views every cell equally; cells without any allowed
        # combination (possible among the few held-out ones) are skipped
        allowed = [[c for c in combos if c // N_SYMBOLS % 2 == 1 - e and (c % N_SYMBOLS >= 3) == h]
                   for e in (0, 1) for h in (0, 1)]
        weights = [1, 1, 1, 3] if view == "composite" else [1, 1, 1, 1]
        cell = balanced(rng, n, [w if cs else 0 for w, cs in zip(weights, allowed)])
        pairs = np.empty(n, np.int64)
        for k, cs in enumerate(allowed):
            rows = np.flatnonzero(cell == k)
            if rows.size:
                pairs[rows] = cycle(rng, rows.size, np.asarray(cs))
        a, b = pairs // N_SYMBOLS, pairs % N_SYMBOLS
        even, high = (a % 2 == 0).astype(np.int64), (b >= 3).astype(np.int64)
        x = np.concatenate([self.codes[a], self.codes[b]], axis=1)
        x = x + self.noise * rng.standard_normal(x.shape)
        targets = {"a_even": even, "b_high": high}.get(view, even & high)
        return Draw(x.astype(np.float32), targets, pairs, {"a": a, "b": b})

    def encode(self, raw: list[np.ndarray]) -> list[torch.Tensor]:
        return [torch.from_numpy(x) for x in raw]


def make_task(**options) -> mp.tasks.Task:
    """The task, built through the public API (the task contract tests run on it too)."""
    config = SymbolPairsConfig(**options)
    pairs = np.arange(N_SYMBOLS * N_SYMBOLS)

    def keeps_every_cell(train: np.ndarray) -> bool:
        a, b = train // N_SYMBOLS, train % N_SYMBOLS
        return (len(set(a)) == N_SYMBOLS and len(set(b)) == N_SYMBOLS
                and len(set(zip(a % 2 == 0, b >= 3))) == 4)

    train, held = split_combinations(pairs, config, keeps_every_cell,
                                     "every symbol and every (even, high) cell in training")
    info = {"summary": "a even AND b high, on noisy symbol codes",
            "train_combinations": train.tolist(), "heldout_combinations": held.tolist()}
    return assemble("symbol_pairs", config, SymbolPairs(config.noise, config.seed), train, held,
                    n_classes=2, chance=0.5, input_kind="vectors", info=info,
                    options={**config.options(), "noise": config.noise})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/custom_task")
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    args = parser.parse_args()
    task = make_task(seed=0, n_train=512 if args.quick else 2048, n_test=256)
    print(task.describe())
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2 * CODE, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 2))
    config = mp.AnalysisConfig(
        fit=FitConfig(epochs=20 if args.quick else 40, lr=3e-3, backbone_lr=3e-3),
        mask_epochs=12 if args.quick else 20, n_random=80, complement=not args.quick,
        probe_cv=3, progress=not args.quick)
    print(mp.analyze(model, task, out=args.out, config=config).summary())


if __name__ == "__main__":
    main()
