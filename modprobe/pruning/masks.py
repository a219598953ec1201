"""Which tensors get masked, how mask entries map onto them, and the three parametrisations.

All mask logits of one search live in ONE flat tensor (one sigmoid, one Adam update per step);
each masked tensor owns a slice of it. A slice holds one logit per weight, per output neuron or
per attention head, expanded to the weight's shape by broadcasting. Masks never touch the model:
they produce substitute tensors ``W * m`` for ``HookedModel.forward_with``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from ..models import HookedModel, output_axis
from .config import MaskConfig

# Hard-concrete stretch interval and temperature (Louizos et al. 2018).
_GAMMA, _ZETA, _HC_TEMP = -0.1, 1.1, 2.0 / 3.0
_BRIDGE_ATTN = re.compile(r"(^|\.)attn\.(q|k|v|qkv|o)\.weight$")


@dataclass(frozen=True)
class _Slot:
    """One masked tensor: how many logits it owns in the flat vector and how they broadcast."""

    name: str
    shape: tuple[int, ...]
    n_units: int
    axis: int | None  # None: one logit per weight; else units run along this axis
    group: int  # entries along ``axis`` per unit (head dim for heads, 1 for neurons)

    @property
    def unit_size(self) -> int:
        return math.prod(self.shape) // self.n_units

    def broadcast(self, values: torch.Tensor) -> torch.Tensor:
        """This slot's per-unit values (length ``n_units``), broadcastable to the weight's shape."""
        if self.axis is None:
            return values.view(self.shape)
        if self.group > 1:
            values = values.repeat_interleave(self.group)
        view = [1] * len(self.shape)
        view[self.axis] = -1
        return values.view(view)


# --------------------------------------------------------------------- which tensors
def select_params(model: HookedModel, config: MaskConfig) -> list[str]:
    """Names to mask: the config's patterns, or every non-embedding weight matrix / conv kernel."""
    if config.params is not None:
        names = model.param_names(config.params)
        if config.granularity == "head":
            owners = _owners(model)
            bad = [n for n in names if _head_layout(model, n, owners[n]) is None]
            if bad:
                raise ValueError(f"granularity='head' needs attention projections, but {bad[:4]} "
                                 "are not (use granularity='neuron' for them, or params= naming "
                                 "only q/k/v/o or nn.MultiheadAttention weights)")
        return names
    owners = _owners(model)
    names = [n for n, w in model.params().items()
             if w.dim() >= 2 and not _is_embedding(n, owners[n][1])]
    if config.granularity == "head":
        names = [n for n in names if _head_layout(model, n, owners[n]) is not None]
    if not names:
        raise ValueError(f"the model has no default tensors to mask at granularity="
                         f"{config.granularity!r}: name them with MaskConfig(params=[...]); "
                         f"parameters are {model.param_names()[:8]}")
    return names


def layout(model: HookedModel, names: list[str], granularity: str) -> list[_Slot]:
    """One slot per tensor, in order: unit counts and axes for the granularity."""
    owners = _owners(model) if granularity != "weight" else {}
    weights = model.params(names) if names else {}
    slots = []
    for name in names:
        shape = tuple(weights[name].shape)
        if granularity == "weight":
            axis, n_units, group = None, math.prod(shape), 1
        elif granularity == "neuron":
            axis = output_axis(owners[name][1])
            n_units, group = shape[axis], 1
        else:
            axis, n_units = _head_layout(model, name, owners[name])
            group = shape[axis] // n_units
        slots.append(_Slot(name, shape, n_units, axis, group))
    return slots


def _owners(model: HookedModel) -> dict[str, tuple[str, nn.Module, str, tuple[int, ...]]]:
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


def _is_embedding(name: str, module: nn.Module) -> bool:
    return isinstance(module, nn.Embedding) or any("embed" in part for part in name.split("."))


def _head_layout(model: HookedModel, name: str, owner: tuple) -> tuple[int, int] | None:
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


