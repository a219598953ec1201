"""Known-answer checks: planted models whose modular structure is known, and the verdicts found.

Every family solves two subroutines on x ~ N(0, I_16) and reads A from ``out[:, :2]`` and B from
``out[:, 2:]``; each is built and trained here, seeded, in seconds on a CPU:

- ``branches``: modular by architecture. A two-hidden-layer ReLU MLP of width ``w`` computes A
  from ``x[:8]``, a small conv net computes B from ``x[8:]`` (the MLP is far wider than A needs,
  so it holds redundant paths). Expected: isolated.
- ``block``: a dense MLP trained with block-diagonal weights (modular weights, no modular
  architecture). Expected: isolated.
- ``bottleneck``: both subroutines need one shared feature g = s0·s1 of ``x[:4]`` (A = [g > 0]
  XOR [a(x[4:10]) > 0], B likewise with ``x[10:]``), computed once by a shared module and passed
  through a one-unit bottleneck. Expected: shared.
- ``rotated``: the block-diagonal MLP with a linear middle ``mix`` between two randomly rotated
  16-dim spaces: the function is modular, but every entry of ``mix`` carries both subroutines.
  Only ``mix`` is masked. Expected: not isolated (weight masks must not claim modules there).
- ``unrotated``: the same model and masking without the rotation, the control that shows the
  ``rotated`` answer comes from the rotation. Expected: isolated.
- ``entangled``: one dense MLP trained on both subroutines without constraints. Expected: shared.
- ``*_random``: random-init (untrained) twins of ``branches``, ``block`` and ``entangled``.
  Expected: cannot judge (they do not solve the task).

``run_suite`` runs :func:`modprobe.pruning.train_subnetworks` with its defaults and
:func:`modprobe.ablation.run` on each (family, width, seed) cell and compares the verdicts with
the expected ones; ``benchmarks/validity.py`` prints the table.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from . import ablation, pruning
from ._results import Report, format_table
from .models import wrap
from .subroutine import Subroutine

NOT_ISOLATED = frozenset(v for v in ablation.VERDICTS if v != "isolated")
CANNOT_JUDGE = frozenset({"cannot judge"})


# ----------------------------------------------------------------------------- tasks
def _labels_independent(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (x[:, 0] * x[:, 1] + x[:, 2] > 0).long(), (x[:, 8] + x[:, 9] * x[:, 10] > 0).long()


def _labels_common(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both subroutines need the same two features p = x0·x1 and q = x2·x3: A = [p + q > 0],
    B = [p - q > 0] (independent fair bits)."""
    p, q = x[:, 0] * x[:, 1], x[:, 2] * x[:, 3]
    return (p + q > 0).long(), (p - q > 0).long()


def _labels_shared(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    g = x[:, 0] * x[:, 1] > 0
    a = x[:, 4] * x[:, 5] + x[:, 6] > 0
    b = x[:, 10] + x[:, 11] * x[:, 12] > 0
    return (g ^ a).long(), (g ^ b).long()


def _read_a(out: torch.Tensor) -> torch.Tensor:
    return out[:, :2]


def _read_b(out: torch.Tensor) -> torch.Tensor:
    return out[:, 2:]


# ----------------------------------------------------------------------------- models
def _mlp(n_in: int, width: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, n_out))


class Branches(nn.Module):
    """A: an MLP on ``x[:8]``; B: a conv net on ``x[8:]`` (8 positions, 1 channel)."""

    def __init__(self, width: int):
        super().__init__()
        self.a = _mlp(8, width, 2)
        self.b = nn.Sequential(nn.Conv1d(1, 16, 3, padding=1), nn.ReLU(),
                               nn.Conv1d(16, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
                               nn.Linear(128, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x[:, :8]), self.b(x[:, None, 8:])], dim=-1)


