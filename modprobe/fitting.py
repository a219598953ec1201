"""Stage 1 of an analysis: make the model solve the composite task before looking for subroutines.

Three modes (``FitConfig.mode``, ``fit=`` on :class:`~modprobe.AnalysisConfig`, ``--fit`` on the
command line):

- ``"finetune"`` (default): a readout head and a fine-tuned *copy* of the backbone, trained in
  train mode (BatchNorm statistics update, dropout is on); a model whose own output already has
  the task's format is fine-tuned as it is, without a new head.
- ``"head"``: only a readout head, on the frozen model in eval mode; the model analysed is the
  user's model itself, its weights and BatchNorm statistics unchanged.
- ``"as_is"``: nothing is trained; the model's own output (through the task's readouts) is
  scored and analysed. It must already have the task's output format.

The head reads the model where its architecture calls for (:func:`modprobe.models.default_reading`:
a causal LM at the last non-padding token of its final block, an encoder at CLS); every
subroutine of a task shares that head, as in Break It Down. Evaluation is always in eval mode.
:func:`competence` says whether the fitted model solves the task well enough to be judged.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from ._validate import Bool, Int, OneOf, Real, Text, check
from .models import POOLS, HookedModel, Reading, default_reading
from .subroutine import Subroutine, evaluate, move_to

FIT_MODES = ("finetune", "head", "as_is")
SCHEDULES = ("constant", "cosine")
COMPETENCE_THRESHOLD = 0.5  # fraction of the way from chance to a perfect score
HEAD_POOLINGS = ("none", "first", "last", "mean", "spatial_mean", "flatten", "positions")


class Readout(nn.Module):
    """Pool the model output to one vector per example (or per position) and apply a linear map.

    ``pooling``: ``"none"`` (output is already (B, d)), ``"first"`` / ``"last"`` / ``"mean"``
    (over the positions of a (B, T, d) output), ``"spatial_mean"`` (global average of a
    (B, C, H, W) feature map), ``"flatten"`` (every feature), ``"positions"`` (the last
    ``n_positions`` positions each get a prediction, for per-position targets).
    """

    def __init__(self, d_in: int, n_out: int, pooling: str, n_positions: int = 0):
        super().__init__()
        if pooling not in HEAD_POOLINGS:
            raise ValueError(f"pooling must be one of {list(HEAD_POOLINGS)}, got {pooling!r}")
        self.pooling, self.n_positions = pooling, n_positions
        self.linear = nn.Linear(d_in, n_out)

    def forward(self, output: torch.Tensor) -> torch.Tensor:
        if self.pooling == "first":
            output = output[:, 0]
        elif self.pooling == "last":
            output = output[:, -1]
        elif self.pooling == "mean":
            output = output.mean(1)
        elif self.pooling == "spatial_mean":
            output = output.flatten(2).mean(-1)
        elif self.pooling == "flatten":
            output = output.flatten(1)
        elif self.pooling == "positions":
            output = output[:, -self.n_positions:]
        return self.linear(output)


@dataclass(frozen=True)
class FitConfig:
    """How stage 1 fits the model (see the module docstring for the three ``mode`` values).

    ``read_at``: the hook point the head reads (``None``: the architecture's choice);
    ``pool``: how a sequence output becomes one vector per example, ``"last"``, ``"first"``,
    ``"mean"``, ``None`` (leave it) or ``"auto"`` (the architecture's choice). ``solved_at``: a
    model whose own output already scores this much is analysed as it is, whatever the mode.
    ``finetune``: the mode as a boolean (True: ``"finetune"``, False: ``"head"``).

    The optimisation: AdamW with ``lr`` for the head and ``backbone_lr`` for a fine-tuned
    backbone, ``weight_decay``, a linear warm-up over the first ``warmup`` share of the steps,
    then a constant rate (``schedule="constant"``) or a cosine decay to zero (``"cosine"``).
    ``stop_at``: stop after the epoch whose metric on a held-out ``validation_fraction`` of the
    training data reaches this value (the test data are never looked at). ``max_grad_norm``:
    clip the gradient of all trained parameters to this total norm before each step (``None``:
    no clipping). :meth:`scratch` is the recipe for a randomly initialised network, which a
    fine-tuning recipe does not train.
    """

    epochs: int = 8
    lr: float = 3e-3
    finetune: bool | None = None
    backbone_lr: float = 1e-4
    batch_size: int = 32
    seed: int = 0
    solved_at: float = 0.95
    progress: bool = True
    mode: str = "finetune"
    read_at: str | None = None
    pool: str | None = "auto"
    weight_decay: float = 0.0
    warmup: float = 0.0
    schedule: str = "constant"
    stop_at: float | None = None
    validation_fraction: float = 0.0
    max_grad_norm: float | None = None

    def __post_init__(self) -> None:
        check(self, {"epochs": Int(1), "lr": Real(0, low_open=True), "finetune": Bool(none=True),
                     "backbone_lr": Real(0, low_open=True), "batch_size": Int(1), "seed": Int(0),
                     "solved_at": Real(), "progress": Bool(), "mode": OneOf(FIT_MODES),
                     "read_at": Text(none=True), "weight_decay": Real(0),
                     "warmup": Real(0, 1, high_open=True), "schedule": OneOf(SCHEDULES),
                     "stop_at": Real(none=True),
                     "validation_fraction": Real(0, 1, high_open=True),
                     "max_grad_norm": Real(0, low_open=True, none=True)})
        if self.stop_at is not None and self.validation_fraction == 0:
            raise ValueError(f"stop_at={self.stop_at} stops on held-out training data, but "
                             "validation_fraction is 0: set e.g. validation_fraction=0.1")
        if self.finetune is not None:
            implied = "finetune" if self.finetune else "head"
            if self.mode not in ("finetune", implied):
                raise ValueError(f"finetune={self.finetune} contradicts mode={self.mode!r}: "
                                 "pass mode only")
            object.__setattr__(self, "mode", implied)
            object.__setattr__(self, "finetune", None)
        if self.pool not in (None, "auto", *POOLS):
            raise ValueError(f"pool must be None, 'auto' or one of {list(POOLS)}, "
                             f"got {self.pool!r}")

    @classmethod
    def scratch(cls, **overrides: Any) -> "FitConfig":
        """The from-scratch recipe for a randomly initialised network (e.g. a random-init twin):
        the whole network trained at ``backbone_lr`` 3e-4 with 10% warm-up and cosine decay,
        weight decay 0.01, gradients clipped to norm 1, up to 40 epochs, stopping once 10% of
        the training data held out reach ``stop_at`` 0.98. ``docs/comparison.md`` records what
        it takes for MiniLM's architecture to learn the language task this way."""
        settings: dict[str, Any] = dict(mode="finetune", epochs=40, lr=1e-3, backbone_lr=3e-4,
                                        weight_decay=0.01, warmup=0.1, schedule="cosine",
                                        stop_at=0.98, validation_fraction=0.1,
                                        max_grad_norm=1.0)
        settings.update(overrides)
        return cls(**settings)


@dataclass
class FitResult:
    """What stage 1 did and how well the fitted model does on the composite task.

    ``mode``: the mode asked for; ``head`` / ``finetuned``: what was trained; ``reading``:
    where the model is read (hook, pooling, why); ``as_is``: the test score of the model's own
    output, when it has the task's format; ``chance``: the metric of a guess.
    """

    metric: str
    train: float
    test: float
    heldout: float | None
    head: bool
    finetuned: bool
    epochs: int
    history: list[dict[str, float]] = field(default_factory=list)
    mode: str = "finetune"
    chance: float | None = None
    reading: dict[str, Any] | None = None
    as_is: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit(model: HookedModel, composite_train: Subroutine, composite_test: Subroutine,
        n_outputs: int, config: FitConfig = FitConfig(), heldout: Subroutine | None = None
        ) -> tuple[HookedModel, Readout | None, FitResult]:
    """Fit ``model`` on the composite task; returns ``(model to analyse, readout, result)``.

    The returned model shares ``model``'s module unless the backbone was fine-tuned (then it is
    a copy); it may read another hook point or pool (``result.reading``).
    """
    chance = composite_test.chance_level()

    def result(fitted: HookedModel, readout: Readout | None, **kw: Any) -> FitResult:
        scores = [_evaluate(fitted, readout, d) if d is not None else None
                  for d in (composite_train, composite_test, heldout)]
        return FitResult(composite_test.metric_name, *scores, mode=config.mode, chance=chance,
                         **kw)

    own = Reading(model.output, model.pool, "the model's own output").to_dict()
    fits_raw = _raw_output_fits(model, composite_test, n_outputs)
    if config.mode == "as_is" and not fits_raw:
        inputs, targets = next(composite_test.batches())
        raise ValueError(
            "fit='as_is' scores the model's own output, but it does not have the task's format "
            f"(targets {tuple(targets.shape[1:])} per example, {n_outputs} outputs): give the "
            "task subroutines a readout=, or use fit='head' to train a readout head on the "
            "frozen model")
    as_is = _evaluate(model, None, composite_test) if fits_raw else None
    if config.mode == "as_is" or (as_is is not None and as_is >= config.solved_at):
        return model, None, result(model, None, head=False, finetuned=False, epochs=0,
                                   reading=own, as_is=as_is)
    finetune = config.mode == "finetune"
    own_head = finetune and fits_raw  # fine-tune the model's own output, no new head
    reading = own if own_head else _reading(model, composite_train, config)
    reader = reading_model(model, reading)
    fit_data, validation = composite_train, None
    if config.validation_fraction > 0:
        fit_data, validation = composite_train.holdout(config.validation_fraction, seed=config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        readout = None if own_head else _make_readout(reader, fit_data, n_outputs)
        if finetune:
            reader = reader.with_module(copy.deepcopy(model.module))
        if readout is not None:
            readout.to(reader.device)
        history = _train(reader, readout, fit_data, config, validation)
    if readout is not None:
        readout.eval().requires_grad_(False)
    return reader, readout, result(reader, readout, head=readout is not None, finetuned=finetune,
                                   epochs=len(history), history=history, reading=reading,
                                   as_is=as_is)


def reading_model(model: HookedModel, result: FitResult | dict[str, Any]) -> HookedModel:
    """``model`` read the way stage 1 read it (a result's ``reading``), sharing its module."""
    reading = result.reading if isinstance(result, FitResult) else result
    if not reading or (reading["output"], reading["pool"]) == (model.output, model.pool):
        return model
    return model.with_output(reading["output"], reading["pool"])


def competence(fit_result: FitResult | dict[str, Any], chance: float | None = None,
               threshold: float = COMPETENCE_THRESHOLD) -> dict[str, Any]:
    """Whether the fitted model solves the composite task well enough to judge its modularity.

    The test score is normalised between chance (0) and a perfect score of 1 (1):
    ``(test - chance) / (1 - chance)``; the model is competent when that reaches ``threshold``
    (default: half of the way from chance to perfect: accuracy 0.75 on a balanced binary task,
    R² 0.5). ``chance`` defaults to the one stage 1 recorded. Below it, ``text`` says why no
    verdict is given; subnetworks of a model that cannot do the task say nothing about how a
    working solution is organised.
    """
    res = fit_result.to_dict() if isinstance(fit_result, FitResult) else dict(fit_result)
    chance = res.get("chance") if chance is None else chance
    chance = 0.0 if chance is None else float(chance)
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold is a fraction of the way from chance to perfect, in (0, 1]; "
                         f"got {threshold}")
    if chance >= 1:
        raise ValueError(f"chance level {chance} leaves no room above it: check the task's chance")
    score, metric = float(res["test"]), res.get("metric", "metric")
    required = chance + threshold * (1 - chance)
    normalised = (score - chance) / (1 - chance)
    competent = normalised >= threshold
    text = "" if competent else (
        f"cannot judge: the model does not solve the task ({metric} {score:.3f} on the composite "
        f"task's test data, chance {chance:.3f}; judging modularity needs at least "
        f"{required:.3f}, {threshold:.0%} of the way from chance to perfect), so no modularity "
        "verdict is given.")
    return {"competent": competent, "metric": metric, "score": score, "chance": chance,
            "threshold": threshold, "required": required, "normalised": normalised, "text": text}


# ----------------------------------------------------------------------------- internals
def _reading(model: HookedModel, data: Subroutine, config: FitConfig) -> dict[str, Any]:
    """Where the head reads ``model``: the architecture's choice unless the config overrides."""
    default = default_reading(model)
    output = config.read_at if config.read_at is not None else default.output
    pool = default.pool if config.pool == "auto" else config.pool
    reason = default.reason
    if config.read_at is not None or config.pool != "auto":
        reason = "set in FitConfig"
    _, targets = next(data.batches())
    if targets.dim() == 2 and not targets.is_floating_point() and pool is not None:
        pool, reason = None, "per-position targets: every position is read"
    return Reading(output, pool, reason).to_dict()


@contextlib.contextmanager
def _training(module: nn.Module) -> Iterator[None]:
    """Train mode (BatchNorm statistics update, dropout on); every submodule's mode restored."""
    modes = {m: m.training for m in module.modules()}
    module.train()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def _train(model: HookedModel, readout: Readout | None, data: Subroutine, config: FitConfig,
           validation: Subroutine | None = None) -> list[dict[str, float]]:
    """Optimise the head (and a fine-tuned backbone) on ``data``; one history row per epoch.

    With ``config.stop_at``, each epoch ends with the metric on ``validation`` (eval mode), and
    training stops at the first epoch that reaches it.
    """
    finetune = config.mode == "finetune"
    groups = []
    if readout is not None:
        groups.append({"params": list(readout.parameters()), "lr": config.lr})
    if finetune:
        groups.append({"params": list(model.module.parameters()), "lr": config.backbone_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    trained = [p for g in groups for p in g["params"]]  # what gradient clipping bounds
    train_data = dataclasses.replace(data, batch_size=config.batch_size)
    # the schedule needs the number of steps; a constant rate without warm-up does not
    scheduled = config.warmup > 0 or config.schedule != "constant"
    n_batches = sum(1 for _ in train_data.batches()) if scheduled else 0
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _rate(config, config.epochs * n_batches))
    history = []
    read = readout if readout is not None else data.read
    bar = tqdm(range(config.epochs), desc="fit on composite task", disable=not config.progress,
               leave=False)
    for epoch in bar:
        # a fine-tuned copy trains in train mode; a frozen backbone stays in eval mode, so the
        # user's model (its BatchNorm statistics included) is never changed
        with (_training(model.module) if finetune else model.evaluating()):
            total, count = 0.0, 0
            for inputs, targets in train_data.batches(shuffle_seed=config.seed * 1000 + epoch):
                inputs, targets = move_to(inputs, model.device), targets.to(model.device)
                loss = data.compute_loss(read(model(inputs)), targets)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"fitting loss became {loss.item()} at epoch {epoch}; "
                                             "lower FitConfig.lr / backbone_lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(trained, config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                total += loss.item() * len(targets)
                count += len(targets)
        row = {"epoch": epoch, "loss": total / count}
        if config.stop_at is not None and validation is not None:
            row["validation"] = _evaluate(model, readout, validation)
        history.append(row)
        bar.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k != "epoch"})
        if "validation" in row and row["validation"] >= config.stop_at:
            break
    if finetune:
        for p in model.module.parameters():
            p.grad = None
    return history


def _rate(config: FitConfig, steps: int) -> Callable[[int], float]:
    """Multiplier of the learning rates at each optimiser step: linear warm-up, then constant or
    cosine decay to zero at ``steps``."""
    warm = int(config.warmup * steps)

    def rate(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if config.schedule == "cosine":
            done = (step - warm) / max(steps - warm, 1)
            return 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))
        return 1.0

    return rate


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
    return Readout(out.shape[1], n_outputs, "spatial_mean")


def _raw_output_fits(model: HookedModel, data: Subroutine, n_outputs: int) -> bool:
    """Whether the task's own readout (or the raw output) already has the targets' shape."""
    inputs, targets = next(data.batches())
    with torch.no_grad(), model.evaluating():
        try:
            out = data.read(model(move_to(inputs, model.device)))
        except (TypeError, ValueError, IndexError, RuntimeError):
            return False
    if not isinstance(out, torch.Tensor):
        return False
    if targets.is_floating_point():
        return tuple(out.shape) == tuple(targets.shape)
    return tuple(out.shape[:-1]) == tuple(targets.shape) and out.shape[-1] == n_outputs


def _evaluate(model: HookedModel, readout: Readout | None, data: Subroutine) -> float:
    """The composite metric, read by the fitted head when there is one (eval mode)."""
    with model.evaluating():
        return evaluate(model, dataclasses.replace(data, readout=readout) if readout is not None else data)
