"""``decodability``: can each constituent be read out linearly at each hook point, and by how
much more than a probe that memorises could manage?

Pipeline: pooled activations per hook (and the input baseline) -> one fold assignment shared by
every hook and constituent (group-aware, stratified) -> nested cross-validation of linear probes
on the real labels and on Hewitt & Liang control labels -> scores with cluster-bootstrap
intervals, permutation p-values corrected across hooks x constituents, and the held-out
(compositional) regime: fit on every in-distribution example, score on unseen combinations.
"""
from __future__ import annotations

import dataclasses
import warnings
import zlib
from dataclasses import dataclass
from functools import partial
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..models import HookedModel, wrap
from ..subroutine import check_runs, index_inputs
from .activations import (INPUT, POOLINGS, RENAMED_VALUES, check_hooks, collect, default_hooks,
                          input_rows, n_examples, pooling_name)
from . import mdl, measures  # noqa: F401  (importing mdl registers its measure)
from .folds import Splits, control_labels, nested_splits
from .linear import ENGINES, fit_predict, free_cores
from .report import ProbeReport
from .._stats import CORRECTIONS, adjust_pvalues
from .._validate import (Bool, Device, Int, OneOf, Real, Strings, as_tuple, check,
                         configured, renamed)

# The random streams of a run: the folds', the control task's, then one per built-in measure
# (a registered measure gets a stream seeded from its name).
_STREAMS = ("folds", "control", "score", "mdl")


@dataclass(frozen=True)
class ProbeConfig:
    """How probes are fitted and tested. Defaults follow common probing practice: 5 outer x 3
    inner folds, C in logspace(-4, 2), alpha in logspace(-3, 4), Hewitt & Liang control tasks.

    ``pooling``: how a sequence's positions become probe rows: "mean" (over the attention mask),
    "first", "last", or "tokens" (every real position is its own row; the control task then
    draws a label per token type). ``cv`` outer folds; ``inner_cv`` folds choose C (logistic, from ``c_grid``) or alpha (ridge,
    from ``alpha_grid``); ``control``: fit Hewitt & Liang control tasks; ``n_permutations`` /
    ``n_bootstrap``: 0 turns p-values / intervals off; ``correction``: "holm", "bh" or None;
    ``input_baseline``: add the probe on the raw inputs (row ``hook="input"``), whose features
    are capped at ``max_input_dim`` by a fixed random projection; ``device``: the torch engine's
    device (default: CUDA when available). ``measure``: a name or a tuple of names of
    :mod:`.measures`: "score" (always reported), "mdl" (the online codelength and compression
    of :mod:`.mdl` for discrete constituents, on the real and the control labels) and any
    measure registered with :func:`.measures.register`. ``threads``: CPU threads of either engine
    (None: the cores free now, see :func:`.linear.free_cores`; ``MODPROBE_THREADS`` sets it too).
    """

    pooling: str = "mean"
    cv: int = 5
    inner_cv: int = 3
    control: bool = True
    seed: int = 0
    engine: str = "torch"
    c_grid: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 2, 7))
    alpha_grid: tuple[float, ...] = tuple(float(a) for a in np.logspace(-3, 4, 8))
    n_permutations: int = 1000
    n_bootstrap: int = 1000
    ci: float = 0.95
    correction: str | None = "holm"
    input_baseline: bool = True
    max_input_dim: int = 4096
    batch_size: int = 64
    max_iter: int = 1000
    tol: float = 1e-6
    device: str | None = None
    measure: tuple[str, ...] = ("score",)
    threads: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "pooling", pooling_name(self.pooling, "ProbeConfig.pooling",
                                                         stacklevel=4))
        as_tuple(self, "measure")
        check(self, {"measure": Strings()})
        named = list(self.measure)
        for old, new in RENAMED_VALUES["measure"].items():
            named = tuple(renamed(m, old, new, "ProbeConfig.measure", 5) for m in named)
        object.__setattr__(self, "measure", tuple(dict.fromkeys(("score", *named))))
        as_tuple(self, "c_grid", "alpha_grid", scalars=True)
        check(self, {"pooling": OneOf(POOLINGS), "cv": Int(2), "inner_cv": Int(2),
                     "control": Bool(), "seed": Int(0), "engine": OneOf(ENGINES),
                     "c_grid": Real(0, low_open=True, grid=True),
                     "alpha_grid": Real(0, low_open=True, grid=True),
                     "n_permutations": Int(0), "n_bootstrap": Int(0), "ci": Real(0, 1, True, True),
                     "correction": OneOf(CORRECTIONS, none=True), "input_baseline": Bool(),
                     "max_input_dim": Int(1), "batch_size": Int(1), "max_iter": Int(1),
                     "tol": Real(0, low_open=True), "device": Device(),
                     "threads": Int(1, none=True)},
              {"cv": "cross-validation needs at least 2 folds", "ci": "e.g. 0.95"})
        unknown = sorted(set(self.measure) - set(measures.names()))
        if unknown:
            raise ValueError(f"ProbeConfig.measure has unknown measures {unknown}; choose among "
                             f"{measures.names()}, e.g. ('score', 'mdl'), or register one "
                             "with modprobe.probes.measures.register")