# --------------------------------------------------------------------- parametrisations
class MaskSet:
    """Trainable mask logits over ``slots``, for one method; yields substitute weights."""

    def __init__(self, slots: list[_Slot], weights: dict[str, torch.Tensor], method: str,
                 init: float, generator: torch.Generator | None = None, margin: float = 0.0):
        self.slots, self.weights, self.method = slots, weights, method
        self.init, self.margin = init, margin
        device = next(iter(weights.values())).device
        total = sum(s.n_units for s in slots)
        self.logits = torch.full((total,), float(init), device=device, requires_grad=True)
        sizes = torch.cat([torch.full((s.n_units,), float(s.unit_size)) for s in slots])
        self._n_entries = float(sizes.sum())
        # Per-weight masks weigh every logit equally: a plain mean is cheaper than a weighted sum.
        self._sizes = None if all(s.axis is None for s in slots) else sizes.to(device)
        self._generator = generator
        if method == "continuous":
            # Reused by every step: a fresh tensor of a transformer's ~10 M logits costs its page
            # faults (about 3x the arithmetic on a CPU), several times per step.
            self._keep = torch.empty_like(self.logits, requires_grad=False)  # sigmoid(β·s)
            self._gate = torch.empty_like(self._keep)  # min(1, r·keep)
            self._open = torch.empty_like(self._keep)  # 1.0 where gate < 1 (bool ops are slow)
            self._grad = torch.empty_like(self._keep)
            self._chunks = _chunks(slots)

    def masked(self, beta: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``({name: W * mask}, expected fraction of entries kept)`` for one training step."""
        if self.method == "continuous":
            *masked, kept = _ContinuousMasking.apply(self.logits, beta, self)
            return {s.name: w for s, w in zip(self.slots, masked)}, kept
        # hard concrete: stretched, clipped, reparametrised concrete sample
        s = self.logits
        u = torch.rand(s.shape, generator=self._generator, device=s.device).clamp_(1e-6, 1 - 1e-6)
        concrete = torch.sigmoid((torch.log(u) - torch.log1p(-u) + s) / _HC_TEMP)
        gate = (concrete * (_ZETA - _GAMMA) + _GAMMA).clamp(0.0, 1.0)
        kept = self._mean(torch.sigmoid(s - _HC_TEMP * math.log(-_GAMMA / _ZETA)))
        return scaled_weights(self.slots, self.weights, gate), kept

    def rescale(self, beta: float) -> float:
        """``r = 1 / sigmoid(β·c)``, ``c = s0 + margin·(1 - 1/β)``: the gate
        ``min(1, r·sigmoid(β·s))`` is exactly 1 at the start (β = 1, every logit at s0) and for
        every logit above c (kept weights are never amplified); r fades to 1 as β grows."""
        r = 1.0 / _sigmoid(beta * self.init + self.margin * (beta - 1.0))
        return r if r - 1.0 > 1e-6 else 1.0

    def _mean(self, values: torch.Tensor) -> torch.Tensor:
        if self._sizes is None:
            return values.mean()
        return (values * self._sizes).sum() / self._n_entries

    def hard_units(self) -> torch.Tensor:
        """The final binary mask per logit: keep where the logit is positive."""
        return self.logits.detach() > 0


class _ContinuousMasking(torch.autograd.Function):
    """Every slot's ``W * min(1, r·sigmoid(β·s))`` and the expected density
    ``mean(sigmoid(β·s))``, as ONE autograd node with a hand-written backward.

    The logit gradient is ``β·sigmoid'(β·s)·(r·[gate < 1]·Σ g ⊙ W + g_kept·size/N)``, computed
    a run of slots at a time (see :func:`_chunks`) into one reused buffer, where autograd's chain
    (scale, sigmoid, clamp, split, per-slot product, mean) makes more passes over the logits and
    allocates a fresh tensor for each.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, beta: float, masks: MaskSet):
        keep = torch.mul(logits.detach(), beta, out=masks._keep).sigmoid_()
        r = masks.rescale(beta)
        gate = keep
        if r != 1.0:
            gate = torch.mul(keep, r, out=masks._gate).clamp_(max=1.0)
            torch.lt(gate, 1.0, out=masks._open)
        ctx.masks, ctx.beta, ctx.r = masks, beta, r
        return (*scaled_weights(masks.slots, masks.weights, gate).values(), masks._mean(keep))

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        masks, beta, r = ctx.masks, ctx.beta, ctx.r
        *g_weights, g_kept = grads
        per_entry = g_kept * (beta / masks._n_entries)
        for first, end, a, b in masks._chunks:
            for s, g, grad in zip(masks.slots[first:end], g_weights[first:end],
                                  per_slot(masks.slots[first:end], masks._grad[a:b])):
                w = masks.weights[s.name]
                if s.axis is None:
                    torch.mul(g, w, out=grad.view(s.shape))
                else:
                    torch.sum((g * w).movedim(s.axis, 0).reshape(s.n_units, -1), dim=1, out=grad)
            grad = masks._grad[a:b]
            if r != 1.0:
                grad.mul_(masks._open[a:b])  # capped gates pass no task gradient
            if masks._sizes is None:
                torch.add(per_entry, grad, alpha=r * beta, out=grad)
            else:
                torch.addcmul(grad.mul_(r * beta), masks._sizes[a:b], per_entry, out=grad)
            torch.ops.aten.sigmoid_backward.grad_input(grad, masks._keep[a:b], grad_input=grad)
        return masks._grad, None, None


