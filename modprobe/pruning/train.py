"""Mask training: one subnetwork per subroutine, base weights frozen, masks applied functionally.

Only the flat mask-logit tensor gets gradients (``torch.autograd.grad``), so no ``.grad`` lands on
the user's parameters, and every masked pass goes through ``HookedModel.forward_with``, so the
model is bit-identical afterwards. Hyperparameter grids are decided on held-out data by the
keep-only metric and density only, never by an ablation effect.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
from typing import Any, Mapping

import torch

from ..models import HookedModel, wrap
from ..subroutine import Subroutine, as_subroutine, check_output, evaluate, move_to
from .batched import density_of as _density, fit_masks
from .config import HOLDOUT as _HOLDOUT, MaskConfig
from . import methods
from .layout import expand_units, scaled_weights, slots as unit_slots, split_units
from .masks import select_params
from .necessity import peel
from .subnetwork import Subnetwork


def train_subnetwork(model: Any, data: Any, config: MaskConfig | None = None, *,
                     name: str = "subnetwork", validation: Any = None,
                     progress: bool = True) -> Subnetwork:
    """Learn the subnetwork of ``model`` that performs one subroutine (see ``train_subnetworks``)."""
    val = None if validation is None else {name: validation}
    return train_subnetworks(model, {name: data}, config, validation=val, progress=progress)[name]


def train_subnetworks(model: Any, subroutines: Mapping[str, Any], config: MaskConfig | None = None,
                      *, validation: Mapping[str, Any] | None = None,
                      progress: bool = True,
                      timings: list[dict] | None = None) -> dict[str, Subnetwork]:
    """Learn one binary weight mask per subroutine; ``{name: Subnetwork}``.

    ``subroutines`` maps names to :class:`Subroutine` objects or plain data (defaults: cross-entropy
    and accuracy). ``validation`` maps the same names to held-out data: its keep-only metric is
    reported, and it picks the grid point when ``config`` holds a grid. All subroutines mask the
    same tensors, so their masks can be compared entry by entry. A list passed as ``timings``
    gets one row per trained mask (grid point or necessity round): its wall and CPU seconds and
    epochs.
    """
    config = config or MaskConfig()
    if not subroutines:
        raise ValueError("no subroutines given: pass {'name': data_or_Subroutine, ...}")
    hm = _on_device(wrap(model), config.device)
    subs = {name: as_subroutine(data) for name, data in subroutines.items()}
    vals = {name: as_subroutine(data) for name, data in (validation or {}).items()}
    unknown = sorted(set(vals) - set(subs))
    if unknown:
        raise ValueError(f"validation names {unknown} are not among the subroutines {sorted(subs)}")
    for name, sub in [*subs.items(), *vals.items()]:
        check_output(hm, sub, name)
    notes: dict[str, list[str]] = {name: [] for name in subs}
    if len(_grid(config)) > 1:  # grid points are chosen on held-out data: set some aside
        for name in [n for n in subs if n not in vals]:
            subs[name], vals[name] = subs[name].holdout(_HOLDOUT, seed=config.seed)
            notes[name].append(f"no validation data given: {_HOLDOUT:.0%} of the training data "
                               "(seeded) was held out to choose among the grid's settings")
    with hm.evaluating():
        full = {name: _full_scores(hm, sub, vals.get(name)) for name, sub in subs.items()}
        names, dead = _live_params(hm, config, list(subs.values()))
        return {name: _search(hm, name, sub, vals.get(name), full[name], config, names,
                              dead + notes[name], progress, timings)
                for name, sub in subs.items()}


# --------------------------------------------------------------------- search over a grid
def _grid(config: MaskConfig) -> list[dict[str, float]]:
    searched = methods.get(config.method).searched
    return [dict(zip(searched, point))
            for point in itertools.product(*(config.grid(name) for name in searched))]


def _full_scores(hm: HookedModel, sub: Subroutine, val: Subroutine | None) -> dict[str, float]:
    """The unmasked model's metric on the training (and validation) data; checks the targets."""
    full = {sub.metric_name: evaluate(hm, sub, None)}
    if val is not None:
        full[f"val_{sub.metric_name}"] = evaluate(hm, val, None)
    return full