class Dense(nn.Module):
    """A dense three-layer MLP 16 -> w -> w -> 4 (``block`` and ``entangled``)."""

    def __init__(self, width: int):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(16, width), nn.Linear(width, width), nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class Bottleneck(nn.Module):
    """A shared module computes one feature of ``x[:4]``; A and B each combine it with their own."""

    def __init__(self, width: int):
        super().__init__()
        self.shared = nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 1))
        self.a_in, self.b_in = nn.Linear(6, width), nn.Linear(6, width)
        self.a_out = nn.Sequential(nn.Linear(width + 1, width), nn.ReLU(), nn.Linear(width, 2))
        self.b_out = nn.Sequential(nn.Linear(width + 1, width), nn.ReLU(), nn.Linear(width, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.shared(x[:, :4])
        a = self.a_out(torch.cat([g, torch.relu(self.a_in(x[:, 4:10]))], -1))
        b = self.b_out(torch.cat([g, torch.relu(self.b_in(x[:, 10:]))], -1))
        return torch.cat([a, b], dim=-1)


class Mixed(nn.Module):
    """16 -> w (ReLU) -> 16 (linear) -> 16 (linear ``mix``) -> w (ReLU) -> 4."""

    def __init__(self, width: int, k: int = 16):
        super().__init__()
        self.fc1, self.lin = nn.Linear(16, width), nn.Linear(width, k)
        self.mix, self.fc2, self.fc3 = nn.Linear(k, k), nn.Linear(k, width), nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mix(self.lin(torch.relu(self.fc1(x))))
        return self.fc3(torch.relu(self.fc2(h)))


def _block(rows: int, cols: int, in_split: int | None = None) -> torch.Tensor:
    """A two-block mask: the first half of the rows reads the first ``in_split`` columns."""
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    r, c = rows // 2, cols // 2 if in_split is None else in_split
    mask[:r, :c] = True
    mask[r:, c:] = True
    return mask


def _dense_blocks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Block-diagonal masks (True = allowed) for every weight matrix of Dense / Mixed."""
    out = {}
    for name, p in model.named_parameters():
        if p.dim() == 2:
            out[name] = _block(*p.shape, in_split=8 if p.shape[1] == 16 and name.startswith("fc1")
                               else None)
    return out


def _train(model: nn.Module, labels: Callable, seed: int, steps: int,
           allowed: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Adam on fresh N(0, I) batches, both subroutines' cross-entropy; ``allowed`` pins the
    weights outside its masks to 0 throughout."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, m in (allowed or {}).items():
            params[name].mul_(m)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        x = torch.randn(256, 16, generator=gen)
        ya, yb = labels(x)
        out = model(x)
        loss = (nn.functional.cross_entropy(out[:, :2], ya)
                + nn.functional.cross_entropy(out[:, 2:], yb))
        opt.zero_grad()
        loss.backward()
        for name, m in (allowed or {}).items():
            params[name].grad.mul_(m)
        opt.step()
        sched.step()
    return model.eval()


def _rotate(model: Mixed, seed: int) -> Mixed:
    """Rotate the spaces on both sides of ``mix`` by random orthogonal matrices (the function is
    unchanged: ``lin`` and ``mix`` are linear)."""
    gen = torch.Generator().manual_seed(20_000 + seed)
    k = model.mix.weight.shape[0]
    q1, _ = torch.linalg.qr(torch.randn(k, k, generator=gen))
    q2, _ = torch.linalg.qr(torch.randn(k, k, generator=gen))
    with torch.no_grad():
        model.lin.weight.copy_(q1 @ model.lin.weight)
        model.lin.bias.copy_(q1 @ model.lin.bias)
        model.mix.weight.copy_(q2 @ model.mix.weight @ q1.T)
        model.mix.bias.copy_(q2 @ model.mix.bias)
        model.fc2.weight.copy_(model.fc2.weight @ q2.T)
    return model


# ----------------------------------------------------------------------------- families
@dataclass(frozen=True)
class Planted:
    """One known-answer model: the module, its task's labels, which tensors to mask, the
    verdicts that are right for A and B, and A's planted module ({param: bool mask}) for
    precision and recall."""

    model: nn.Module
    labels: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    params: tuple[str, ...] | None
    expected: frozenset[str]
    module_a: dict[str, torch.Tensor] = field(default_factory=dict)


def _branches(width: int, seed: int, trained: bool = True) -> Planted:
    torch.manual_seed(seed)
    model = Branches(width)
    if trained:
        _train(model, _labels_independent, seed, steps=600)
    module = {"a.2.weight": torch.ones(width, width, dtype=torch.bool),
              "b.2.weight": torch.zeros(16, 16, 3, dtype=torch.bool)}
    return Planted(model.eval(), _labels_independent, ("a.2.weight", "b.2.weight"),
                   frozenset({"isolated"}) if trained else CANNOT_JUDGE, module)


def _dense(width: int, seed: int, blocks: bool, trained: bool = True) -> Planted:
    torch.manual_seed(seed)
    model = Dense(width)
    labels = _labels_independent if blocks else _labels_common
    allowed = _dense_blocks(model) if blocks else None
    if trained:
        _train(model, labels, seed, steps=600, allowed=allowed)
    module = {"fc2.weight": _a_half(_dense_blocks(model)["fc2.weight"])} if blocks else {}
    expected = ({"isolated"} if blocks else {"shared"}) if trained else CANNOT_JUDGE
    params = ("fc2.weight",) if blocks else ("fc1.weight", "fc2.weight")
    return Planted(model.eval(), labels, params, frozenset(expected), module)


def _a_half(allowed: torch.Tensor) -> torch.Tensor:
    """A's block of a block-diagonal mask: the top-left block."""
    out = torch.zeros_like(allowed)
    rows = allowed.shape[0] // 2
    out[:rows] = allowed[:rows]
    return out


def _bottleneck(width: int, seed: int) -> Planted:
    torch.manual_seed(seed)
    model = _train(Bottleneck(width), _labels_shared, seed, steps=1000)
    module = {n: torch.full_like(p, not n.startswith("b_"), dtype=torch.bool)
              for n, p in model.named_parameters() if p.dim() >= 2}
    params = ("shared.0.weight", "shared.2.weight", "a_out.0.weight", "b_out.0.weight")
    return Planted(model, _labels_shared, params, frozenset({"shared"}),
                   {n: m for n, m in module.items() if n in params})


def _mixed(width: int, seed: int, rotate: bool) -> Planted:
    torch.manual_seed(seed)
    model = Mixed(width)
    _train(model, _labels_independent, seed, steps=800, allowed=_dense_blocks(model))
    module = {"mix.weight": _a_half(_block(16, 16))}
    if rotate:
        return Planted(_rotate(model, seed), _labels_independent, ("mix.weight",),
                       NOT_ISOLATED, {"mix.weight": torch.zeros(16, 16, dtype=torch.bool)})
    return Planted(model, _labels_independent, ("mix.weight",), frozenset({"isolated"}), module)


FAMILIES: dict[str, Callable[[int, int], Planted]] = {
    "branches": lambda w, s: _branches(w, s),
    "block": lambda w, s: _dense(w, s, blocks=True),
    "bottleneck": _bottleneck,
    "rotated": lambda w, s: _mixed(w, s, rotate=True),
    "unrotated": lambda w, s: _mixed(w, s, rotate=False),
    "entangled": lambda w, s: _dense(w, s, blocks=False),
    "branches_random": lambda w, s: _branches(w, s, trained=False),
    "block_random": lambda w, s: _dense(w, s, blocks=True, trained=False),
    "entangled_random": lambda w, s: _dense(w, s, blocks=False, trained=False),
}


# ----------------------------------------------------------------------------- suite
@dataclass
class ValidityReport(Report):
    """One row per (family, width, seed, subnetwork): expected and found verdict, whether it is
    right, precision/recall of the kept weights against the planted module, and the ablation
    evidence. ``summary`` has one row per family."""

    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]] = field(default_factory=list)

    def table(self, columns: Sequence[str] | None = None, max_rows: int = 200) -> str:
        cols = columns or ["family", "width", "seed", "subnetwork", "expected", "verdict", "right",
                           "full", "keep_only", "ablate", "random", "effect", "ci_low",
                           "other_drop", "rounds", "density", "necessary_density",
                           "precision", "necessary_precision", "necessary_recall"]
        return format_table(self.rows, cols, max_rows)

    def summary_table(self) -> str:
        return format_table(self.summary)

    @property
    def right_fraction(self) -> float:
        return sum(r["right"] for r in self.rows) / len(self.rows)

    @property
    def false_isolated(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["verdict"] == "isolated" and "isolated" not in
                r["expected"].split(" | ")]