@dataclass
class _Data:
    inputs: Any
    labels: Mapping[str, Any]
    groups: np.ndarray | None  # (N,) dense combination ids
    n: int


@dataclass
class _Constituent:
    name: str
    values: torch.Tensor  # (N,) class ids (long) or floats
    heldout: torch.Tensor | None  # (N_heldout,) on the same classes
    n_classes: int | None  # None: continuous


def decodability(model: Any, inputs: Any, constituents: Mapping[str, Any] | None = None,
                 config: ProbeConfig | None = None, *, hooks: Sequence[str] | None = None,
                 groups: Any = None, heldout: Any = None, label: str = "model",
                 progress: bool = True, **options: Any) -> ProbeReport:
    """Linear decodability of every constituent at every hook point, with controls.

    ``model``: a HookedModel or anything ``modprobe.wrap`` accepts. ``inputs``: a tensor, a dict
    of tensors (``attention_mask`` is used for pooling), or a list of strings for a model with a
    tokenizer. ``constituents``: ``{name: (N,) labels}``; integer, bool or string labels are
    classes (multinomial logistic regression, scored by accuracy), floats are continuous (ridge,
    scored by R^2); the row's ``metric`` says which the ``score`` columns hold. An
    object with ``.inputs``, ``.labels`` (and ``.groups``) may stand for inputs + constituents.
    ``groups``: (N,) combination ids; examples of one combination never straddle folds.
    ``heldout``: ``(inputs, {name: labels}[, groups])`` (or such an object) from combinations
    never trained on: probes fitted on all in-distribution data are scored there too.
    The control task gives every input type (a distinct input; the token at a position for
    ``pooling="tokens"``) the label of another type of the same test fold (see
    :func:`.folds.control_labels`). It is drawn per input type even when groups are given:
    group-aware folds already keep a memorised combination from paying off, and a label drawn
    per combination would score *below* chance (a held-out combination's random label is
    under-represented in its training folds), inflating selectivity.
    ``hooks``: hook names (default: every block's output); the input baseline row is added
    unless ``input_baseline=False``. ``label`` names the model in the rows (column ``model``), so that reports of a
    pretrained and a random-init model concatenate. ``config``: a :class:`ProbeConfig`;
    ``options`` set its fields instead (``decodability(..., cv=3)``) or override the given
    config's.
    """
    config = configured(ProbeConfig, config, options, "decodability()")
    hm = wrap(model)
    data = _data(hm, inputs, constituents, groups)
    held = _heldout_data(hm, heldout)
    parts = _constituents(data, held)
    hooks = check_hooks(hm, list(hooks) if hooks is not None else default_hooks(hm))
    if INPUT not in hooks and config.input_baseline:
        hooks = [INPUT, *hooks]
    sets = _rows(config, hm, hooks, [data] if held is None else [data, held], progress)
    rngs = dict(zip(_STREAMS, (np.random.default_rng(s) for s in
                               np.random.SeedSequence(config.seed).spawn(len(_STREAMS)))))
    splits = nested_splits(sets[0].unit, _strata(parts, sets[0]), config.cv, config.inner_cv,
                           rngs["folds"], "groups" if data.groups is not None else "examples")
    run = _Run(config, hooks, sets, splits, rngs, label, progress)
    rows = [row for discrete in (True, False)
            for row in run.probe([c for c in parts if (c.n_classes is not None) == discrete])]
    order = {(h, c.name): i for i, (h, c) in enumerate((h, c) for h in hooks for c in parts)}
    rows.sort(key=lambda r: order[r["hook"], r["constituent"]])
    adjusted = (adjust_pvalues([r["p_value"] for r in rows], config.correction)
                if config.correction and config.n_permutations else [None] * len(rows))
    for row, p in zip(rows, adjusted):
        row["p_adjusted"] = p
    summary = dict(dataclasses.asdict(config), hooks=hooks, n_examples=data.n,
                   n_rows=sets[0].n, n_heldout_rows=sets[1].n if held is not None else None,
                   constituents={c.name: "accuracy" if c.n_classes else "r2" for c in parts},
                   groups=data.groups is not None)
    return ProbeReport(rows, {label: summary})