def _search(hm: HookedModel, name: str, sub: Subroutine, val: Subroutine | None,
            full: dict[str, float], config: MaskConfig, names: list[str], notes: list[str],
            progress: bool, timings: list[dict] | None) -> Subnetwork:
    """Fit every grid point, keep the sparsest one faithful on validation data."""
    slots = unit_slots(hm, names, config.granularity)
    method = methods.get(config.method)
    weights = hm.params(names)
    metric = sub.metric_name
    grid = _grid(config)
    configs = [dataclasses.replace(config, **point) for point in grid]
    labels = [name + ("" if len(grid) == 1 else " " + " ".join(f"{k}={v:g}" for k, v in p.items()))
              for p in grid]
    judge = val if val is not None else sub
    if not method.trained:
        found = [(method.select(slots, weights, c), []) for c in configs]
    elif len(grid) == 1:
        found = [_fit(hm, sub, slots, weights, configs[0], labels[0], progress, judge, timings)]
    else:
        runs = fit_masks(hm, sub, slots, weights, configs, labels, judge=judge,
                         share=config.share_prefix, progress=progress)
        _record(timings, runs)
        found = [(r.units, r.history) for r in runs]
    rows, fits = [], []
    for point, point_config, (units, history) in zip(grid, configs, found):
        keep = scaled_weights(slots, weights, units)
        row = {**point, "density": _density(slots, units), metric: evaluate(hm, sub, keep),
               "epochs": len(history)}
        if val is not None:
            row[f"val_{metric}"] = evaluate(hm, val, keep)
        rows.append(row)
        fits.append((point_config, units, history))
    chosen, choice_notes = _choose(rows, full, metric, config.tolerance)
    point_config, units, history = fits[chosen]
    metrics = {metric: rows[chosen][metric], f"full_{metric}": full[metric]}
    if val is not None:
        metrics[f"val_{metric}"] = rows[chosen][f"val_{metric}"]
        metrics[f"val_full_{metric}"] = full[f"val_{metric}"]
    per_unit = config.granularity != "weight"
    necessary = necessary_units = None
    necessity: dict = {}
    if config.necessity == "peel" and not method.trained:
        choice_notes.append(f"necessity='peel' needs a trained mask; {config.method} masks are "
                            "sufficiency-only (ablation removes the selected set itself)")
    elif config.necessity == "peel":
        peeled = peel(hm, judge, slots, weights, units,
                      lambda base, number: _fit(hm, sub, slots, base, dataclasses.replace(
                          point_config, seed=config.seed + 1000 * number,
                          l0_lambda=point_config.l0_lambda * config.peel_decay ** (number - 1)),
                          f"{name} necessity round {number}", progress, judge, timings)[0],
                      lambda u: _density(slots, u),
                      full=full[f"val_{metric}" if val is not None else metric],
                      chance=judge.chance_level(), break_fraction=config.break_fraction,
                      max_rounds=config.max_rounds)
        necessary = expand_units(slots, peeled.units.cpu())
        necessary_units = split_units(slots, peeled.units.cpu()) if per_unit else None
        necessity = {"rounds": peeled.rounds, "broken": peeled.broken, "level": peeled.level,
                     "data": "validation" if val is not None else "training"}
    return Subnetwork(name=name, masks=expand_units(slots, units.cpu()), config=point_config,
                      metrics=metrics, history=history,
                      units=split_units(slots, units.cpu()) if per_unit else None,
                      notes=notes + choice_notes, selection=rows if len(grid) > 1 else [],
                      necessary=necessary, necessary_units=necessary_units, necessity=necessity,
                      layout={s.name: s for s in slots})


def _choose(rows: list[dict], full: dict[str, float], metric: str,
            tolerance: float) -> tuple[int, list[str]]:
    """Index of the sparsest row whose validation metric is within ``tolerance`` of the full model."""
    if len(rows) == 1:
        return 0, []
    key = f"val_{metric}"
    ok = [i for i, r in enumerate(rows) if r[key] >= full[key] - tolerance]
    if ok:
        return min(ok, key=lambda i: (rows[i]["density"], -rows[i][key])), []
    best = max(range(len(rows)), key=lambda i: rows[i][key])
    return best, [f"no grid point kept validation {metric} within {tolerance} of the full model's "
                  f"{full[key]:.4f}; chose the best one ({rows[best][key]:.4f})"]


# --------------------------------------------------------------------- training one mask
def _fit(hm: HookedModel, sub: Subroutine, slots: list, weights: dict[str, torch.Tensor],
         config: MaskConfig, label: str, progress: bool, judge: Subroutine | None = None,
         timings: list[dict] | None = None) -> tuple[torch.Tensor, list[dict]]:
    """Train one mask; return its final per-unit bool mask and the per-epoch history."""
    (run,) = fit_masks(hm, sub, slots, weights, [config], [label], judge=judge, progress=progress)
    _record(timings, [run])
    return run.units, run.history


def _record(timings: list[dict] | None, runs: list) -> None:
    """Append each run's wall and CPU seconds (its own steps and checks) to ``timings``."""
    if timings is not None:
        timings += [{"step": f"mask {r.label}", "wall_s": r.wall, "cpu_s": r.cpu,
                     "epochs": len(r.history)} for r in runs]


# --------------------------------------------------------------------- checks
def _live_params(hm: HookedModel, config: MaskConfig,
                 subs: list[Subroutine]) -> tuple[list[str], list[str]]:
    """Selected tensors that the output depends on (for some subroutine), and a note on the rest.

    A TransformerBridge of GPT-2 registers a fused ``attn.qkv`` weight that the forward pass never
    reads; masking such tensors would only dilute densities.
    """
    names = select_params(hm, config)
    leaves = {n: w.detach().requires_grad_(True) for n, w in hm.params(names).items()}
    live: set[str] = set()
    for sub in subs:
        inputs, targets = next(iter(sub.batches()))
        out = hm.forward_with(leaves, move_to(inputs, hm.device))
        loss = sub.compute_loss(sub.read(out), targets.to(hm.device))
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        live |= {n for n, g in zip(leaves, grads) if g is not None}
    dead = [n for n in names if n not in live]
    if len(dead) == len(names):
        raise ValueError(f"none of the selected tensors {names[:6]} affects the output read by the "
                         "subroutine's readout: choose params= on the path from input to output")
    notes = [f"not masked (the output does not depend on them): {', '.join(dead)}"] if dead else []
    return [n for n in names if n in live], notes


def _on_device(hm: HookedModel, device: str | None) -> HookedModel:
    """The model itself, or a copy on ``device`` when it lives elsewhere (the original is untouched)."""
    target = torch.device(device) if device is not None else hm.device
    if target.type == hm.device.type and target.index in (None, hm.device.index):
        return hm
    return hm.with_module(copy.deepcopy(hm.module).to(device))
