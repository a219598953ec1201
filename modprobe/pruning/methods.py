"""Mask methods: small objects behind a registry, looked up by ``MaskConfig.method``.

A method either parametrises trainable gates (``gates``: the substitute weights of one training
step and the expected fraction kept) or picks units without training (``trained = False`` and
``select``). Adding one is one file::

    from modprobe.pruning.methods import MaskMethod, register

    class Random(MaskMethod):
        name, trained, searched = "random", False, ("density",)

        def select(self, slots, weights, config):
            ...  # a flat bool vector, one entry per unit

    register(Random())

after which ``MaskConfig(method="random")`` validates and ``train_subnetworks`` uses it.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from .._registry import Registry
from .layout import Slot, scaled_weights
from .masks import ContinuousMasking, gate_chunks

if TYPE_CHECKING:
    from .config import MaskConfig
    from .masks import MaskSet

# Hard-concrete stretch interval and temperature (Louizos et al. 2018).
_GAMMA, _ZETA, _HC_TEMP = -0.1, 1.1, 2.0 / 3.0
# β_max · (init + margin) at least this: the rescale 1/sigmoid(β·c) is below 1.001 by the end.
_FADED = 6.91


class MaskMethod:
    """One way to find a mask.

    ``name``: the ``MaskConfig.method`` that selects it. ``trained``: whether it learns logits
    (``gates``) or picks units directly (``select``). ``searched``: the ``MaskConfig`` fields
    whose grids it searches. ``anneals``: whether β (1 to ``beta_max``) shapes its gates; the
    history records β only then. ``lr`` and ``init``: defaults of ``MaskConfig.lr`` and
    ``MaskConfig.init``.
    """

    name: str = ""
    trained: bool = True
    searched: tuple[str, ...] = ("l0_lambda", "init")
    anneals: bool = False
    lr: float = 0.01
    init: float = 0.0

    def check(self, config: "MaskConfig") -> None:
        """Raise a ValueError for settings this method cannot work with."""

    def setup(self, masks: "MaskSet") -> None:
        """Attach any per-search state (buffers) to a fresh :class:`MaskSet`."""

    def gates(self, masks: "MaskSet", beta: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``({name: W * mask}, expected fraction of entries kept)`` for one training step."""
        raise NotImplementedError(f"mask method {self.name!r} does not train gates")

    def select(self, slots: list[Slot], weights: dict[str, torch.Tensor],
               config: "MaskConfig") -> torch.Tensor:
        """The kept units, a flat bool vector (one entry per unit of ``slots``), without training."""
        raise NotImplementedError(f"mask method {self.name!r} is trained, not selected")


_REGISTRY: Registry[MaskMethod] = Registry("mask method", MaskMethod, __name__)
# register(method, replace=False): make ``method`` available as ``MaskConfig(method=method.name)``;
# unregister(name); names(): the registered names, built-ins first; get(name): one method.
register, unregister, names, get = (_REGISTRY.register, _REGISTRY.unregister, _REGISTRY.names,
                                    _REGISTRY.get)


# --------------------------------------------------------------------- built-in methods
class Continuous(MaskMethod):
    """Continuous sparsification (Savarese et al. 2020) with a rescale that starts training
    from exactly the unmasked function (see ``MaskConfig``)."""

    name, anneals, lr, init = "continuous", True, 0.01, 0.0

    def check(self, config: "MaskConfig") -> None:
        if any(s0 < 0 for s0 in config.grid("init")) or config.margin < 0:
            raise ValueError(
                f"init and margin must be >= 0 for method='continuous', got init={config.init}, "
                f"margin={config.margin}: a gate is fully open from s0 + margin*(1 - 1/beta) up, "
                "and that level must not lie below the keep threshold s = 0 (try init=0)")
        low = [s0 for s0 in config.grid("init")
               if (s0 + config.margin) * config.beta_max < _FADED]
        if low:
            c = low[0] + config.margin
            raise ValueError(
                f"init={low[0]} with margin={config.margin} is too small for beta_max="
                f"{config.beta_max}: the rescale 1/sigmoid(beta*(init + margin)) would still be "
                f"{1 + math.exp(-c * config.beta_max):.3f} at the end of training, so kept logits "
                "would sit on the keep threshold and the trained soft mask would not match the "
                f"final hard mask; use init + margin >= {_FADED / config.beta_max:.3g} or a "
                "larger beta_max")

    def setup(self, masks: "MaskSet") -> None:
        # Reused by every step: a fresh tensor of a transformer's ~10 M logits costs its page
        # faults (about 3x the arithmetic on a CPU), several times per step.
        masks._keep = torch.empty_like(masks.logits, requires_grad=False)  # sigmoid(β·s)
        masks._gate = torch.empty_like(masks._keep)  # min(1, r·keep)
        masks._open = torch.empty_like(masks._keep)  # 1.0 where gate < 1 (bool ops are slow)
        masks._grad = torch.empty_like(masks._keep)
        masks._chunks = gate_chunks(masks.slots)

    def gates(self, masks: "MaskSet", beta: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        *masked, kept = ContinuousMasking.apply(masks.logits, beta, masks)
        return {s.name: w for s, w in zip(masks.slots, masked)}, kept


class HardConcrete(MaskMethod):
    """L0 gates (Louizos et al. 2018): a stretched, clipped, reparametrised concrete sample per
    unit; ``init`` is log α (default 2: P(gate > 0) = 0.97, mostly open)."""

    # On the planted MLP of the tests log α = 0 kept 14% at accuracy 0.91 within 20 epochs,
    # log α = 2 kept 12% at 0.97; the noisier gates want a larger step.
    name, lr, init = "hard_concrete", 0.05, 2.0

    def gates(self, masks: "MaskSet", beta: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        s = masks.logits
        u = torch.rand(s.shape, generator=masks._generator, device=s.device).clamp_(1e-6, 1 - 1e-6)
        concrete = torch.sigmoid((torch.log(u) - torch.log1p(-u) + s) / _HC_TEMP)
        gate = (concrete * (_ZETA - _GAMMA) + _GAMMA).clamp(0.0, 1.0)
        kept = masks._mean(torch.sigmoid(s - _HC_TEMP * math.log(-_GAMMA / _ZETA)))
        return scaled_weights(masks.slots, masks.weights, gate), kept


class Magnitude(MaskMethod):
    """Keep the top ``density`` fraction of units per tensor by mean ``|w|`` (ties: lowest
    index); no training, a baseline."""

    name, trained, searched = "magnitude", False, ("density",)

    def select(self, slots: list[Slot], weights: dict[str, torch.Tensor],
               config: "MaskConfig") -> torch.Tensor:
        keep = []
        for s in slots:
            w = weights[s.name].detach().abs()
            score = w.flatten() if s.axis is None else w.movedim(s.axis, 0).reshape(
                s.n_units, -1).mean(1)
            k = max(1, round(config.density * s.n_units))
            mask = torch.zeros(s.n_units, dtype=torch.bool, device=w.device)
            mask[torch.topk(score, k, sorted=False).indices] = True
            keep.append(mask)
        return torch.cat(keep)


register(Continuous())
register(HardConcrete())
register(Magnitude())