class _Run:
    """One decodability run: probes every constituent of one kind at every hook."""

    def __init__(self, config: ProbeConfig, hooks: list[str], sets: list["_RowSet"],
                 splits: Splits, rngs: dict[str, np.random.Generator], label: str,
                 progress: bool):
        self.config, self.hooks, self.splits, self.label = config, hooks, splits, label
        self.rows, self.held = sets[0], (sets[1] if len(sets) > 1 else None)
        self.features = [torch.cat([s.features[h] for s in sets]) for h in hooks]
        self.heldout_split = None
        if self.held is not None:
            self.heldout_split = (np.arange(self.rows.n), self.rows.n + np.arange(self.held.n))
        self.rngs = rngs
        self.fit = partial(fit_predict, engine=config.engine, max_iter=config.max_iter,
                           tol=config.tol, device=config.device, progress=progress,
                           threads=config.threads or free_cores())  # measured once a run

    def rng(self, measure: str) -> np.random.Generator:
        """The measure's random stream, the same generator for every batch of the run."""
        if measure not in self.rngs:
            self.rngs[measure] = np.random.default_rng(
                [self.config.seed, zlib.crc32(measure.encode())])
        return self.rngs[measure]

    def probe(self, kind: list[_Constituent]) -> list[dict[str, Any]]:
        """Rows for constituents that are all discrete or all continuous."""
        if not kind:
            return []
        discrete = kind[0].n_classes is not None
        rows, held = self.rows, self.held
        real = [c.values[rows.example] for c in kind]
        controls = ([control_labels(y, rows.types, self.splits.fold_of_row, self.rngs["control"])
                     for y in real] if self.config.control else [])
        labels = torch.stack(real + controls)
        if held is not None:  # held-out rows follow; control labels there are never scored
            filler = torch.zeros(held.n, dtype=labels.dtype)
            labels = torch.cat([labels, torch.stack(
                [c.heldout[held.example] if c.heldout is not None else filler for c in kind]
                + [filler] * len(controls))], dim=1)
        columns = []
        for name in self.config.measure:
            batch = measures.ProbeBatch(
                config=self.config, hooks=self.hooks, constituents=[c.name for c in kind],
                discrete=discrete, features=self.features, labels=labels,
                n_classes=[c.n_classes for c in kind] * (1 + bool(controls)) if discrete else None,
                n_rows=rows.n, control=bool(controls),
                heldout=None if held is None else [
                    c.heldout[held.example] if c.heldout is not None else None for c in kind],
                heldout_split=self.heldout_split, splits=self.splits, unit=rows.unit,
                heldout_unit=None if held is None else held.unit,
                grid=(sorted(self.config.c_grid) if discrete  # strongest penalty first
                      else sorted(self.config.alpha_grid, reverse=True)),
                fit=self.fit, rng=self.rng(name))
            columns.append(_checked(name, measures.get(name).measure(batch), batch))
        out = []
        for h, hook in enumerate(self.hooks):
            for i, c in enumerate(kind):
                row = dict(model=self.label, hook=hook, constituent=c.name,
                           metric="accuracy" if discrete else "r2", n=rows.n)
                for cells in columns:
                    row.update(cells[h][i])
                out.append(row)
        return out


