"""The task contract every family fills, and the public machinery to build a task of your own.

A family describes one example set at a time (``draw``, returning a :class:`Draw`);
:func:`assemble` turns draws into the splits of a :class:`Task`, so every family, built in or
yours, gets the same seeding, held-out handling and layout. Seeds are derived per (split, view)
stream (:func:`stream_rng`), so the training data do not change when ``n_test`` does.
:func:`split_combinations` holds out combinations, :func:`cycle` and :func:`balanced` sample
combinations and cells evenly. The README's "Your own compositional task" shows the recipe.
"""
from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..subroutine import Subroutine

MAX_EXAMPLES = 10_000_000
COMPETENCE_THRESHOLD = 0.5  # see modprobe.fitting.competence


@dataclass
class Split:
    """Train / test data of one view of a task; ``*_groups``: each example's combination id."""

    train: Subroutine
    test: Subroutine
    train_groups: torch.Tensor | None = None
    test_groups: torch.Tensor | None = None


@dataclass
class Constituents:
    """Per-example constituent labels for probes.

    ``inputs`` are in the task's input format; ``labels`` maps a constituent to ``(N,)`` int64
    (discrete) or float32 (continuous) labels; ``groups`` is the combination id of each example,
    so cross-validation folds can keep a combination on one side.
    """

    inputs: Any
    labels: dict[str, torch.Tensor]
    groups: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(next(iter(self.labels.values())))


@dataclass
class Task:
    """A compositional task: whole task, one dataset per subroutine, constituents, held-out data.

    Every :class:`Subroutine` of a task shares one output format (one readout head scores all of
    them); a subroutine's labels depend on that subroutine only. ``heldout`` holds composite test
    data on combinations never used for training (``None`` where nothing is held out).
    ``options`` are the options the task was built with; ``info`` what was computed from them.
    ``competence_threshold``: how far from chance (0) to a perfect score (1) the fitted model
    must get on the composite task before its modularity is judged.
    """

    name: str
    composite: Split
    subroutines: dict[str, Split]
    constituents: Constituents
    heldout: Subroutine | None
    heldout_constituents: Constituents | None
    n_classes: int | None
    input_kind: str
    options: dict
    info: dict = field(default_factory=dict)
    competence_threshold: float = COMPETENCE_THRESHOLD

    def describe(self) -> str:
        """One line for reports: what the task is, its sizes and what is held out."""
        kind = f"{self.n_classes} classes" if self.n_classes else "regression"
        held = (f", held-out {len(self.heldout)} examples on "
                f"{len(self.info.get('heldout_combinations', []))} unseen combinations"
                if self.heldout is not None else ", nothing held out")
        return (f"{self.name} ({self.info.get('summary', self.input_kind)}): {kind}, "
                f"{self.input_kind} inputs, train {len(self.composite.train)} / test "
                f"{len(self.composite.test)}, subroutines {', '.join(self.subroutines)}, "
                f"constituents {', '.join(_shorten(list(self.constituents.labels)))}{held}, "
                f"seed {self.options.get('seed')}")


