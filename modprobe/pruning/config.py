"""How a subnetwork is searched for: method, granularity, which tensors, and the schedule."""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, fields
from typing import Any

from .._validate import Bool, Device, Int, OneOf, Real, Strings, as_tuple, check
from . import methods
from .layout import GRANULARITIES

NECESSITY = ("peel", "none")
# Share of a subroutine's data held out to choose among grid settings when no validation data is
# given (the analysis holds out the same share by default).
HOLDOUT = 0.2
_CONSTRAINTS = {
    "params": Strings(none=True), "l0_lambda": Real(0, grid=True), "init": Real(grid=True),
    "margin": Real(), "beta_max": Real(1), "epochs": Int(1), "lr": Real(0, low_open=True),
    "patience": Int(0), "stop_beta": Real(1), "density": Real(0, 1, low_open=True, grid=True),
    "tolerance": Real(0), "dropout": Bool(), "seed": Int(0), "device": Device(),
    "max_rounds": Int(1), "break_fraction": Real(0, 1, high_open=True),
    "peel_decay": Real(0, 1, low_open=True), "stable_total": Real(0, 1),
    "share_prefix": Bool(),
}


@dataclass(frozen=True)
class MaskConfig:
    """Settings of one mask search (scikit-learn style: plain values, validated on creation).

    ``method``: ``"continuous"`` (continuous sparsification, Savarese et al. 2020),
    ``"hard_concrete"`` (Louizos et al. 2018 L0 gates), ``"magnitude"`` (keep the top
    ``density`` fraction of ``|W|`` per tensor; no training, a baseline) or any method
    registered with :func:`modprobe.pruning.methods.register`.
    ``granularity``: one mask entry per ``"weight"``, per output ``"neuron"`` (a row of a Linear,
    a column of HF ``Conv1D``, a whole conv output channel) or per attention ``"head"``.
    ``params``: glob patterns over ``model.param_names()``; ``None`` masks every weight matrix and
    conv kernel except embedding/unembedding tables (tensors the forward pass never uses are
    dropped with a note).
    ``l0_lambda``: weight of the sparsity penalty ``λ · mean(mask)`` over all N masked entries
    (the papers' ``λ' · Σ mask`` is ``λ = λ' · N``). One λ does not carry across models and
    tasks (the best λ ran from 1 on small MLPs to 300 on MiniLM), so the default is a grid,
    (1, 10, 100, 1000), searched on held-out data.
    ``init`` and ``margin`` (``"continuous"``): every mask logit starts at ``init`` (s0, default 0:
    every weight undecided, on the threshold) and the gate is
    ``min(1, sigmoid(β·s) / sigmoid(β·c))`` with ``c = s0 + margin·(1 - 1/β)``. At the first
    epoch (β = 1) c = s0, so training starts from exactly the unmasked function; a kept weight
    is never amplified; and c rises to about ``s0 + margin``, so a kept logit rests that far
    above the threshold instead of hovering on it. Starting undecided matters because a logit
    must first fall through s0 before it can be pruned (what these choices measured on MiniLM:
    ``docs/results.md``, "Subnetwork search").
    A tuple for ``l0_lambda``, ``init`` or ``density`` is a grid: every setting is trained and
    the sparsest mask whose metric on held-out data is within ``tolerance`` of the full model's
    wins (held-out data: ``validation=``, else 20% of the training data set aside).
    ``epochs``: length of the β schedule (1 to ``beta_max``, geometric); training stops early
    once β ≥ ``stop_beta`` and the hard mask has settled for ``patience`` epochs (the entries
    flipped in an epoch are at most 1% of those it keeps, or at most ``stable_total`` of all
    masked entries: on MiniLM about 4% of the few thousand kept entries still flip per epoch at
    the end of the schedule, a few in 10^5 of all entries), and only when the hard mask's
    keep-only metric on the held-out data (else the training data) is then within ``tolerance``
    of the unmasked model's: an unfaithful mask trains on (``patience=0`` never stops early).
    ``lr``: Adam's step on the logits (default: 0.01 for ``"continuous"``, 0.05 for the noisier
    ``"hard_concrete"`` gates, whose ``init`` is their log α, default 2: mostly open).
    ``dropout=False`` trains with dropout off.
    ``necessity``: ``"peel"`` (default) also finds every weight the subroutine can run on: the
    search is repeated on the model with the subnetworks found so far removed, until the
    remainder's held-out metric falls to ``chance + break_fraction · (full - chance)`` or
    ``max_rounds`` subnetworks were peeled (see :mod:`modprobe.pruning.necessity`). Their union
    is ``Subnetwork.necessary``, the set ablation removes; the first round stays ``masks``, the
    minimal sufficient subnetwork. ``"none"`` searches the sufficient subnetwork only (then an
    ablation tests a sufficient set, which a redundant network survives). Round r trains with
    ``l0_lambda · peel_decay^(r-1)`` (the chosen λ, then ever weaker penalties), so later rounds
    keep denser subnetworks and a wide module's many redundant paths are covered in a few rounds.
    ``share_prefix``: train the grid's settings together in one pass over the data, the layers
    below the first masked tensor run once per batch for all of them (each mask comes out
    identical to training it alone; see :mod:`modprobe.pruning.batched`).
    """

    method: str = "continuous"
    granularity: str = "weight"
    params: tuple[str, ...] | None = None
    l0_lambda: float | tuple[float, ...] = (1.0, 10.0, 100.0, 1000.0)
    init: float | tuple[float, ...] | None = None
    margin: float = 0.05
    beta_max: float = 200.0
    epochs: int = 20
    lr: float | None = None
    patience: int = 3
    stop_beta: float = 20.0
    density: float | tuple[float, ...] = 0.1
    tolerance: float = 0.02
    dropout: bool = False
    necessity: str = "peel"
    max_rounds: int = 8
    break_fraction: float = 0.25
    peel_decay: float = 0.5
    stable_total: float = 1e-4
    share_prefix: bool = True
    seed: int = 0
    device: str | None = None

    def __post_init__(self) -> None:
        as_tuple(self, "params", "l0_lambda", "init", "density")
        check(self, {"method": OneOf(methods.names()), "granularity": OneOf(GRANULARITIES),
                     "necessity": OneOf(NECESSITY)})
        method = methods.get(self.method)
        if self.lr is None:
            object.__setattr__(self, "lr", method.lr)
        if self.init is None:
            object.__setattr__(self, "init", method.init)
        check(self, _CONSTRAINTS, {"l0_lambda": "e.g. 100 or the grid (1, 10, 100, 1000)",
                                   "epochs": "a whole number of epochs, e.g. 20"})
        method.check(self)

    def replace(self, **changes: Any) -> "MaskConfig":
        """A copy with ``changes``; a new ``method`` brings its own ``lr`` and ``init`` defaults
        unless ``changes`` set them or this config had set them away from its method's."""
        old = methods.get(self.method)
        if changes.get("method", self.method) != self.method:
            for name in ("lr", "init"):
                if name not in changes and getattr(self, name) == getattr(old, name):
                    changes[name] = None
        return dataclasses.replace(self, **changes)

    def grid(self, name: str) -> tuple[float, ...]:
        """The values of ``l0_lambda``, ``init`` or ``density`` as a tuple (one value or a grid)."""
        value = getattr(self, name)
        return tuple(value) if isinstance(value, tuple) else (value,)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MaskConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