def _chunks(slots: list[_Slot], size: int = 1 << 20) -> list[tuple[int, int, int, int]]:
    """Runs of consecutive slots of about ``size`` logits: ``(first slot, end slot, first logit,
    end logit)``. The backward finishes a run while it is still in cache, and a small model is
    one run (a few large operations rather than many small ones)."""
    chunks, first, start, end = [], 0, 0, 0
    for i, s in enumerate(slots):
        end += s.n_units
        if end - start >= size or i == len(slots) - 1:
            chunks.append((first, i + 1, start, end))
            first, start = i + 1, end
    return chunks


def per_slot(slots: list[_Slot], flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A flat per-unit vector cut into one piece per slot.

    One ``split`` (not a slice per slot): its backward writes a single gradient buffer, where
    slices would each allocate and add a zero tensor of the full length.
    """
    return flat.split([s.n_units for s in slots])


def scaled_weights(slots: list[_Slot], weights: dict[str, torch.Tensor],
                   values: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{name: W * mask}`` from a flat per-unit vector (soft gates, or a bool hard mask), the
    substitute tensors for ``HookedModel.forward_with``."""
    return {s.name: weights[s.name] * s.broadcast(part).to(weights[s.name].dtype)
            for s, part in zip(slots, per_slot(slots, values))}


def expand_units(slots: list[_Slot], units: torch.Tensor) -> dict[str, torch.Tensor]:
    """Bool masks of each weight's full shape from a flat per-unit bool vector."""
    return {s.name: s.broadcast(part).expand(s.shape).clone()
            for s, part in zip(slots, per_slot(slots, units))}


def split_units(slots: list[_Slot], units: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-tensor unit masks (shape ``(n_units,)``) from a flat per-unit vector."""
    return {s.name: part.clone() for s, part in zip(slots, per_slot(slots, units))}


def magnitude_units(slots: list[_Slot], weights: dict[str, torch.Tensor],
                    density: float) -> torch.Tensor:
    """Keep the top ``density`` fraction of units per tensor by mean ``|w|`` (ties: lowest index)."""
    keep = []
    for s in slots:
        w = weights[s.name].detach().abs()
        if s.axis is None:
            score = w.flatten()
        else:
            moved = w.movedim(s.axis, 0).reshape(s.n_units, -1)
            score = moved.mean(1)
        k = max(1, round(density * s.n_units))
        mask = torch.zeros(s.n_units, dtype=torch.bool, device=w.device)
        mask[torch.topk(score, k, sorted=False).indices] = True
        keep.append(mask)
    return torch.cat(keep)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))
