"""Training several masks in one pass over the data, each exactly as if trained alone.

Masks that see the same batches (the grid points of one subroutine share its seed, so they share
every epoch's shuffle) are trained interleaved: for every batch, the layers below the first
masked tensor run once (:class:`modprobe._prefix.Prefix`) and each mask then takes its own step
from those activations. Each mask keeps its own logits, Adam state and random generator, and the
replayed activations are bit-identical to recomputed ones, so every mask's hard mask, history
and metrics equal those of training it alone with the same seed (``tests/test_batched.py``).
Interleaving is exact only without dropout (dropout would draw from one shared random stream in
another order), so with ``dropout=True`` masks are trained one after another. Training flushes
denormal floats to zero (see :func:`_flushing_denormals`).

A mask stops early once β has reached ``stop_beta`` and its hard mask has settled for
``patience`` epochs, and only when its keep-only metric on the judging data is within
``tolerance`` of the reference (the model with ``weights`` unmasked): a mask that is not yet
faithful keeps training.
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from .._prefix import Prefix
from ..models import HookedModel
from ..subroutine import Subroutine, evaluate, move_to
from .config import MaskConfig
from . import methods
from .layout import per_slot, scaled_weights
from .masks import MaskSet

# The hard mask counts as settled when the entries that flipped in an epoch are at most this
# fraction of the entries it keeps (or ``MaskConfig.stable_total`` of all entries): a few logits
# sitting on the threshold keep flipping long after the subnetwork has settled.
_STABLE_FRACTION = 0.01


class MaskRun:
    """One mask under training: its logits, optimizer, β schedule, history and stopping rule."""

    def __init__(self, hm: HookedModel, sub: Subroutine, slots: list,
                 weights: dict[str, torch.Tensor], config: MaskConfig, label: str,
                 judge: Subroutine | None = None):
        self.hm, self.sub, self.slots, self.weights = hm, sub, slots, weights
        self.config, self.label = config, label
        self.judge = judge if judge is not None else sub
        self.history: list[dict] = []
        self.done = False
        self.wall = self.cpu = 0.0
        self._reference: float | None = None
        generator = torch.Generator(device=hm.device).manual_seed(config.seed)
        self.masks = MaskSet(slots, weights, methods.get(config.method), config.init, generator,
                             margin=config.margin)
        self.optimizer = adam(self.masks.logits, config.lr)
        self.previous = self.masks.hard_units()
        self._stable = 0
        self._sums: list[torch.Tensor] = []

    @property
    def units(self) -> torch.Tensor:
        """The final per-unit bool mask (keep where the logit is positive)."""
        return self.previous

    def begin_epoch(self, epoch: int) -> None:
        self.beta = beta_at(self.config, epoch)
        zero = torch.zeros((), device=self.hm.device)
        self._sums, self._steps = [zero, zero], 0

    def step(self, inputs: Any, targets: torch.Tensor) -> None:
        """One Adam step on the mask logits."""
        wall, cpu = time.perf_counter(), time.process_time()
        task, kept = step(self.hm, self.sub, self.masks, self.optimizer, inputs, targets,
                          self.beta, self.config.l0_lambda)
        self._sums = [self._sums[0] + task, self._sums[1] + kept]
        self._steps += 1
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu

    def end_epoch(self, epoch: int) -> None:
        """Record the epoch and decide whether the mask stops here."""
        wall, cpu = time.perf_counter(), time.process_time()
        config = self.config
        task_loss, penalty = (float(s) / self._steps for s in self._sums)
        if not math.isfinite(task_loss + penalty):  # checked per epoch: no sync per step
            raise FloatingPointError(
                f"mask training for {self.label!r} hit a non-finite loss in epoch {epoch + 1} "
                f"with l0_lambda={config.l0_lambda}: check the data and readout for NaN/inf, or "
                "lower lr / l0_lambda")
        hard = self.masks.hard_units()
        changed = int((hard != self.previous).sum())
        self.previous = hard
        density = density_of(self.slots, hard)
        settled = changed <= max(_STABLE_FRACTION * int(hard.sum()),
                                 config.stable_total * hard.numel())
        self._stable = self._stable + 1 if settled else 0
        check = None
        if config.patience and self._stable >= config.patience and self.beta >= config.stop_beta:
            check = self._keep_only(hard)
            self.done = check >= self._reference_score() - config.tolerance
        self.history.append({"epoch": epoch + 1, "task_loss": task_loss, "penalty": penalty,
                             "beta": self.beta if methods.get(config.method).anneals else None,
                             "density": density, "changed": changed, "stop_check": check})
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu

    def _keep_only(self, hard: torch.Tensor) -> float:
        with self.hm.evaluating():
            return evaluate(self.hm, self.judge, scaled_weights(self.slots, self.weights, hard))

    def _reference_score(self) -> float:
        if self._reference is None:
            with self.hm.evaluating():
                self._reference = evaluate(self.hm, self.judge, self.weights)
        return self._reference


def fit_masks(hm: HookedModel, sub: Subroutine, slots: list, weights: dict[str, torch.Tensor],
              configs: Sequence[MaskConfig], labels: Sequence[str], *,
              judge: Subroutine | None = None, share: bool = True,
              progress: bool = True) -> list[MaskRun]:
    """Train one mask per config on ``sub`` over ``weights``; the finished :class:`MaskRun` s.

    Configs must share ``seed``, ``epochs`` and ``dropout`` (they then see the same batches).
    With ``share`` (and no dropout) the masks are trained interleaved over one pass of the data,
    the layers below the first masked tensor run once per batch for all of them; otherwise one
    after another. The results are the same either way.
    """
    configs = list(configs)
    keys = {(c.seed, c.epochs, c.dropout) for c in configs}
    if len(keys) > 1:
        raise ValueError(f"masks trained together must share seed, epochs and dropout, got {keys}")
    if not share or configs[0].dropout or len(configs) == 1:
        return [run for c, label in zip(configs, labels)
                for run in _fit_together(hm, sub, slots, weights, [c], [label], judge, progress,
                                         share=False)]
    return _fit_together(hm, sub, slots, weights, configs, labels, judge, progress, share=True)


def _fit_together(hm: HookedModel, sub: Subroutine, slots: list, weights: dict[str, torch.Tensor],
                  configs: list[MaskConfig], labels: list[str], judge: Subroutine | None,
                  progress: bool, share: bool) -> list[MaskRun]:
    config = configs[0]
    device = hm.device
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), hm.evaluating(), _flushing_denormals():
        if config.dropout:
            hm.module.train()
        torch.manual_seed(config.seed)
        runs = [MaskRun(hm, sub, slots, weights, c, label, judge)
                for c, label in zip(configs, labels)]
        prefix = None
        if share:
            sample = move_to(next(iter(sub.batches()))[0], device)
            prefix = Prefix(hm, [s.name for s in slots], sample)
        bar = tqdm(range(config.epochs), desc="mask " + ", ".join(labels), disable=not progress,
                   leave=False)
        for epoch in bar:
            active = [r for r in runs if not r.done]
            if not active:
                break
            for run in active:
                run.begin_epoch(epoch)
            for inputs, targets in sub.batches(shuffle_seed=config.seed * 10_007 + epoch):
                inputs, targets = move_to(inputs, device), targets.to(device)
                recorded = prefix.record(inputs) if prefix else None
                for run in active:
                    with prefix.replaying(recorded) if prefix else contextlib.nullcontext():
                        run.step(inputs, targets)
            for run in active:
                run.end_epoch(epoch)
            last = active[-1].history[-1]
            bar.set_postfix(loss=f"{last['task_loss']:.3f}", density=f"{last['density']:.3f}")
        bar.close()
    return runs


def adam(logits: torch.Tensor, lr: float) -> torch.optim.Adam:
    """Adam over the flat logits, with the fused kernel where torch has one (about half the time)."""
    return torch.optim.Adam([logits], lr=lr, fused=logits.device.type in ("cpu", "cuda"))


def step(hm: HookedModel, sub: Subroutine, masks: MaskSet, optimizer: torch.optim.Optimizer,
         inputs: Any, targets: torch.Tensor, beta: float, l0_lambda: float
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """One Adam step on the mask logits; returns the (detached) task loss and penalty."""
    losses = gradient(hm, sub, masks, inputs, targets, beta, l0_lambda)
    optimizer.step()
    return losses


def gradient(hm: HookedModel, sub: Subroutine, masks: MaskSet, inputs: Any,
             targets: torch.Tensor, beta: float, l0_lambda: float
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward of the masked model: sets ``masks.logits.grad``; returns the
    (detached) task loss and penalty."""
    masked, kept = masks.masked(beta)
    out = hm.forward_with(masked, inputs)
    task = sub.compute_loss(sub.read(out), targets)
    (masks.logits.grad,) = torch.autograd.grad(task + l0_lambda * kept, [masks.logits])
    return task.detach(), kept.detach()


@contextlib.contextmanager
def _flushing_denormals():
    """Flush denormal floats to zero while masks train (torch's default, off, is restored).

    Late in the schedule (β near 200) the gates ``sigmoid(β·s)`` of pruned logits and their
    gradients fall below 1.2e-38, where x86 CPUs compute up to ~15x slower (one fused Adam step
    over 5 M denormal gradients: 0.21 s against 0.015 s); as zeros they change no hard mask.
    """
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def beta_at(config: MaskConfig, epoch: int) -> float:
    """β for an epoch: 1 at the first, ``beta_max`` at the last, geometric in between.

    Hard-concrete gates keep their fixed temperature; for them β only marks how far along the
    schedule training is (early stopping waits for ``stop_beta`` either way).
    """
    return config.beta_max ** (epoch / max(config.epochs - 1, 1))


def density_of(slots: list, units: torch.Tensor) -> float:
    """Fraction of all masked entries kept by a per-unit bool mask."""
    kept = sum(int(part.sum()) * s.unit_size for s, part in zip(slots, per_slot(slots, units)))
    return kept / sum(s.n_units * s.unit_size for s in slots)