@dataclass(frozen=True)
class TaskConfig:
    """Options every family takes. ``frac_ood``: fraction of combinations never trained on."""

    seed: int = 0
    n_train: int = 512
    n_test: int = 256
    frac_ood: float = 0.25
    batch_size: int = 64

    def __post_init__(self) -> None:
        check_int("seed", self.seed, 0, 2 ** 63 - 1)
        check_int("n_train", self.n_train, 8, MAX_EXAMPLES)
        check_int("n_test", self.n_test, 8, MAX_EXAMPLES)
        check_fraction("frac_ood", self.frac_ood)
        check_int("batch_size", self.batch_size, 1, MAX_EXAMPLES)

    def options(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass
class Draw:
    """One sampled example set before encoding.

    ``inputs``: raw inputs (anything your ``encode`` turns into model inputs); ``targets``:
    ``(n, ...)`` labels of the view drawn (int for classes, float for regression); ``groups``:
    ``(n,)`` combination id of each example; ``labels``: ``{constituent: (n,) values}``.
    """

    inputs: Any
    targets: np.ndarray
    groups: np.ndarray
    labels: dict[str, np.ndarray]


class Family(Protocol):
    """What :func:`assemble` needs from a task family: subroutine names, ``draw`` and ``encode``."""

    subroutines: tuple[str, ...]

    def draw(self, view: str, n: int, combos: np.ndarray, rng: np.random.Generator) -> Draw:
        """``n`` examples of ``view`` ("composite", "constituents" or a subroutine name), their
        combinations taken from ``combos``. A subroutine's targets depend on that subroutine only
        and use the composite task's label space."""

    def encode(self, raw: list[Any]) -> list[Any]:
        """Raw inputs of every draw -> model inputs, jointly (e.g. padded to one length)."""


# ------------------------------------------------------------------------ assembly
def assemble(name: str, config: TaskConfig, family: Family, train_combos: np.ndarray,
             heldout_combos: np.ndarray, *, n_classes: int | None, chance: float,
             input_kind: str, views: Mapping[str, View] | None = None, info: dict | None = None,
             metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
             options: dict | None = None, progress: bool = False,
             competence_threshold: float = COMPETENCE_THRESHOLD) -> Task:
    """Draw every split of a task from ``family`` and wrap them in the contract's types.

    Training splits (composite, each subroutine, constituents) draw from ``train_combos``; the
    held-out split from ``heldout_combos`` (empty: nothing held out). ``n_classes``: the label
    space of the composite task (``None`` for regression); ``chance``: the metric of a guess;
    ``input_kind``: a word for reports ("tokens", "image", "vectors", ...). ``views``: per view
    ("composite" or a subroutine name), how it is scored where it differs from those defaults
    (:class:`View`), e.g. :func:`relation_views`.
    """
    info = {} if info is None else info
    if not family.subroutines or len(set(family.subroutines)) != len(family.subroutines):
        raise ValueError(f"a family needs distinct subroutine names, got {family.subroutines!r}")
    if len(train_combos) == 0:
        raise ValueError("train_combos is empty: training needs at least one combination")
    seed, n_train, n_test = config.seed, config.n_train, config.n_test
    plan: list[tuple[str, str, int, np.ndarray]] = [("composite", "train", n_train, train_combos),
                                                    ("composite", "test", n_test, train_combos)]
    for sub in family.subroutines:
        plan += [(sub, "train", n_train, train_combos), (sub, "test", n_test, train_combos)]
    plan.append(("constituents", "test", n_test, train_combos))
    if len(heldout_combos):
        plan += [("composite", "heldout", n_test, heldout_combos),
                 ("constituents", "heldout", n_test, heldout_combos)]
    draws = {(view, split): family.draw(view, n, combos, stream_rng(seed, view, split))
             for view, split, n, combos in tqdm(plan, desc=f"{name} task", disable=not progress)}
    for (view, split_name, n, _), draw in zip(plan, draws.values()):
        _check_draw(view, split_name, n, draw, n_classes)
    encoded = dict(zip(draws, family.encode([d.inputs for d in draws.values()])))
    if len(encoded) != len(draws):
        raise ValueError(f"encode returned {len(encoded)} input sets for {len(draws)} draws: it "
                         "must return one per draw, in order")

    views = dict(views or {})
    unknown = sorted(set(views) - {"composite", *family.subroutines})
    if unknown:
        raise ValueError(f"views name {unknown}, which are not views of this task: use "
                         f"'composite' or a subroutine, {list(family.subroutines)}")

    def subroutine(key: tuple[str, str]) -> Subroutine:
        targets = torch.from_numpy(np.ascontiguousarray(draws[key].targets))
        view = views.get(key[0], View())
        return Subroutine((encoded[key], targets),
                          chance=chance if view.chance is None else view.chance,
                          metric=view.metric or metric, loss=view.loss,
                          batch_size=config.batch_size, reduce=view.reduce)

    def split(view: str) -> Split:
        return Split(subroutine((view, "train")), subroutine((view, "test")),
                     _groups(draws[(view, "train")]), _groups(draws[(view, "test")]))

    def constituents(split_name: str) -> Constituents:
        draw = draws[("constituents", split_name)]
        return Constituents(encoded[("constituents", split_name)],
                            {k: _label_tensor(v) for k, v in draw.labels.items()}, _groups(draw))

    held = len(heldout_combos) > 0
    return Task(name=name, composite=split("composite"),
                subroutines={sub: split(sub) for sub in family.subroutines},
                constituents=constituents("test"),
                heldout=subroutine(("composite", "heldout")) if held else None,
                heldout_constituents=constituents("heldout") if held else None,
                n_classes=n_classes, input_kind=input_kind,
                options=options if options is not None else config.options(), info=info,
                competence_threshold=competence_threshold)


def _check_draw(view: str, split: str, n: int, draw: Any, n_classes: int | None) -> None:
    """A family's draw has one target, group and constituent label per example."""
    where = f"draw({view!r}) for the {split} split"
    if not isinstance(draw, Draw):
        raise TypeError(f"{where} returned {type(draw).__name__}; return a modprobe.tasks.Draw")
    sizes = {"targets": len(draw.targets), "groups": len(draw.groups),
             **{f"labels[{k!r}]": len(v) for k, v in draw.labels.items()}}
    wrong = {k: v for k, v in sizes.items() if v != n}
    if wrong:
        raise ValueError(f"{where} asked for {n} examples but gave {wrong}")
    targets = np.asarray(draw.targets)
    if n_classes is not None:
        scored = targets[targets != -100]
        if not np.issubdtype(targets.dtype, np.integer) or (
                scored.size and (scored.min() < 0 or scored.max() >= n_classes)):
            raise ValueError(f"{where}: targets must be integers in 0..{n_classes - 1} (or -100 "
                             f"for ignored positions), got dtype {targets.dtype}, range "
                             f"{scored.min() if scored.size else None}.."
                             f"{scored.max() if scored.size else None}")
    elif not np.issubdtype(targets.dtype, np.floating):
        raise ValueError(f"{where}: n_classes=None means regression, so targets must be floats, "
                         f"got {targets.dtype}; pass n_classes= for class labels")


def _groups(draw: Draw) -> torch.Tensor:
    return torch.from_numpy(draw.groups.astype(np.int64))


def _label_tensor(values: np.ndarray) -> torch.Tensor:
    if np.issubdtype(values.dtype, np.floating):
        return torch.from_numpy(values.astype(np.float32))
    return torch.from_numpy(values.astype(np.int64))


def stream_rng(seed: int, *stream: str) -> np.random.Generator:
    """An independent generator per named stream (crc32, not ``hash``: stable across runs)."""
    keys = [zlib.crc32(s.encode()) for s in stream]
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


# ------------------------------------------------------------------------ balanced sampling
def balanced(rng: np.random.Generator, n: int, weights: Sequence[float]) -> np.ndarray:
    """``n`` cell ids, shuffled, with counts as close to ``n * weights`` as integers allow."""
    weights = np.asarray(weights, dtype=float) / np.sum(weights)
    counts = np.floor(n * weights).astype(int)
    remainder = n * weights - counts
    counts[np.argsort(-remainder, kind="stable")[: n - counts.sum()]] += 1
    return rng.permutation(np.repeat(np.arange(len(weights)), counts))


def cycle(rng: np.random.Generator, n: int, values: np.ndarray) -> np.ndarray:
    """``n`` draws from ``values``: each value occurs ``n // len(values)`` times or once more."""
    return np.asarray(values)[balanced(rng, n, np.ones(len(values)))]


# Two binary relations a, b (vision, language). The model answers both with one head of four
# logits, two per relation (:class:`RelationHead`): the composite task is scored on both at once
# (loss: the two cross-entropies, metric: both right), each subroutine on its own pair, so one
# relation's answer never depends on the other's logits. Targets of the composite are the cell
# 2a + b. Every view draws the four cells equally, so each bit is independent of the other.
RELATION_CLASSES = 4


def relation_cells(rng: np.random.Generator, view: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Target bits (a, b) for ``n`` examples of ``view`` of a two-relation task."""
    cells = balanced(rng, n, np.ones(RELATION_CLASSES))
    return cells // 2, cells % 2


def relation_targets(view: str, subroutines: Sequence[str], a: np.ndarray,
                      b: np.ndarray) -> np.ndarray:
    """Composite (and other views): the cell 2a + b; first subroutine: a; second: b."""
    if view == subroutines[0]:
        return a.astype(np.int64)
    if view == subroutines[1]:
        return b.astype(np.int64)
    return (2 * a + b).astype(np.int64)


@dataclass(frozen=True)
class RelationHead:
    """The two logits of one relation (``index`` 0: a, 1: b) from a two-relation head."""

    index: int

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.shape[-1] != RELATION_CLASSES:
            raise ValueError(f"a two-relation subroutine reads a head of {RELATION_CLASSES} "
                             f"logits (two per relation), got {logits.shape[-1]}")
        return logits[..., 2 * self.index:2 * self.index + 2]


def relation_loss(logits: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Both relations' cross-entropies, summed; ``cells`` = 2a + b."""
    return (torch.nn.functional.cross_entropy(RelationHead(0)(logits), cells // 2)
            + torch.nn.functional.cross_entropy(RelationHead(1)(logits), cells % 2))


def both_correct(logits: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Share of examples whose two relations are both answered right; ``cells`` = 2a + b."""
    right_a = RelationHead(0)(logits).argmax(-1) == cells // 2
    right_b = RelationHead(1)(logits).argmax(-1) == cells % 2
    return (right_a & right_b).float().mean()


@dataclass(frozen=True)
class View:
    """How one view of a task is scored where it differs from the task's defaults: ``reduce``
    (:attr:`Subroutine.reduce`), ``loss``, ``metric`` and ``chance``."""

    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    chance: float | None = None


def relation_views(subroutines: Sequence[str]) -> dict[str, View]:
    """The views of a two-relation task: the composite on both relations, each subroutine on its
    own relation's pair of logits."""
    return {"composite": View(loss=relation_loss, metric=both_correct, chance=0.25),
            subroutines[0]: View(reduce=RelationHead(0), chance=0.5),
            subroutines[1]: View(reduce=RelationHead(1), chance=0.5)}


# ------------------------------------------------------------------------ held-out combinations
def n_heldout(n_combos: int, frac_ood: float) -> int:
    """How many of ``n_combos`` combinations ``frac_ood`` holds out (at least one when > 0)."""
    return max(int(n_combos * frac_ood), 1) if frac_ood > 0 else 0


def holdout(rng: np.random.Generator, candidates: np.ndarray, n_out: int,
            valid: Callable[[np.ndarray], bool], need: str, attempts: int = 1000) -> np.ndarray:
    """Pick ``n_out`` of ``candidates`` to hold out such that ``valid(held_out)`` holds.

    Random splits are redrawn until valid (as in Redhardt et al.'s code); when ``attempts`` draws
    all fail, which happens when too much is held out, the error names the requirement ``need``.
    """
    if n_out == 0:
        return candidates[:0]
    for _ in range(attempts):
        held = np.sort(rng.choice(candidates, size=n_out, replace=False))
        if valid(held):
            return held
    raise ValueError(f"holding out {n_out} of {len(candidates)} combinations: no random choice in "
                     f"{attempts} tries keeps {need}; lower frac_ood")


def split_combinations(combos: Sequence[int] | np.ndarray, config: TaskConfig,
                       valid: Callable[[np.ndarray], bool] | None = None,
                       need: str = "the training combinations valid"
                       ) -> tuple[np.ndarray, np.ndarray]:
    """``(train, held out)`` combination ids: ``config.frac_ood`` of ``combos`` held out, drawn
    with ``config.seed``. ``valid(train)`` may demand what training must keep (e.g. every value of
    each constituent); random choices are redrawn until it holds, and ``need`` names it in the
    error when none does."""
    combos = np.asarray(combos)
    check = (lambda held: valid(np.setdiff1d(combos, held))) if valid else (lambda held: True)
    held = holdout(stream_rng(config.seed, "heldout"), combos,
                   n_heldout(len(combos), config.frac_ood), check, need)
    return np.setdiff1d(combos, held), held


# ------------------------------------------------------------------------ validation
def check_int(name: str, value: Any, lo: int, hi: int) -> None:
    """A ValueError naming ``name`` unless ``value`` is an integer in ``[lo, hi]``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")


def check_fraction(name: str, value: Any) -> None:
    """A ValueError naming ``name`` unless ``value`` is a number in ``[0, 1)``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """A ValueError naming ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def make_config(cls: type[TaskConfig], family: str, options: dict) -> TaskConfig:
    """``cls(**options)`` with an error that lists the valid options on a misspelt one."""
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for task family {family!r}; "
                         f"valid options: {valid}")
    return cls(**options)


def _shorten(items: list[str], keep: int = 6) -> list[str]:
    return items if len(items) <= keep else items[:keep] + [f"... ({len(items)} in all)"]