def _checked(name: str, cells: Any, batch: measures.ProbeBatch) -> list[list[dict[str, Any]]]:
    """A measure's output, refused unless it is one dict per hook and constituent."""
    shape = (len(batch.hooks), len(batch.constituents))
    if (not isinstance(cells, (list, tuple)) or len(cells) != shape[0]
            or any(not isinstance(c, (list, tuple)) or len(c) != shape[1]
                   or not all(isinstance(d, dict) for d in c) for c in cells)):
        raise TypeError(f"probe measure {name!r} must return one dict of columns per hook and "
                        f"constituent ({shape[0]} lists of {shape[1]} dicts)")
    return cells


# --------------------------------------------------------------------- inputs and labels
def _data(hm: HookedModel, inputs: Any, labels: Any, groups: Any) -> _Data:
    if labels is None:
        if not (hasattr(inputs, "inputs") and hasattr(inputs, "labels")):
            raise TypeError("pass constituents={name: (N,) labels}, or one object with .inputs "
                            "and .labels (e.g. task.constituents) in place of inputs")
        inputs, labels, groups = (inputs.inputs, inputs.labels,
                                  groups if groups is not None else getattr(inputs, "groups", None))
    if not isinstance(labels, Mapping) or not labels:
        raise TypeError("constituents must be a non-empty dict {name: (N,) labels}, got "
                        f"{type(labels).__name__}")
    inputs = _tokenized(hm, inputs)
    n = n_examples(inputs)
    if n:
        check_runs(hm, index_inputs(inputs, torch.arange(min(n, 2))), "probe inputs")
    return _Data(inputs, labels, None if groups is None else _ids(groups, n, "groups"), n)


def _heldout_data(hm: HookedModel, heldout: Any) -> _Data | None:
    if heldout is None:
        return None
    if hasattr(heldout, "inputs") and hasattr(heldout, "labels"):
        return _data(hm, heldout, None, None)
    if isinstance(heldout, (tuple, list)) and len(heldout) in (2, 3):
        return _data(hm, heldout[0], heldout[1], heldout[2] if len(heldout) == 3 else None)
    raise TypeError("heldout must be (inputs, {name: labels}) or (inputs, labels, groups), or an "
                    f"object with .inputs and .labels; got {type(heldout).__name__}")


def _tokenized(hm: HookedModel, inputs: Any) -> Any:
    if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(t, str) for t in inputs):
        if hm.tokenizer is None:
            raise TypeError("inputs are strings but the model has no tokenizer: tokenize them "
                            "first and pass the tokenizer's output (a dict of tensors)")
        return dict(hm.tokenizer(list(inputs), padding=True, return_tensors="pt"))
    return inputs


def _ids(values: Any, n: int, what: str) -> np.ndarray:
    """Dense ids 0..k-1 of (N,) labels of any hashable dtype."""
    arr = _array(values, what)
    if len(arr) != n:
        raise ValueError(f"{what} has {len(arr)} entries but the inputs hold {n} examples; pass "
                         "one per example")
    return np.unique(arr, return_inverse=True)[1].reshape(-1)


def _array(values: Any, what: str) -> np.ndarray:
    arr = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be one label per example, shape (N,); got shape {arr.shape}")
    return arr


def _constituents(data: _Data, held: _Data | None) -> list[_Constituent]:
    if held is not None and set(held.labels) - set(data.labels):
        raise ValueError(f"heldout labels {sorted(set(held.labels) - set(data.labels))} name no "
                         f"constituent; constituents are {sorted(data.labels)}")
    parts = []
    for name, values in data.labels.items():
        arr = _array(values, f"constituent {name!r}")
        if len(arr) != data.n:
            raise ValueError(f"constituent {name!r} has {len(arr)} labels but the inputs hold "
                             f"{data.n} examples; pass one label per example")
        held_arr = None
        if held is not None and name in held.labels:
            held_arr = _array(held.labels[name], f"heldout constituent {name!r}")
            if len(held_arr) != held.n:
                raise ValueError(f"heldout constituent {name!r} has {len(held_arr)} labels but "
                                 f"the heldout inputs hold {held.n} examples")
            if (held_arr.dtype.kind == "f") != (arr.dtype.kind == "f"):
                raise TypeError(f"constituent {name!r} is {arr.dtype} but its heldout labels are "
                                f"{held_arr.dtype}: use one kind (classes or floats) for both")
        if len(np.unique(arr)) < 2 and len(data.labels) > 1:
            # e.g. the strength of a module no training combination uses: nothing to decode
            warnings.warn(f"constituent {name!r} takes one value ({arr[0]!r}) in every example; "
                          "it is left out of the probes", stacklevel=4)
            continue
        parts.append(_constituent(name, arr, held_arr))
    return parts


