"""Which tensors get masked, and the trainable mask logits over them.

All mask logits of one search live in ONE flat tensor (one sigmoid, one Adam update per step);
each masked tensor owns a slice of it (a :class:`~.layout.Slot`): one logit per weight, per
output neuron or per attention head, expanded to the weight's shape by broadcasting. The mask
method (:mod:`.methods`) turns the logits into gates. Masks never touch the model: they produce
substitute tensors ``W * m`` for ``HookedModel.forward_with``.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..models import HookedModel
from .layout import Slot, head_layout, owners, per_slot, scaled_weights

if TYPE_CHECKING:
    from .config import MaskConfig
    from .methods import MaskMethod

# --------------------------------------------------------------------- which tensors
def select_params(model: HookedModel, config: "MaskConfig") -> list[str]:
    """Names to mask: the config's patterns, or every non-embedding weight matrix / conv kernel."""
    if config.params is not None:
        names = model.param_names(config.params)
        if config.granularity == "head":
            found = owners(model)
            bad = [n for n in names if head_layout(model, n, found[n]) is None]
            if bad:
                raise ValueError(f"granularity='head' needs attention projections, but {bad[:4]} "
                                 "are not (use granularity='neuron' for them, or params= naming "
                                 "only q/k/v/o or nn.MultiheadAttention weights)")
        return names
    found = owners(model)
    names = [n for n, w in model.params().items()
             if w.dim() >= 2 and not _is_embedding(n, found[n][1])]
    if config.granularity == "head":
        names = [n for n in names if head_layout(model, n, found[n]) is not None]
    if not names:
        raise ValueError(f"the model has no default tensors to mask at granularity="
                         f"{config.granularity!r}: name them with MaskConfig(params=[...]); "
                         f"parameters are {model.param_names()[:8]}")
    return names


def _is_embedding(name: str, module: nn.Module) -> bool:
    return isinstance(module, nn.Embedding) or any("embed" in part for part in name.split("."))


# --------------------------------------------------------------------- trainable logits
class MaskSet:
    """Trainable mask logits over ``slots``; ``method`` (a :class:`.methods.MaskMethod`) turns
    them into substitute weights."""

    def __init__(self, slots: list[Slot], weights: dict[str, torch.Tensor],
                 method: "MaskMethod", init: float, generator: torch.Generator | None = None,
                 margin: float = 0.0):
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
        method.setup(self)

    def masked(self, beta: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``({name: W * mask}, expected fraction of entries kept)`` for one training step."""
        return self.method.gates(self, beta)

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


class ContinuousMasking(torch.autograd.Function):
    """Every slot's ``W * min(1, r·sigmoid(β·s))`` and the expected density
    ``mean(sigmoid(β·s))``, as ONE autograd node with a hand-written backward.

    The logit gradient is ``β·sigmoid'(β·s)·(r·[gate < 1]·Σ g ⊙ W + g_kept·size/N)``, computed
    a run of slots at a time (see :func:`gate_chunks`) into one reused buffer, where autograd's
    chain (scale, sigmoid, clamp, split, per-slot product, mean) makes more passes over the
    logits and allocates a fresh tensor for each.
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


def gate_chunks(slots: list[Slot], size: int = 1 << 20) -> list[tuple[int, int, int, int]]:
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


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))
