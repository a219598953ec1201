"""Masked evaluation that reads the data once: inputs cached on the model's device in batches
of at least 256 examples (no gradients are kept, so evaluation batches can be large), many masks
per call (``torch.func.vmap`` over stacked weights on a GPU; a plain loop on a CPU, where vmap
is not reliably faster), the model never modified.

Removed weights are replaced per strategy: ``"zero"``; ``"random"`` (the weights of a freshly
initialised twin, as Break It Down's code did); ``"mean"`` (removed output units of Linear/Conv
layers emit their mean activation over reference data, through forward hooks on hook points).
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from .._prefix import Prefix
from ..models import HookedModel, output_axis
from ..subroutine import Subroutine, index_inputs, move_to

Removed = Mapping[str, torch.Tensor]  # param name -> bool tensor, True = removed
EVAL_BATCH = 256  # examples per forward pass unless the subroutine's batches are larger


class EvalData:
    """One evaluation subroutine with its batches cached on the device."""

    def __init__(self, sub: Subroutine, device: torch.device, batch_size: int | None):
        self.sub = sub
        batches = [(move_to(x, device), torch.as_tensor(y).to(device)) for x, y in sub.batches()]
        self.batches = _rebatch(batches, batch_size or max(EVAL_BATCH, sub.batch_size))
        self.targets = torch.cat([y for _, y in self.batches])

    def score(self, readouts: torch.Tensor, idx: torch.Tensor | None = None) -> float:
        if idx is None:
            return self.sub.score(readouts, self.targets)
        idx = idx.to(readouts.device)
        return self.sub.score(readouts[idx], self.targets[idx])


class Evaluator:
    """Scores of the model on every task under many removal masks."""

    def __init__(self, model: HookedModel, tasks: Mapping[str, Subroutine], params: Sequence[str],
                 strategy: str, *, replacement: Mapping[str, torch.Tensor] | None = None,
                 means: "MeanAblation | None" = None, batch_size: int | None = None,
                 vectorize: bool | None = None, chunk: int = 8, reuse_prefix: bool = True):
        self.model = model
        device = model.device
        self.tasks = {name: EvalData(sub, device, batch_size) for name, sub in tasks.items()}
        self.base = model.params(list(params))
        self.strategy = strategy
        self.replacement = replacement
        self.means = means
        self.vectorize = (device.type == "cuda") if vectorize is None else vectorize
        self.vectorize = self.vectorize and strategy != "mean"
        self.chunk = chunk
        self.prefix, self.recorded = None, {}
        if reuse_prefix and params:
            first = next(iter(self.tasks.values())).batches[0][0]
            self.prefix = Prefix(model, params, first)
            if self.prefix:
                self.recorded = {name: [self.prefix.record(x) for x, _ in t.batches]
                                 for name, t in self.tasks.items()}

    def _forward(self, task: str, i: int, params: Mapping[str, torch.Tensor], x: Any,
                 sub: Subroutine) -> torch.Tensor:
        """The readout of batch ``i`` of ``task``; the layers below the first masked tensor are
        replayed from their one recorded pass (bit-identical to running them)."""
        if not self.recorded:
            return sub.read(self.model.forward_with(params, x))
        with self.prefix.replaying(self.recorded[task][i]):
            return sub.read(self.model.forward_with(params, x))

    def readouts(self, task: str, removed: Removed) -> torch.Tensor:
        """Per-example readouts of one task with ``removed`` weights (or units) taken out."""
        t = self.tasks[task]
        params = self._params(removed)
        with self._hooks(removed):
            out = torch.cat([self._forward(task, i, params, x, t.sub)
                             for i, (x, _) in enumerate(t.batches)])
        if len(out) != len(t.targets):
            raise ValueError(f"task {task!r}: the readout gives {len(out)} rows for "
                             f"{len(t.targets)} targets; it must keep one row per example (the "
                             "bootstrap resamples examples along the first dimension)")
        return out

    def scores(self, controls: Sequence[Removed]) -> dict[str, list[float]]:
        """``{task: [metric under each removal mask]}``."""
        if self.vectorize:
            try:
                return self._scores_vmap(controls)
            except Exception as err:  # an op without a batching rule: fall back, once
                warnings.warn(f"torch.func.vmap failed on this model ({type(err).__name__}: "
                              f"{err}); evaluating masks one at a time", stacklevel=4)
                self.vectorize = False
        return {name: [t.score(self.readouts(name, r)) for r in controls]
                for name, t in self.tasks.items()}

    def _scores_vmap(self, controls: Sequence[Removed]) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {name: [] for name in self.tasks}
        for start in range(0, len(controls), self.chunk):
            group = controls[start:start + self.chunk]
            params = [self._params(r) for r in group]
            stacked = {p: torch.stack([q[p] for q in params]) for p in params[0]}
            for name, t in self.tasks.items():
                def run(params, x, i, name=name, sub=t.sub):
                    return self._forward(name, i, params, x, sub)
                readouts = torch.cat([torch.func.vmap(lambda p, x, i=i: run(p, x, i),
                                                      in_dims=(0, None))(stacked, x)
                                      for i, (x, _) in enumerate(t.batches)], dim=1)
                out[name] += [t.score(r) for r in readouts]
        return out

    def _params(self, removed: Removed) -> dict[str, torch.Tensor]:
        if self.strategy == "mean":
            return {}
        out = {}
        for p, r in removed.items():
            w = self.base[p]
            r = r.to(w.device)
            fill = self.replacement[p] if self.replacement is not None else torch.zeros_like(w)
            out[p] = torch.where(r, fill, w)
        return out

    def _hooks(self, removed: Removed) -> contextlib.AbstractContextManager:
        return self.means.applied(removed) if self.means is not None else contextlib.nullcontext()


class MeanAblation:
    """Mean ablation of output units (neurons, channels) through forward hooks on hook points.

    A masked weight's output units are the units of its layer's output: rows of a Linear or
    ConvNd weight, columns of an HF ``Conv1D`` weight, the entries of a bias. Their means are
    taken over every axis except the channel axis, on the unablated model over ``reference``.
    """

    def __init__(self, model: HookedModel, params: Sequence[str]):
        self.model = model
        self.places = {p: _output_place(model, p) for p in params}
        self.dims = {hook: dim for hook, dim, _ in self.places.values()}

    @property
    def output_axes(self) -> dict[str, int]:
        return {p: axis for p, (_, _, axis) in self.places.items()}

    def fit(self, batches: Sequence[Any]) -> "MeanAblation":
        hooks = sorted(self.dims)
        dims = self.dims
        sums: dict[str, torch.Tensor] = {}
        count: dict[str, int] = {}
        for x in batches:
            _, cache = self.model.run_with_cache(x, names=hooks)
            for hook, act in cache.items():
                flat = act.movedim(dims[hook], -1).reshape(-1, act.shape[dims[hook]]).double()
                sums[hook] = sums.get(hook, 0) + flat.sum(0)
                count[hook] = count.get(hook, 0) + flat.shape[0]
        self.means = {h: (sums[h] / count[h]).float() for h in hooks}
        return self

    @contextlib.contextmanager
    def applied(self, removed: Removed) -> Iterator[None]:
        units: dict[str, torch.Tensor] = {}
        for p, r in removed.items():
            hook, _, axis = self.places[p]
            along = r.movedim(axis, 0).reshape(r.shape[axis], -1).any(1)
            units[hook] = units[hook] | along if hook in units else along
        handles = []
        try:
            for hook, off in units.items():
                if off.any():
                    point = self.model.hook_point(hook)
                    handles.append(point.register_forward_hook(self._replace(hook, off)))
            yield
        finally:
            for h in handles:
                h.remove()

    def _replace(self, hook: str, off: torch.Tensor):
        def fn(_module, _args, out):
            shape = [1] * out.dim()
            shape[self.dims[hook]] = -1
            where = off.to(out.device).view(shape)
            return torch.where(where, self.means[hook].to(out.device, out.dtype).view(shape), out)
        return fn


def _output_place(model: HookedModel, param: str) -> tuple[str, int, int]:
    """``(hook name, channel dim of its output, unit axis of the weight)`` for a masked param."""
    path, _, leaf = param.rpartition(".")
    module = model.owner(param)
    if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
        dim = -1
    elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        dim = 1
    else:
        raise ValueError(f"strategy 'mean' replaces output units of Linear/Conv layers; {param!r} "
                         f"belongs to a {type(module).__name__}. Use strategy 'zero' or 'random'")
    axis = 0 if leaf == "bias" else output_axis(module)
    for hook in (f"{path}.hook_out", path):
        if hook in model.hook_names:
            return hook, dim, axis
    raise ValueError(f"strategy 'mean' needs a hook point on the output of {path!r}; none found "
                     "(see model.hook_names)")


def _rebatch(batches: list, size: int) -> list:
    """Cached batches regrouped into batches of ``size`` examples (kept as given when their
    inputs cannot be concatenated, e.g. token batches padded to different lengths)."""
    try:
        inputs = _cat([x for x, _ in batches])
    except (RuntimeError, TypeError):
        return batches
    targets = torch.cat([y for _, y in batches])
    idx = torch.arange(len(targets), device=targets.device)
    return [(index_inputs(inputs, idx[s:s + size]), targets[s:s + size])
            for s in range(0, len(targets), size)]


def _cat(parts: list) -> Any:
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, Mapping):
        return {k: _cat([p[k] for p in parts]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_cat(list(group)) for group in zip(*parts))
    raise TypeError(f"cannot concatenate inputs of type {type(first).__name__}")