def _constituent(name: str, arr: np.ndarray, held: np.ndarray | None) -> _Constituent:
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or (held is not None and not np.isfinite(held).all()):
            raise ValueError(f"constituent {name!r} has NaN or infinite labels")
        if arr.min() == arr.max():
            raise ValueError(f"constituent {name!r} is constant ({arr[0]}): nothing to decode")
        return _Constituent(name, torch.as_tensor(arr, dtype=torch.float64),
                            None if held is None else torch.as_tensor(held, dtype=torch.float64),
                            None)
    if arr.dtype.kind not in "biuUSO":
        raise TypeError(f"constituent {name!r} has labels of dtype {arr.dtype}; use integers, "
                        "bools or strings for classes and floats for continuous values")
    classes, codes = np.unique(np.concatenate([arr, held if held is not None else arr[:0]]),
                               return_inverse=True)
    codes = torch.as_tensor(codes.reshape(-1), dtype=torch.long)
    if len(np.unique(arr)) < 2:
        raise ValueError(f"constituent {name!r} has a single class ({arr[0]!r}) among the "
                         "in-distribution examples: a probe needs at least two")
    return _Constituent(name, codes[:len(arr)], codes[len(arr):] if held is not None else None,
                        len(classes))


def _strata(parts: list[_Constituent], rows: "_RowSet") -> np.ndarray:
    """Stratification key per fold unit: the joint class of its discrete constituents."""
    first = np.unique(rows.unit, return_index=True)[1]
    discrete = [c.values[rows.example].numpy()[first] for c in parts if c.n_classes is not None]
    if not discrete:
        return np.zeros(len(first), dtype=np.int64)
    return np.unique(np.stack(discrete, 1), axis=0, return_inverse=True)[1].reshape(-1)


# --------------------------------------------------------------------- rows of features
@dataclass
class _RowSet:
    features: dict[str, torch.Tensor]  # hook -> (R, D)
    example: torch.Tensor  # (R,) example of each row
    types: np.ndarray  # (R,) input type of each row: the control task's unit
    unit: np.ndarray  # (R,) fold / bootstrap unit: group, else example; dense ids

    @property
    def n(self) -> int:
        return len(self.example)


def _rows(config: ProbeConfig, hm: HookedModel, hooks: list[str], sets: list[_Data],
          progress: bool) -> list[_RowSet]:
    """Features of every input set at every hook (the input baseline shares one vocabulary)."""
    base = input_rows([s.inputs for s in sets], config.pooling, config.max_input_dim, config.seed)
    model_hooks = [h for h in hooks if h != INPUT]
    out = []
    for i, data in enumerate(sets):
        mine = base[i] if base is not None else None
        feats, example = {}, mine.example if mine is not None else None
        if model_hooks:
            feats, example = collect(hm, data.inputs, model_hooks, config.pooling,
                                     config.batch_size, progress)
        aligned = mine is not None and torch.equal(mine.example, example)
        if INPUT in hooks:
            if not aligned:
                raise ValueError(f"the input baseline has no row per {config.pooling!r}-pooled "
                                 "activation row for these inputs; pass input_baseline=False "
                                 "(and leave 'input' out of hooks)")
            feats[INPUT] = mine.features[INPUT]
        types = mine.types.numpy() if aligned else np.arange(len(example))
        unit = data.groups[example.numpy()] if data.groups is not None else example.numpy()
        out.append(_RowSet(feats, example, types,
                           np.unique(unit, return_inverse=True)[1].reshape(-1)))
    return out
