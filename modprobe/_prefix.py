"""The unmasked part of a forward pass, run once and replayed.

When only some tensors are substituted (masked, ablated), every module that finishes before the
first module owning one of them computes the same thing in every call on the same inputs. A
:class:`Prefix` finds those modules (blocks of a ``ModuleList``/``Sequential`` that run once per
forward, hold no substituted tensor, are in eval mode and end before the first substituted tensor
is used), records their outputs on a batch once (:meth:`Prefix.record`), and while
:meth:`Prefix.replaying` is active returns the recorded outputs instead of running them. Every
other module still runs, so the rest of the pass receives bit-identical inputs and gives
bit-identical outputs; only the skipped modules' hook points stay silent.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from .models import HookedModel


class _Recorded(Exception):
    """Raised once the last skippable module has run, to skip the rest of a recording pass."""


class Prefix:
    """The skippable modules of ``model`` when the tensors ``names`` are substituted.

    ``sample``: one batch of inputs, run once (without substitutions) to see which modules run,
    in what order and how often. ``modules`` is empty when nothing can be skipped (a masked
    tensor in the first block, dropout on, blocks that run twice), and then :meth:`record` and
    :meth:`replaying` cost nothing and change nothing.
    """

    def __init__(self, model: HookedModel, names: Iterable[str], sample: Any):
        self.model = model
        self.modules = _skippable(model, list(names), sample)

    def __bool__(self) -> bool:
        return bool(self.modules)

    def record(self, inputs: Any) -> list[Any]:
        """The outputs of the skippable modules on ``inputs`` (no gradients; the pass stops after
        the last of them)."""
        if not self.modules:
            return []
        outputs: list[Any] = [None] * len(self.modules)
        last = len(self.modules) - 1

        def keep(i: int):
            def hook(_module, _args, out):
                outputs[i] = out
                if i == last:
                    raise _Recorded
            return hook

        handles = [m.register_forward_hook(keep(i)) for i, m in enumerate(self.modules)]
        try:
            with torch.no_grad():
                self.model(inputs)
        except _Recorded:
            pass
        finally:
            for h in handles:
                h.remove()
        return outputs

    @contextlib.contextmanager
    def replaying(self, outputs: list[Any]) -> Iterator[None]:
        """Within the block the skippable modules return ``outputs`` (from :meth:`record` on the
        same inputs) without running. Tensors are handed out as fresh copies, so a module that
        updates its input in place cannot alter the recording."""
        if not self.modules:
            yield
            return
        for module, out in zip(self.modules, outputs):
            # object.__setattr__: a bridge component's own __setattr__ forwards attributes to the
            # module it wraps
            object.__setattr__(module, "forward", _replay(out))
        try:
            yield
        finally:
            for module in self.modules:
                object.__delattr__(module, "forward")


def _replay(out: Any):
    def forward(*_args: Any, **_kwargs: Any) -> Any:
        return _copy(out)
    return forward


def _copy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_copy(v) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_copy(v) for v in value)
    if isinstance(value, dict):
        return type(value)({k: _copy(v) for k, v in value.items()})
    return value


def _skippable(model: HookedModel, names: list[str], sample: Any) -> list[nn.Module]:
    """Blocks (children of a ModuleList or Sequential) that finish before any module owning one
    of ``names`` starts, run exactly once per forward, own none of ``names`` and hold no module
    in training mode; outermost first, in the order they run."""
    if not names:
        return []
    owners = {id(model.owner(n)) for n in names}
    parents = [m for m in model.module.modules() if isinstance(m, (nn.ModuleList, nn.Sequential))]
    candidates = list(dict.fromkeys(c for p in parents for c in p.children()))
    watched = {id(m): m for m in candidates}
    watched.update({id(m): m for m in model.module.modules() if id(m) in owners})
    events: list[tuple[str, int]] = []

    def note(kind: str, key: int):
        def hook(*_):
            events.append((kind, key))
        return hook

    handles = []
    for key, m in watched.items():
        handles.append(m.register_forward_pre_hook(note("start", key)))
        handles.append(m.register_forward_hook(note("end", key)))
    try:
        with torch.no_grad():
            model(sample)
    finally:
        for h in handles:
            h.remove()
    starts = [i for i, (kind, key) in enumerate(events) if kind == "start" and key in owners]
    if not starts:
        return []
    first = starts[0]
    ends: dict[int, list[int]] = {}
    for i, (kind, key) in enumerate(events):
        if kind == "end":
            ends.setdefault(key, []).append(i)
    chosen: list[nn.Module] = []
    for m in candidates:
        done = ends.get(id(m), [])
        if len(done) != 1 or done[0] >= first:
            continue
        inner = list(m.modules())
        if any(id(x) in owners for x in inner) or any(x.training for x in inner):
            continue
        chosen.append(m)
    inside = {id(x) for m in chosen for x in list(m.modules())[1:]}
    chosen = [m for m in chosen if id(m) not in inside]
    return sorted(chosen, key=lambda m: ends[id(m)][0])
