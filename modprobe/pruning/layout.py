"""How a mask is made of units: single weights, output neurons or attention heads.

One :class:`Slot` per masked tensor says which axis its units run along and how many consecutive
slices form one unit. Pruning trains one logit per unit and broadcasts it onto the weight;
ablation removes and samples whole units; :class:`~modprobe.pruning.Subnetwork` stores the slots
it was trained with, so nobody has to guess the layout back from a mask's pattern.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..models import HookedModel, output_axis

GRANULARITIES = ("weight", "neuron", "head")
_BRIDGE_ATTN = re.compile(r"(^|\.)attn\.(q|k|v|qkv|o)\.weight$")


@dataclass(frozen=True)
class Slot:
    """One masked tensor: ``axis=None`` gives one unit per weight; otherwise units are whole
    slices along ``axis``, ``block`` consecutive slices per unit (a head spans ``d_head`` rows
    or columns, a neuron one)."""

    name: str
    shape: tuple[int, ...]
    axis: int | None = None
    block: int = 1

    @property
    def n_units(self) -> int:
        return math.prod(self.shape) if self.axis is None else self.shape[self.axis] // self.block

    @property
    def unit_size(self) -> int:
        """Weights per unit."""
        return math.prod(self.shape) // self.n_units

    def broadcast(self, values: torch.Tensor) -> torch.Tensor:
        """Per-unit values (length ``n_units``) as a view broadcastable to the weight's shape."""
        if self.axis is None:
            return values.view(self.shape)
        if self.block > 1:
            values = values.repeat_interleave(self.block)
        view = [1] * len(self.shape)
        view[self.axis] = -1
        return values.view(view)

    def expand(self, units: torch.Tensor) -> torch.Tensor:
        """A per-unit vector as a tensor of the weight's full shape."""
        return self.broadcast(units).expand(self.shape).clone()

    def units(self, mask: torch.Tensor) -> torch.Tensor:
        """A full-shape mask made of whole units as its flat per-unit vector."""
        return self._per_unit(mask)[:, 0]

    def whole(self, mask: torch.Tensor) -> bool:
        """Whether ``mask`` keeps or drops every unit as a whole."""
        per_unit = self._per_unit(mask)
        return bool((per_unit.all(1) | ~per_unit.any(1)).all())

    def _per_unit(self, mask: torch.Tensor) -> torch.Tensor:
        if self.axis is None:
            return mask.reshape(-1, 1)
        return mask.movedim(self.axis, 0).reshape(self.n_units, -1)

    def to_dict(self) -> dict[str, Any]:
        return {"axis": self.axis, "block": self.block}


def unit_axis(mask: torch.Tensor) -> int | None:
    """The first axis a mask is a function of (axis 0 for constant masks), or None."""
    for axis in range(mask.dim()):
        if Slot("", tuple(mask.shape), axis).whole(mask):
            return axis
    return None


# --------------------------------------------------------------------- slots of a model
def slots(model: HookedModel, names: list[str], granularity: str) -> list[Slot]:
    """One slot per tensor, in order, for ``granularity`` (see :data:`GRANULARITIES`)."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; choose one of {GRANULARITIES}")
    found = owners(model) if granularity != "weight" else {}
    weights = model.params(names) if names else {}
    out = []
    for name in names:
        shape = tuple(weights[name].shape)
        if granularity == "weight":
            out.append(Slot(name, shape))
        elif granularity == "neuron":
            out.append(Slot(name, shape, output_axis(found[name][1])))
        else:
            axis, n_heads = head_layout(model, name, found[name])
            out.append(Slot(name, shape, axis, shape[axis] // n_heads))
    return out


def owners(model: HookedModel) -> dict[str, tuple[str, nn.Module, str, tuple[int, ...]]]:
    """``{user name: (module path, owning module, attribute, shape)}``; matched by identity.

    Keyed by (data pointer, shape, stride) because a bridge's q/k/v weights are views into its
    fused qkv weight and share the data pointer.
    """
    index: dict[tuple, tuple[str, nn.Module, str]] = {}
    for path, module in model.module.named_modules():
        for attr, p in module._parameters.items():
            if p is not None:
                index.setdefault(_key(p), (path, module, attr))
    return {name: (*index[_key(w)], tuple(w.shape)) for name, w in model.params().items()}


def _key(t: torch.Tensor) -> tuple:
    return t.data_ptr(), tuple(t.shape), t.stride()


def head_layout(model: HookedModel, name: str, owner: tuple) -> tuple[int, int] | None:
    """``(axis, number of heads)`` of an attention projection, ``None`` for other tensors."""
    path, module, attr, shape = owner
    if isinstance(module, nn.MultiheadAttention) and attr.endswith("proj_weight"):
        heads = module.num_heads * (3 if attr == "in_proj_weight" else 1)
        return 0, heads
    parent = model.module.get_submodule(path.rsplit(".", 1)[0]) if "." in path else None
    if isinstance(parent, nn.MultiheadAttention) and path.endswith("out_proj") and attr == "weight":
        return 1, parent.num_heads
    match = _BRIDGE_ATTN.search(name)
    cfg = getattr(model.module, "cfg", None)
    if model.is_bridge and match and cfg is not None:
        out_axis = output_axis(module)
        axis = 1 - out_axis if match.group(2) == "o" else out_axis
        return axis, shape[axis] // cfg.d_head
    return None


# --------------------------------------------------------------------- flat unit vectors
def per_slot(slots: list[Slot], flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A flat per-unit vector cut into one piece per slot.

    One ``split`` (not a slice per slot): its backward writes a single gradient buffer, where
    slices would each allocate and add a zero tensor of the full length.
    """
    return flat.split([s.n_units for s in slots])


def scaled_weights(slots: list[Slot], weights: dict[str, torch.Tensor],
                   values: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{name: W * mask}`` from a flat per-unit vector (soft gates, or a bool hard mask), the
    substitute tensors for ``HookedModel.forward_with``."""
    return {s.name: weights[s.name] * s.broadcast(part).to(weights[s.name].dtype)
            for s, part in zip(slots, per_slot(slots, values))}


def expand_units(slots: list[Slot], units: torch.Tensor) -> dict[str, torch.Tensor]:
    """Bool masks of each weight's full shape from a flat per-unit bool vector."""
    return {s.name: s.expand(part) for s, part in zip(slots, per_slot(slots, units))}


def split_units(slots: list[Slot], units: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-tensor unit masks (shape ``(n_units,)``) from a flat per-unit vector."""
    return {s.name: part.clone() for s, part in zip(slots, per_slot(slots, units))}
