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
import math
from typing import Any, Mapping

import torch
from tqdm.auto import tqdm

from ..models import HookedModel, wrap
from ..subroutine import Subroutine, as_subroutine, check_output, evaluate, move_to
from .config import HOLDOUT as _HOLDOUT, MaskConfig
from . import methods
from .layout import expand_units, per_slot, scaled_weights, slots as unit_slots, split_units
from .masks import MaskSet, select_params
from .necessity import peel
from .subnetwork import Subnetwork


# The hard mask counts as settled when the entries that flipped in an epoch are at most this
# fraction of the entries it keeps: a few logits sitting on the threshold keep flipping long
# after the subnetwork has settled, on small MLPs and on 10 M-entry transformers alike.
_STABLE_FRACTION = 0.01


def train_subnetwork(model: Any, data: Any, config: MaskConfig | None = None, *,
                     name: str = "subnetwork", validation: Any = None,
                     progress: bool = True) -> Subnetwork:
    """Learn the subnetwork of ``model`` that performs one subroutine (see ``train_subnetworks``)."""
    val = None if validation is None else {name: validation}
    return train_subnetworks(model, {name: data}, config, validation=val, progress=progress)[name]


def train_subnetworks(model: Any, subroutines: Mapping[str, Any], config: MaskConfig | None = None,
                      *, validation: Mapping[str, Any] | None = None,
                      progress: bool = True) -> dict[str, Subnetwork]:
    """Learn one binary weight mask per subroutine; ``{name: Subnetwork}``.

    ``subroutines`` maps names to :class:`Subroutine` objects or plain data (defaults: cross-entropy
    and accuracy). ``validation`` maps the same names to held-out data: its keep-only metric is
    reported, and it picks the grid point when ``config`` holds a grid. All subroutines mask the
    same tensors, so their masks can be compared entry by entry.
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
                              dead + notes[name], progress)
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
            progress: bool) -> Subnetwork:
    """Fit every grid point, keep the sparsest one faithful on validation data."""
    slots = unit_slots(hm, names, config.granularity)
    method = methods.get(config.method)
    weights = hm.params(names)
    metric = sub.metric_name
    grid = _grid(config)
    rows, fits = [], []
    for point in grid:
        label = name + ("" if len(grid) == 1 else " " + " ".join(f"{k}={v:g}" for k, v in point.items()))
        point_config = dataclasses.replace(config, **point)
        if not method.trained:
            units, history = method.select(slots, weights, point_config), []
        else:
            units, history = _fit(hm, sub, slots, weights, point_config, label, progress)
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
        judge = val if val is not None else sub
        peeled = peel(hm, judge, slots, weights, units,
                      lambda base, number: _fit(hm, sub, slots, base, dataclasses.replace(
                          point_config, seed=config.seed + 1000 * number,
                          l0_lambda=point_config.l0_lambda * config.peel_decay ** (number - 1)),
                          f"{name} necessity round {number}", progress)[0],
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
         config: MaskConfig, label: str, progress: bool) -> tuple[torch.Tensor, list[dict]]:
    """Train one mask; return its final per-unit bool mask and the per-epoch history."""
    device = hm.device
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), hm.evaluating():
        if config.dropout:
            hm.module.train()
        torch.manual_seed(config.seed)
        generator = torch.Generator(device=device).manual_seed(config.seed)
        method = methods.get(config.method)
        masks = MaskSet(slots, weights, method, config.init, generator, margin=config.margin)
        optimizer = _adam(masks.logits, config.lr)
        history: list[dict] = []
        previous, stable = masks.hard_units(), 0
        bar = tqdm(range(config.epochs), desc=f"mask {label}", disable=not progress, leave=False)
        for epoch in bar:
            beta = _beta(config, epoch)
            task_sum = penalty_sum = torch.zeros((), device=device)
            steps = 0
            for inputs, targets in sub.batches(shuffle_seed=config.seed * 10_007 + epoch):
                task, kept = _step(hm, sub, masks, optimizer, move_to(inputs, device),
                                   targets.to(device), beta, config.l0_lambda)
                task_sum, penalty_sum, steps = task_sum + task, penalty_sum + kept, steps + 1
            task_loss, penalty = float(task_sum) / steps, float(penalty_sum) / steps
            if not math.isfinite(task_loss + penalty):  # checked per epoch: no sync per step
                raise FloatingPointError(
                    f"mask training for {label!r} hit a non-finite loss in epoch {epoch + 1} with "
                    f"l0_lambda={config.l0_lambda}: check the data and readout for NaN/inf, or "
                    "lower lr / l0_lambda")
            hard = masks.hard_units()
            changed = int((hard != previous).sum())
            previous = hard
            density = _density(slots, hard)
            history.append({"epoch": epoch + 1, "task_loss": task_loss, "penalty": penalty,
                            "beta": beta if method.anneals else None,
                            "density": density, "changed": changed})
            bar.set_postfix(loss=f"{task_loss:.3f}", density=f"{density:.3f}")
            stable = stable + 1 if changed <= _STABLE_FRACTION * int(hard.sum()) else 0
            if config.patience and stable >= config.patience and beta >= config.stop_beta:
                break
        bar.close()
    return previous, history


def _adam(logits: torch.Tensor, lr: float) -> torch.optim.Adam:
    """Adam over the flat logits, with the fused kernel where torch has one (about half the time)."""
    return torch.optim.Adam([logits], lr=lr, fused=logits.device.type in ("cpu", "cuda"))


def _step(hm: HookedModel, sub: Subroutine, masks: MaskSet, optimizer: torch.optim.Optimizer,
          inputs: Any, targets: torch.Tensor, beta: float, l0_lambda: float
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """One Adam step on the mask logits; returns the (detached) task loss and penalty."""
    losses = _gradient(hm, sub, masks, inputs, targets, beta, l0_lambda)
    optimizer.step()
    return losses


def _gradient(hm: HookedModel, sub: Subroutine, masks: MaskSet, inputs: Any,
              targets: torch.Tensor, beta: float, l0_lambda: float
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward of the masked model: sets ``masks.logits.grad``; returns the
    (detached) task loss and penalty."""
    masked, kept = masks.masked(beta)
    out = hm.forward_with(masked, inputs)
    task = sub.compute_loss(sub.read(out), targets)
    (masks.logits.grad,) = torch.autograd.grad(task + l0_lambda * kept, [masks.logits])
    return task.detach(), kept.detach()


def _beta(config: MaskConfig, epoch: int) -> float:
    """β for an epoch: 1 at the first, ``beta_max`` at the last, geometric in between.

    Hard-concrete gates keep their fixed temperature; for them β only marks how far along the
    schedule training is (early stopping waits for ``stop_beta`` either way).
    """
    return config.beta_max ** (epoch / max(config.epochs - 1, 1))


def _density(slots: list, units: torch.Tensor) -> float:
    kept = sum(int(part.sum()) * s.unit_size for s, part in zip(slots, per_slot(slots, units)))
    return kept / sum(s.n_units * s.unit_size for s in slots)


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
