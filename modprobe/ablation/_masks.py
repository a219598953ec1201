"""Which weights each condition removes: validated subnetwork masks and size-matched controls.

A mask is ``{param name: bool tensor}`` with True = kept by the subnetwork. Weight-granularity
masks are sampled weight by weight; neuron/head masks are made of whole units (rows, columns or
channels, in blocks for heads), and their controls remove whole units, because scattering the
same number of weights over a tensor damages a network far less than removing whole neurons.
"""
from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from ..pruning.layout import GRANULARITIES, Slot, unit_axis


@dataclass
class MaskSpec:
    """One validated subnetwork: the CPU bool masks an ablation removes (the necessary set when
    one was searched, else the subnetwork itself), the unit layout of each masked tensor, and
    ``keep``: the sufficient subnetwork that keep-only keeps (``masks`` when they coincide)."""

    name: str
    masks: dict[str, torch.Tensor]
    granularity: str
    layouts: dict[str, Slot]
    keep: dict[str, torch.Tensor] | None = None
    necessity: dict[str, Any] | None = None

    @property
    def sufficient(self) -> dict[str, torch.Tensor]:
        return self.masks if self.keep is None else self.keep


def build_specs(model: Any, subnetworks: Mapping[str, Any], *,
           output_axes: Mapping[str, int] | None = None) -> dict[str, MaskSpec]:
    """Validate ``{name: Subnetwork-like or {param: bool mask}}`` against the model's parameters.

    A Subnetwork's recorded ``layout`` gives each tensor's units; for plain masks they are read
    off the mask's pattern. ``output_axes`` (mean strategy) forces unit layouts along each
    tensor's output axis.
    """
    if not isinstance(subnetworks, Mapping) or not subnetworks:
        raise ValueError("subnetworks must be a non-empty dict {name: Subnetwork or "
                         "{param name: bool mask}}, e.g. the result of pruning.train_subnetworks")
    shapes = {n: tuple(t.shape) for n, t in model.params().items()}
    specs = {}
    for name, sub in subnetworks.items():
        masks = getattr(sub, "masks", sub)
        if not isinstance(masks, Mapping) or not masks:
            raise ValueError(f"subnetwork {name!r} has no masks: expected a non-empty dict "
                             "{param name: bool tensor of the parameter's shape}")
        granularity = getattr(getattr(sub, "config", None), "granularity", "weight")
        if granularity not in GRANULARITIES:
            raise ValueError(f"subnetwork {name!r} has granularity {granularity!r}; "
                             f"expected one of {GRANULARITIES}")
        necessary = getattr(sub, "necessary", None)
        keep = None
        if isinstance(necessary, Mapping) and necessary:
            keep = {p: _check_mask(name, p, m, shapes) for p, m in masks.items()}
            masks, units = necessary, getattr(sub, "necessary_units", None)
        else:
            units = getattr(sub, "units", None)
        units = units if isinstance(units, Mapping) else {}  # {param: per-unit bool mask}
        recorded = getattr(sub, "layout", None)
        recorded = recorded if isinstance(recorded, Mapping) else {}
        clean = {p: _check_mask(name, p, m, shapes) for p, m in masks.items()}
        if output_axes is not None:
            granularity = "neuron" if granularity == "weight" else granularity
        layouts = {p: _layout(name, p, m, granularity, units.get(p),
                              None if output_axes is None else output_axes[p], recorded.get(p))
                   for p, m in clean.items()}
        necessity = getattr(sub, "necessity", None) if keep is not None else None
        specs[name] = MaskSpec(name, clean, granularity, layouts, keep, necessity or {})
    return specs


def _check_mask(sub: str, param: str, mask: Any, shapes: Mapping[str, tuple]) -> torch.Tensor:
    if param not in shapes:
        close = difflib.get_close_matches(param, list(shapes), n=5, cutoff=0.3)
        raise KeyError(f"subnetwork {sub!r} masks {param!r}, which is not a parameter of this "
                       f"model; closest names: {close or list(shapes)[:5]} "
                       "(see model.param_names())")
    mask = torch.as_tensor(mask).detach().cpu()
    if tuple(mask.shape) != shapes[param]:
        raise ValueError(f"subnetwork {sub!r}: the mask of {param!r} has shape "
                         f"{tuple(mask.shape)}, the parameter has shape {shapes[param]}; "
                         "masks must match parameter shapes")
    if mask.dtype != torch.bool:
        if not ((mask == 0) | (mask == 1)).all():
            raise ValueError(f"subnetwork {sub!r}: the mask of {param!r} holds values other than "
                             "0/1; pass a bool tensor (True = weight kept by the subnetwork)")
        mask = mask != 0
    return mask