def run_suite(families: Iterable[str] = tuple(FAMILIES), widths: Iterable[int] = (32, 256),
              seeds: Iterable[int] = range(5), *, mask_config: pruning.MaskConfig | None = None,
              n_random: int = 100, n_data: int = 1024, jobs: int = 1,
              progress: bool = True) -> ValidityReport:
    """Build, prune and ablate every (family, width, seed) cell; compare verdicts with the truth.

    ``mask_config`` defaults to ``MaskConfig()`` (what users get); only ``params`` is set per
    family (``rotated``/``unrotated`` mask ``mix.weight`` alone). ``jobs > 1`` runs cells in
    that many processes, one torch thread each (results are the same as in one process).
    """
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise ValueError(f"unknown families {unknown}; choose from {sorted(FAMILIES)}")
    cells = [(f, w, s, mask_config, n_random, n_data)
             for f in families for w in widths for s in seeds]
    pool = (ProcessPoolExecutor(jobs, initializer=torch.set_num_threads, initargs=(1,))
            if jobs > 1 else contextlib.nullcontext())
    with pool:
        results = (pool.map if jobs > 1 else map)(_cell, cells)
        rows = [row for part in tqdm(results, total=len(cells), desc="validity cells",
                                     disable=not progress) for row in part]
    return ValidityReport(rows=rows, summary=summarize(rows))


