"""Stage 1 of an analysis: make the model solve the composite task before looking for subroutines.

A readout head (pooling + linear) maps the model's output to the task's label space; optionally
the backbone is fine-tuned too, on a copy (the user's model is never changed). Every subroutine of
a task shares that head, as in Break It Down, where subroutine datasets use the composite task's
output format.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ._validate import Bool, Int, Real, check
from .models import HookedModel
from .subroutine import Subroutine, evaluate, move_to


class Readout(nn.Module):
    """Pool the model output to one vector per example (or per position) and apply a linear map.

    ``pooling``: ``"none"`` (output is already (B, d)), ``"first"`` (first position, e.g. CLS),
    ``"flatten"`` (image feature maps), ``"positions"`` (the last ``n_positions`` positions each
    get a prediction, for per-position targets).
    """

    def __init__(self, d_in: int, n_out: int, pooling: str, n_positions: int = 0):
        super().__init__()
        self.pooling, self.n_positions = pooling, n_positions
        self.linear = nn.Linear(d_in, n_out)

    def forward(self, output: torch.Tensor) -> torch.Tensor:
        if self.pooling == "first":
            output = output[:, 0]
        elif self.pooling == "flatten":
            output = output.flatten(1)
        elif self.pooling == "positions":
            output = output[:, -self.n_positions:]
        return self.linear(output)


@dataclass(frozen=True)
class FitConfig:
    """How stage 1 fits the model: head epochs and learning rates, whether to fine-tune."""

    epochs: int = 8
    lr: float = 3e-3
    finetune: bool = True
    backbone_lr: float = 1e-4
    batch_size: int = 32
    seed: int = 0
    solved_at: float = 0.95  # the raw output already solves the task at this metric: no fitting
    progress: bool = True

    def __post_init__(self) -> None:
        check(self, {"epochs": Int(1), "lr": Real(0, low_open=True), "finetune": Bool(),
                     "backbone_lr": Real(0, low_open=True), "batch_size": Int(1), "seed": Int(0),
                     "solved_at": Real(), "progress": Bool()})


@dataclass
class FitResult:
    """What stage 1 did and how well the fitted model does on the composite task."""

    metric: str
    train: float
    test: float
    heldout: float | None
    head: bool
    finetuned: bool
    epochs: int
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit(model: HookedModel, composite_train: Subroutine, composite_test: Subroutine,
        n_outputs: int, config: FitConfig = FitConfig(), heldout: Subroutine | None = None
        ) -> tuple[HookedModel, Readout | None, FitResult]:
    """Fit ``model`` on the composite task; returns ``(model to analyse, readout, result)``.

    The returned model is ``model`` itself unless the backbone was fine-tuned (then a copy).
    """
    if _raw_output_fits(model, composite_test, n_outputs):
        test = _evaluate(model, None, composite_test)
        if test >= config.solved_at:
            result = FitResult(composite_test.metric_name, _evaluate(model, None, composite_train),
                               test, _evaluate(model, None, heldout) if heldout else None,
                               False, False, 0)
            return model, None, result
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        readout = _make_readout(model, composite_train, n_outputs)
        if config.finetune:
            model = HookedModel(copy.deepcopy(model.module), tokenizer=model.tokenizer,
                                output=model.output)
        readout.to(model.device)
        history = _train(model, readout, composite_train, config)
    readout.eval()
    for p in readout.parameters():
        p.requires_grad_(False)
    result = FitResult(composite_test.metric_name, _evaluate(model, readout, composite_train),
                       _evaluate(model, readout, composite_test),
                       _evaluate(model, readout, heldout) if heldout else None, True,
                       config.finetune, config.epochs, history)
    return model, readout, result


def _train(model: HookedModel, readout: Readout, data: Subroutine, config: FitConfig
           ) -> list[dict[str, float]]:
    groups = [{"params": list(readout.parameters()), "lr": config.lr}]
    if config.finetune:
        groups.append({"params": list(model.module.parameters()), "lr": config.backbone_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    history = []
    train_data = Subroutine(data.data, loss=data.loss, metric=data.metric,
                            batch_size=config.batch_size)
    bar = tqdm(range(config.epochs), desc="fit on composite task", disable=not config.progress,
               leave=False)
    with model.evaluating():
        for epoch in bar:
            total, count = 0.0, 0
            for inputs, targets in train_data.batches(shuffle_seed=config.seed * 1000 + epoch):
                inputs, targets = move_to(inputs, model.device), targets.to(model.device)
                loss = data.compute_loss(readout(model(inputs)), targets)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"fitting loss became {loss.item()} at epoch {epoch}; "
                                             "lower FitConfig.lr / backbone_lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(targets)
                count += len(targets)
            history.append({"epoch": epoch, "loss": total / count})
            bar.set_postfix(loss=f"{total / count:.3f}")
    if config.finetune:
        for p in model.module.parameters():
            p.grad = None
    return history


def _make_readout(model: HookedModel, data: Subroutine, n_outputs: int) -> Readout:
    inputs, targets = next(data.batches())
    with torch.no_grad(), model.evaluating():
        out = model(move_to(inputs, model.device))
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"model output is {type(out).__name__}, not a tensor: wrap the model with "
                        "output='<hook name>' to read a hidden state")
    per_position = targets.dim() == 2 and not targets.is_floating_point()
    if per_position:
        if out.dim() != 3 or out.shape[1] < targets.shape[1]:
            raise ValueError(f"per-position targets {tuple(targets.shape)} need a (B, T, d) "
                             f"output with T >= {targets.shape[1]}; got {tuple(out.shape)}")
        return Readout(out.shape[-1], n_outputs, "positions", targets.shape[1])
    if out.dim() == 2:
        return Readout(out.shape[-1], n_outputs, "none")
    if out.dim() == 3:
        return Readout(out.shape[-1], n_outputs, "first")
    return Readout(out[0].numel(), n_outputs, "flatten")


def _raw_output_fits(model: HookedModel, data: Subroutine, n_outputs: int) -> bool:
    """Whether the task's own readout (or the raw output) already has the targets' shape."""
    inputs, targets = next(data.batches())
    with torch.no_grad(), model.evaluating():
        try:
            out = data.read(model(move_to(inputs, model.device)))
        except (TypeError, ValueError, IndexError, RuntimeError):
            return False
    if targets.is_floating_point():
        return tuple(out.shape) == tuple(targets.shape)
    return tuple(out.shape[:-1]) == tuple(targets.shape) and out.shape[-1] == n_outputs


def _evaluate(model: HookedModel, readout: Readout | None, data: Subroutine) -> float:
    """The composite metric, read by the fitted head when there is one (eval mode)."""
    with model.evaluating():
        return evaluate(model, dataclasses.replace(data, readout=readout) if readout is not None else data)