def _layout(sub: str, param: str, mask: torch.Tensor, granularity: str, units: Any,
            axis: int | None, recorded: Slot | None) -> Slot:
    shape = tuple(mask.shape)
    if granularity == "weight":
        return Slot(param, shape)
    if recorded is not None and recorded.axis is not None and axis in (None, recorded.axis):
        if not recorded.whole(mask):
            raise ValueError(f"subnetwork {sub!r}: the mask of {param!r} splits a unit of "
                             f"{recorded.block} slices along axis {recorded.axis}; unit masks "
                             "must keep or drop whole units")
        return recorded
    if axis is not None and not Slot(param, shape, axis).whole(mask):
        raise ValueError(f"strategy 'mean' replaces whole output units (neurons, channels), but "
                         f"subnetwork {sub!r} masks {param!r} with a pattern that is not made of "
                         "whole output units; use strategy 'zero' or 'random' for such masks")
    axis = unit_axis(mask) if axis is None else axis
    if axis is None:
        raise ValueError(f"subnetwork {sub!r} has {granularity} granularity but masks {param!r} "
                         "with a pattern that is not made of whole slices along one axis (rows, "
                         "columns or channels); pass it as a weight-granularity mask instead")
    n = mask.shape[axis]
    if units is not None:
        n_units = torch.as_tensor(units).numel()
    elif granularity == "neuron":
        n_units = n
    else:
        raise ValueError(f"subnetwork {sub!r} has head masks but no unit masks for {param!r}: "
                         "controls must remove whole heads, so pass a Subnetwork whose .units maps "
                         "each masked parameter to its per-head bool mask")
    if n_units < 1 or n % n_units:
        raise ValueError(f"subnetwork {sub!r}: {n_units} units do not divide axis {axis} "
                         f"(size {n}) of {param!r}")
    slot = Slot(param, shape, axis, n // n_units)
    if not slot.whole(mask):
        raise ValueError(f"subnetwork {sub!r}: the mask of {param!r} splits a unit of "
                         f"{slot.block} slices along axis {axis}; unit masks must keep or drop "
                         "whole units")
    return slot


def seeded_generator(seed: int, *parts: str) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and names, independent of iteration order."""
    digest = hashlib.sha256("/".join([str(seed), *parts]).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def control_masks(spec: MaskSpec, n: int, seed: int, kind: str
                  ) -> Iterator[dict[str, torch.Tensor]]:
    """``n`` seeded removal masks, each removing exactly as many units per tensor as ``spec``
    keeps, drawn without replacement from the whole tensor (``"random_ablate"``) or from outside
    the subnetwork only (``"complement_sampled"``)."""
    gen = seeded_generator(seed, spec.name, kind)
    pools = {}  # per tensor: (kept units, pool to draw from (None: every unit), how many)
    for p, mask in spec.masks.items():
        kept = spec.layouts[p].units(mask)
        pool = None if kind == "random_ablate" else (~kept).nonzero().flatten()
        pools[p] = (kept, pool, int(kept.sum()))
    for _ in range(n):
        removed = {}
        for p, (kept, pool, count) in pools.items():
            size = len(kept) if pool is None else len(pool)
            chosen = torch.randperm(size, generator=gen)[:count]
            units = torch.zeros_like(kept)
            units[chosen if pool is None else pool[chosen]] = True
            removed[p] = spec.layouts[p].expand(units)
        yield removed


def no_complement(spec: MaskSpec) -> list[str]:
    """Tensors where the subnetwork keeps more units than lie outside it: no complement control."""
    short = []
    for p, mask in spec.masks.items():
        kept = spec.layouts[p].units(mask)
        if int(kept.sum()) > int((~kept).sum()):
            short.append(p)
    return short


def mask_overlap(specs: Mapping[str, MaskSpec], label: str) -> list[dict[str, Any]]:
    """Jaccard overlap of the sufficient subnetworks' kept weights for each pair, per tensor and
    overall.

    ``jaccard_chance`` is the overlap expected of two independent random masks with the same
    per-tensor counts (expected shared / expected union); a tensor one subnetwork does not mask
    counts as nothing kept there.
    """
    names = list(specs)
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ma, mb = specs[a].sufficient, specs[b].sufficient
            totals = dict(kept_a=0, kept_b=0, shared=0, expected=0.0)
            for p in [*ma, *(q for q in mb if q not in ma)]:
                x, y = ma.get(p), mb.get(p)
                ka = int(x.sum()) if x is not None else 0
                kb = int(y.sum()) if y is not None else 0
                shared = int((x & y).sum()) if x is not None and y is not None else 0
                expected = ka * kb / (x if x is not None else y).numel()
                rows.append(_overlap_row(label, a, b, p, ka, kb, shared, expected))
                for key, value in zip(totals, (ka, kb, shared, expected)):
                    totals[key] += value
            rows.append(_overlap_row(label, a, b, "*", *totals.values()))
    return rows


def _overlap_row(label: str, a: str, b: str, tensor: str, ka: int, kb: int, shared: int,
                 expected: float) -> dict[str, Any]:
    def jaccard(inter: float) -> float | None:
        union = ka + kb - inter
        return inter / union if union > 0 else None

    return dict(model=label, a=a, b=b, tensor=tensor, kept_a=ka, kept_b=kb, shared=shared,
                jaccard=jaccard(shared), jaccard_chance=jaccard(expected))


def separation(a: MaskSpec, b: MaskSpec, n: int, seed: int) -> dict[str, Any] | None:
    """Do the ablated sets of ``a`` and ``b`` avoid each other more than chance would?

    Counts the units (weights, neurons or heads) in both sets, tensor by tensor, against
    ``n`` random placements of ``b``'s units per tensor (hypergeometric draws): ``p_separate``
    is the share of placements that overlap ``a`` no more than observed, with the +1
    correction. Modules that run on their own weights give an overlap far below chance; weights
    that serve both subroutines do not. ``None`` when the two mask no tensor in common.
    """
    common = [p for p in a.masks if p in b.masks]
    if not common:
        return None
    rng = np.random.default_rng(
        int(seeded_generator(seed, a.name, b.name, "separation").initial_seed()))
    observed, expected, draws = 0, 0.0, np.zeros(n, dtype=np.int64)
    for p in common:
        ua, ub = a.layouts[p].units(a.masks[p]), b.layouts[p].units(b.masks[p])
        if ua.numel() != ub.numel():
            return None  # different unit layouts: no common unit to count
        total, ka, kb = ua.numel(), int(ua.sum()), int(ub.sum())
        observed += int((ua & ub).sum())
        expected += ka * kb / total
        if ka and kb:
            draws += rng.hypergeometric(ka, total - ka, kb, size=n)
    return {"overlap": observed, "overlap_expected": expected,
            "p_separate": float((1 + np.sum(draws <= observed)) / (1 + n))}