def _cell(args: tuple) -> list[dict[str, Any]]:
    family, width, seed, mask_config, n_random, n_data = args
    return run_cell(family, width, seed, mask_config=mask_config, n_random=n_random,
                    n_data=n_data)


def run_cell(family: str, width: int, seed: int, *, mask_config: pruning.MaskConfig | None = None,
             n_random: int = 100, n_data: int = 1024) -> list[dict[str, Any]]:
    """One planted model through pruning and ablation: a row per subnetwork (A and B)."""
    planted, subnets, report = study(family, width, seed, mask_config=mask_config,
                                     n_random=n_random, n_data=n_data)
    return [_row(family, width, seed, planted, report, name, subnets[name]) for name in subnets]


def study(family: str, width: int, seed: int, *, mask_config: pruning.MaskConfig | None = None,
          n_random: int = 100, n_data: int = 1024) -> tuple[Planted, dict[str, Any], Any]:
    """Build the planted model of ``family`` and run pruning (``mask_config``, default
    ``MaskConfig()``, on the family's tensors) and ablation on it: ``(planted, subnetworks,
    ablation report)``. Training, validation and test data are separate seeded draws."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {sorted(FAMILIES)}")
    planted = FAMILIES[family](width, seed)
    hm = wrap(planted.model)
    train, val, test = ({"A": Subroutine((x, ya), readout=_read_a, chance=0.5),
                         "B": Subroutine((x, yb), readout=_read_b, chance=0.5)}
                        for x, ya, yb in (_data(planted.labels, n_data, 30_000 + 3 * seed + k)
                                          for k in range(3)))
    config = dataclasses.replace(mask_config or pruning.MaskConfig(), seed=seed,
                                 **({"params": planted.params} if planted.params else {}))
    subnets = pruning.train_subnetworks(hm, train, config, validation=val, progress=False)
    report = ablation.run(hm, subnets, test, n_random=n_random, seed=seed, complement=False,
                          n_bootstrap=200, progress=False)
    return planted, subnets, report


def _data(labels: Callable, n: int, seed: int) -> tuple[torch.Tensor, ...]:
    x = torch.randn(n, 16, generator=torch.Generator().manual_seed(seed))
    return (x, *labels(x))


def _row(family: str, width: int, seed: int, planted: Planted, report: Any, name: str,
         subnet: Any) -> dict[str, Any]:
    entry = report.isolation_of(name)
    get = {(r["subnetwork"], r["eval_task"], r["condition"]): r for r in report.rows}
    other = "B" if name == "A" else "A"
    ablate = get[(name, name, "ablate")]
    random = get[(name, name, "random_ablate")]
    full_other = get[(None, other, "full")]["value"]
    expected = planted.expected
    row = dict(family=family, width=width, seed=seed, subnetwork=name,
               expected=" | ".join(sorted(expected)) if expected != NOT_ISOLATED
               else "not isolated (any)", verdict=entry["verdict"],
               right=entry["verdict"] in expected,
               full=get[(None, name, "full")]["value"],
               keep_only=get[(name, name, "keep_only")]["value"], ablate=ablate["value"],
               random=random["value"], effect=random["effect"],
               ci_low=_effect_low(ablate, random), other_drop=full_other - get[(name, other, "ablate")]["value"],
               rounds=(entry.get("necessity") or {}).get("rounds"),
               density=subnet.density, necessary_density=subnet.necessary_density,
               reason=entry["reason"])
    module = planted.module_a if name == "A" else {}
    if name == "A" and module and any(bool(m.any()) for m in module.values()):
        row.update(precision=_precision(subnet.masks, module),
                   necessary_precision=_precision(subnet.necessary, module),
                   necessary_recall=_recall(subnet.necessary, module))
    return row


def _effect_low(ablate: dict[str, Any], random: dict[str, Any]) -> float | None:
    """A conservative lower end of the effect: mean control minus the ablated CI's upper end."""
    if ablate.get("ci_high") is None:
        return None
    return random["value"] - ablate["ci_high"]


