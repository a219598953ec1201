"""A subroutine's labelled data and how to read and score the model's output on it.

Pruning, ablation and the end-to-end analysis all consume :class:`Subroutine`; a bare
``(inputs, targets)`` pair or an iterable of batches is accepted anywhere and means the defaults
(cross-entropy + accuracy for integer targets, MSE + R² for float targets).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.nn.functional as F

from ._validate import Int

Batch = tuple[Any, torch.Tensor]


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of examples whose arg-max class equals the target."""
    logits, targets = _flatten(logits, targets)
    return (logits.argmax(-1) == targets).float().mean()


def r2(pred: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Coefficient of determination, pooled over all output dimensions."""
    pred, targets = _as_targets(pred, targets).float(), targets.float()
    ss_res = ((targets - pred) ** 2).sum()
    ss_tot = ((targets - targets.mean(0, keepdim=True)) ** 2).sum().clamp_min(1e-12)
    return 1.0 - ss_res / ss_tot


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits, targets = _flatten(logits, targets)
    return F.cross_entropy(logits, targets)


def mse(pred: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(_as_targets(pred, targets).float(), targets.float())


def _as_targets(pred: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Predictions reshaped to the float targets' shape, or a ValueError when they cannot be."""
    if pred.numel() != targets.numel():
        raise ValueError(
            f"the readout gives {tuple(pred.shape)} predictions for float targets of shape "
            f"{tuple(targets.shape)}: float targets mean regression, one prediction per target. "
            "For class labels pass integer (long) targets; otherwise pass a readout= that yields "
            "one value per target")
    return pred.reshape(targets.shape)


def _flatten(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if logits.dim() != targets.dim() + 1:
        raise ValueError(
            f"logits of shape {tuple(logits.shape)} do not fit integer targets of shape "
            f"{tuple(targets.shape)}: expected logits with one more (class) dimension; pass a "
            "readout= that maps the model output to per-example logits")
    return logits.reshape(-1, logits.shape[-1]), targets.reshape(-1).long()


@dataclass
class Subroutine:
    """Labelled data for one subroutine plus how to read, train on and score the model's output.

    ``data``: ``(inputs, targets)`` tensors (inputs may be a dict of tensors, e.g. a tokenizer's
    output), a torch ``Dataset`` of pairs, or a re-iterable of ``(inputs, targets)`` batches.
    ``readout(output) -> logits`` picks what the model output means for this subroutine;
    ``reduce(logits) -> logits`` then maps the task's shared label space to this subroutine's
    (e.g. the marginal over the other relation of a joint head), and is kept when an analysis
    replaces ``readout`` with its fitted head;
    ``loss(logits, targets)`` and ``metric(logits, targets)`` default by target dtype;
    ``chance`` is the metric of a guess (default: majority-class rate, 0 for regression).
    """

    data: Any
    readout: Callable[[Any], torch.Tensor] | None = None
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    chance: float | None = None
    batch_size: int = 64
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.data, Iterator):  # one-shot generators would be empty on epoch 2
            self.data = list(self.data)
        if not Int(1).ok(self.batch_size):
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if _is_tensor_pair(self.data):
            _check_pair(*self.data)
        first = next(iter(self.batches()), None)
        if first is None:
            raise ValueError("Subroutine data is empty: pass (inputs, targets) tensors with at least "
                             "one example, a non-empty Dataset, or a non-empty list of batches")

    @property
    def is_regression(self) -> bool:
        return self.targets().is_floating_point()

    def batches(self, shuffle_seed: int | None = None) -> Iterator[Batch]:
        """Yield ``(inputs, targets)`` batches; with ``shuffle_seed`` in a seeded random order."""
        data = self.data
        if _is_tensor_pair(data):
            inputs, targets = data
            n = len(targets)
            order = (torch.randperm(n, generator=torch.Generator().manual_seed(shuffle_seed))
                     if shuffle_seed is not None else torch.arange(n))
            for start in range(0, n, self.batch_size):
                idx = order[start:start + self.batch_size]
                yield index_inputs(inputs, idx), targets[idx]
        elif isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__"):
            gen = torch.Generator().manual_seed(shuffle_seed) if shuffle_seed is not None else None
            yield from torch.utils.data.DataLoader(
                data, batch_size=self.batch_size, shuffle=shuffle_seed is not None, generator=gen)
        else:
            batches = list(data)
            if shuffle_seed is not None:
                perm = torch.randperm(len(batches), generator=torch.Generator().manual_seed(shuffle_seed))
                batches = [batches[i] for i in perm.tolist()]
            for batch in batches:
                if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                    raise TypeError("Subroutine data must yield (inputs, targets) pairs; got a "
                                    f"batch of type {type(batch).__name__}")
                yield batch[0], torch.as_tensor(batch[1])

    def holdout(self, fraction: float, seed: int = 0) -> tuple["Subroutine", "Subroutine"]:
        """``(rest, held out)``: a seeded random ``fraction`` of the examples (of the batches, for
        a list of several batches) set aside, e.g. to choose hyperparameters on."""
        data = self.data
        if _is_tensor_pair(data) or isinstance(data, torch.utils.data.Dataset):
            n = len(data[1]) if _is_tensor_pair(data) else len(data)
        else:
            data = list(data)
            n = len(data)
            if n == 1:  # one batch: split its examples
                data, n = (data[0][0], torch.as_tensor(data[0][1])), len(data[0][1])
        k = round(fraction * n)
        if not 1 <= k < n:
            raise ValueError(f"cannot hold out {fraction:.0%} of {n} examples or batches: pass "
                             "held-out data explicitly (validation=...)")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        parts = order[k:].sort().values, order[:k].sort().values
        if _is_tensor_pair(data):
            pieces = [(index_inputs(data[0], idx), data[1][idx]) for idx in parts]
        elif isinstance(data, torch.utils.data.Dataset):
            pieces = [torch.utils.data.Subset(data, idx.tolist()) for idx in parts]
        else:
            pieces = [[data[i] for i in idx.tolist()] for idx in parts]
        return tuple(dataclasses.replace(self, data=piece) for piece in pieces)

    def targets(self) -> torch.Tensor:
        """All targets, concatenated."""
        if _is_tensor_pair(self.data):
            return self.data[1]
        return torch.cat([t.reshape(len(t), *t.shape[1:]) for _, t in self.batches()])

    def __len__(self) -> int:
        return len(self.targets())

    def read(self, output: Any) -> torch.Tensor:
        """Logits (or predictions) for this subroutine from the model's output."""
        logits = self._logits(output)
        return logits if self.reduce is None else self.reduce(logits)

    def _logits(self, output: Any) -> torch.Tensor:
        if self.readout is not None:
            return self.readout(output)
        if isinstance(output, torch.Tensor):
            return output
        for key in ("logits", "last_hidden_state"):
            value = output.get(key) if isinstance(output, Mapping) else getattr(output, key, None)
            if isinstance(value, torch.Tensor):
                return value
        raise TypeError(f"model output of type {type(output).__name__} is not a tensor: pass "
                        "Subroutine(data, readout=lambda out: ...) to pick the logits from it")

    def compute_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        fn = self.loss or (mse if targets.is_floating_point() else cross_entropy)
        return fn(logits, targets)

    def score(self, logits: torch.Tensor, targets: torch.Tensor) -> float:
        fn = self.metric or (r2 if targets.is_floating_point() else accuracy)
        return float(fn(logits, targets))

    @property
    def metric_name(self) -> str:
        if self.metric is not None:
            return getattr(self.metric, "__name__", "metric")
        return "r2" if self.is_regression else "accuracy"

    def chance_level(self) -> float:
        """The metric of an uninformed guess: given, else majority-class rate (0 for R²)."""
        if self.chance is not None:
            return float(self.chance)
        targets = self.targets()
        if targets.is_floating_point():
            return 0.0
        return float(torch.bincount(targets.reshape(-1).long()).max()) / targets.numel()


@torch.no_grad()
def evaluate(model: Any, sub: Subroutine, params: Mapping[str, torch.Tensor] | None = None) -> float:
    """``sub``'s metric over all its data, read through its readout, with ``params`` substituted
    for the call (``model`` is a HookedModel; its train/eval mode is left as the caller set it)."""
    logits, targets = [], []
    for inputs, batch_targets in sub.batches():
        out = model.forward_with(params or {}, move_to(inputs, model.device))
        logits.append(sub.read(out).float())
        targets.append(batch_targets.to(model.device))
    logits, targets = torch.cat(logits), torch.cat(targets)
    _check_classes(sub, logits, targets)
    return sub.score(logits, targets)


def _check_classes(sub: Subroutine, logits: torch.Tensor, targets: torch.Tensor) -> None:
    """Integer targets scored by the default loss must name one of the readout's classes."""
    if sub.loss is None and not targets.is_floating_point() and logits.dim() > 0:
        n_classes, scored = logits.shape[-1], targets[targets != -100]  # -100: ignored positions
        low, high = (int(scored.min()), int(scored.max())) if scored.numel() else (0, 0)
        if low < 0 or high >= n_classes:
            raise ValueError(f"targets run from {low} to {high} but the readout gives {n_classes} "
                             f"classes (targets must lie in 0..{n_classes - 1}): fix the labels or "
                             "pass a readout= that yields one logit per class")


def as_subroutine(data: Any) -> Subroutine:
    """``data`` if it is a Subroutine, else ``Subroutine(data)`` with the defaults."""
    return data if isinstance(data, Subroutine) else Subroutine(data)


def index_inputs(inputs: Any, idx: torch.Tensor) -> Any:
    """Select examples ``idx`` from a tensor, a dict of tensors, or a tuple of tensors."""
    if isinstance(inputs, torch.Tensor):
        return inputs[idx]
    if isinstance(inputs, Mapping):
        return {k: index_inputs(v, idx) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(index_inputs(v, idx) for v in inputs)
    raise TypeError(f"cannot index inputs of type {type(inputs).__name__}: use tensors, "
                    "dicts of tensors or tuples of tensors")


def move_to(inputs: Any, device: torch.device | str) -> Any:
    """Move a tensor, dict of tensors or tuple of tensors to ``device``."""
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    if isinstance(inputs, Mapping):
        return {k: move_to(v, device) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(move_to(v, device) for v in inputs)
    return inputs


def check_output(model: Any, sub: Subroutine, name: str) -> None:
    """Run one batch of ``sub`` through ``model`` and score it, so that inputs the model cannot
    take, or targets its output cannot be scored against, fail now, naming the subroutine,
    rather than mid-training."""
    inputs, targets = next(iter(sub.batches()))
    out = check_runs(model, inputs, f"subroutine {name!r}")
    with torch.no_grad():
        try:
            logits = sub.read(out)
            targets = targets.to(logits.device)
            _check_classes(sub, logits, targets)
            sub.compute_loss(logits, targets)
            sub.score(logits, targets)
        except (ValueError, TypeError, IndexError, RuntimeError) as err:
            raise ValueError(f"subroutine {name!r}: its targets {tuple(targets.shape)} "
                             f"({targets.dtype}) cannot be scored against the model's output: "
                             f"{err}") from err


def check_runs(model: Any, inputs: Any, what: str) -> Any:
    """The model's output on ``inputs`` (one batch), or a ValueError naming ``what`` and the
    inputs' shapes when the model cannot take them."""
    with torch.no_grad(), model.evaluating():
        try:
            return model(move_to(inputs, model.device))
        except torch.OutOfMemoryError:
            raise
        except (ValueError, TypeError, IndexError, RuntimeError) as err:
            raise ValueError(f"{what}: the model cannot run on its inputs ({_describe(inputs)}): "
                             f"{err}") from err


def _describe(inputs: Any) -> str:
    if isinstance(inputs, torch.Tensor):
        return f"a batch of shape {tuple(inputs.shape)}"
    if isinstance(inputs, Mapping):
        return ", ".join(f"{k}: {tuple(v.shape)}" for k, v in inputs.items()
                         if isinstance(v, torch.Tensor))
    return type(inputs).__name__


def _check_pair(inputs: Any, targets: torch.Tensor) -> None:
    """Tensor data: one target per example, every input tensor as long, finite float targets."""
    if targets.dim() == 0:
        raise ValueError("Subroutine targets are a 0-d tensor: pass one target per example, "
                         "shape (N,) or (N, ...)")
    n = len(targets)
    tensors = (list(inputs.values()) if isinstance(inputs, Mapping) else
               list(inputs) if isinstance(inputs, (tuple, list)) else [inputs])
    for t in tensors:
        if isinstance(t, torch.Tensor) and (t.dim() == 0 or len(t) != n):
            shape = tuple(t.shape)
            raise ValueError(f"Subroutine inputs of shape {shape} and targets of shape "
                             f"{tuple(targets.shape)} disagree on the number of examples "
                             f"({shape[0] if shape else 'none'} vs {n}): pass one target per input")
    if targets.is_floating_point() and not bool(torch.isfinite(targets).all()):
        raise ValueError("Subroutine targets contain NaN or infinite values: drop or fix those "
                         "examples")


def _is_tensor_pair(data: Any) -> bool:
    return isinstance(data, tuple) and len(data) == 2 and isinstance(data[1], torch.Tensor)