def _precision(masks: dict[str, torch.Tensor] | None, module: dict[str, torch.Tensor]) -> float | None:
    if not masks:
        return None
    kept = sum(int(m.sum()) for m in masks.values())
    inside = sum(int((m & module[n]).sum()) for n, m in masks.items() if n in module)
    return inside / kept if kept else None


def _recall(masks: dict[str, torch.Tensor] | None, module: dict[str, torch.Tensor]) -> float | None:
    if not masks:
        return None
    total = sum(int(m.sum()) for n, m in module.items() if n in masks)
    inside = sum(int((masks[n] & m).sum()) for n, m in module.items() if n in masks)
    return inside / total if total else None


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for family in dict.fromkeys(r["family"] for r in rows):
        mine = [r for r in rows if r["family"] == family]
        found: dict[str, int] = {}
        for r in mine:
            found[r["verdict"]] = found.get(r["verdict"], 0) + 1
        effects = [r["effect"] for r in mine if r["effect"] is not None and r["subnetwork"] == "A"]
        out.append(dict(family=family, subnetworks=len(mine), expected=mine[0]["expected"],
                        right=sum(r["right"] for r in mine),
                        right_fraction=sum(r["right"] for r in mine) / len(mine),
                        found=", ".join(f"{k}: {v}" for k, v in sorted(found.items())),
                        false_isolated=sum(r["verdict"] == "isolated" and not r["right"]
                                           for r in mine),
                        mean_effect_A=sum(effects) / len(effects) if effects else math.nan))
    return out
