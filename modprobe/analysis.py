"""The whole analysis of one model on one compositional task, resumable stage by stage.

Stages: (1) fit the model on the composite task, (2) one subnetwork per subroutine, (3) ablations
against size-matched random controls, (4) constituent probes, (5) ``results.json`` and
``report.html``. Each stage's output is written atomically under ``out/``; a rerun with the same
``out/`` and the same configuration loads finished stages instead of recomputing them.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import platform
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from safetensors.torch import save_file

from . import _io, _validate, ablation, probes, pruning, tasks
from ._results import format_table
from .ablation._run import STRATEGIES
from .ablation._verdict import twin_caution
from .fitting import FitConfig, FitResult, Readout, competence, fit, reading_model
from .models import HookedModel, load_model, reinitialize
from .report import write_report
from .subroutine import Subroutine, check_output

SCHEMA_VERSION = _validate.SCHEMA_VERSION
log = logging.getLogger(__name__)
_WEAK_FIT = 0.8  # a composite-task metric below this gets a caution in the verdict


_CONSTRAINTS = {
    "seed": _validate.Int(0), "fit": _validate.Instance(FitConfig),
    "mask": _validate.Instance(pruning.MaskConfig),
    "ablation": _validate.Instance(ablation.AblationConfig),
    "probe": _validate.Instance(probes.ProbeConfig), "probe_hooks": _validate.Strings(none=True),
    "validation_fraction": _validate.Real(0, 1, high_open=True), "progress": _validate.Bool(),
    "twin_check": _validate.Bool(), "erasure": _validate.Bool(),
    "erasure_random": _validate.Int(1), "mask_scope": _validate.OneOf(("all", "upper")),
    "reuse_activations": _validate.Bool(), "stop_unless_learned": _validate.Bool(none=True),
}
# Flat keywords that set one field of a nested stage config: {shorthand: (stage, field)}.
SHORTHANDS = {
    "mask_method": ("mask", "method"), "granularity": ("mask", "granularity"),
    "mask_params": ("mask", "params"), "mask_epochs": ("mask", "epochs"),
    "l0_lambda": ("mask", "l0_lambda"), "necessity": ("mask", "necessity"),
    "max_rounds": ("mask", "max_rounds"), "mask_stable_total": ("mask", "stable_total"),
    "n_random": ("ablation", "n_random"), "complement": ("ablation", "complement"),
    "strategy": ("ablation", "strategy"), "verdict_rules": ("ablation", "rules"),
    "probe_cv": ("probe", "cv"), "probe_measure": ("probe", "measure"),
}
# Old shorthand names still accepted, each with a DeprecationWarning: {old: new}.
RENAMED_SHORTHANDS = {"mask_lambda": "l0_lambda"}
# The analysis probes report MDL besides the score by default.
_PROBE = probes.ProbeConfig(measure=("score", "mdl"))


@dataclass(frozen=True, init=False)
class AnalysisConfig:
    """Everything that decides an analysis' numbers (``run.json`` records it; a resume must match).

    One config per stage: ``fit`` (:class:`~modprobe.fitting.FitConfig`, or just its mode:
    ``"finetune"``, ``"head"`` or ``"as_is"``), ``mask`` (:class:`~modprobe.pruning.MaskConfig`:
    method, granularity, tensors, λ grid, necessity search), ``ablation``
    (:class:`~modprobe.ablation.AblationConfig`: random controls, strategy, verdict rules) and
    ``probe`` (:class:`~modprobe.probes.ProbeConfig`). ``seed`` is every stage's seed: it
    replaces the seeds of the nested configs.
    Shorthands set one nested field each and read it back (``AnalysisConfig(mask_epochs=4)`` is
    ``AnalysisConfig(mask=MaskConfig(epochs=4))``; a shorthand overrides the nested config given
    beside it): ``mask_method``, ``granularity``, ``mask_params``, ``mask_epochs``,
    ``l0_lambda`` (``mask.l0_lambda``, the sparsity penalty's grid), ``necessity``,
    ``max_rounds``, ``n_random``,
    ``complement``, ``strategy``, ``verdict_rules`` (``ablation.rules``), ``probe_cv`` and
    ``probe_measure``, ``mask_stable_total`` (``mask.stable_total``, early stopping's settling
    threshold as a share of all masked entries) (see :data:`SHORTHANDS`).
    ``probe_hooks``: the hook points the probes (and erasures) read (None: every block's
    output). ``validation_fraction``: the share of each subroutine's training data held out to
    choose among the mask grid's settings (default: the pruning stage's 20%; 0: let the pruning
    stage hold out its own, seeded share); the split is the same for
    every ``seed``, like the task's own train/test split, so that seeds vary only the training.
    ``twin_check``: run each subroutine's chosen mask search once more on
    ``reinitialize(model, seed)`` (the same head); when a mask on random weights also performs
    the subroutine, the verdict says that sufficiency cannot separate finding a function from
    creating it (supermasks). ``erasure``: also erase every constituent at every probed hook
    with LEACE and score each subroutine against ``erasure_random`` random-direction erasures
    of the same rank. ``progress``: progress bars. ``scratch_fit``: how
    :func:`modprobe.compare` trains each random-init twin (from scratch,
    :meth:`~modprobe.fitting.FitConfig.scratch`); an analysis of one model uses ``fit`` only.
    ``mask_scope`` (when no mask tensors are given): ``"all"`` masks every weight matrix;
    ``"upper"`` masks the upper half of the model's blocks: on a transformer bridge the attention
    and MLP weight matrices of blocks n/2 .. n-1, on other models the weight matrices of the
    upper half of their longest ``ModuleList`` (every weight matrix when there is none). The
    tensors chosen are stated in ``results["mask_targets"]`` and the summary.
    ``reuse_activations``: mask training and ablation run the layers below the first masked
    tensor once per batch and replay them (identical results; see :mod:`modprobe._prefix`).
    ``stop_unless_learned``: when the fitted model does not pass the task's competence gate,
    stop after stage 1: no masks, ablations or probes are computed (their parts of the results
    are empty, ``results["stopped"]`` says why). ``None`` (default): stop in
    :func:`modprobe.compare`, whose comparison leaves such an arm out anyway, and analyse
    everything in :func:`analyze`.
    """

    seed: int = 0
    fit: FitConfig = FitConfig()
    scratch_fit: FitConfig = FitConfig.scratch()
    mask: pruning.MaskConfig = pruning.MaskConfig()
    ablation: ablation.AblationConfig = ablation.AblationConfig()
    probe: probes.ProbeConfig = _PROBE
    probe_hooks: tuple[str, ...] | None = None
    twin_check: bool = True
    erasure: bool = False
    erasure_random: int = 100
    validation_fraction: float = pruning.config.HOLDOUT
    mask_scope: str = "all"
    reuse_activations: bool = True
    stop_unless_learned: bool | None = None
    progress: bool = True

    def __init__(self, **settings: Any) -> None:
        settings = _current_names(settings)
        names = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(settings) - set(names) - set(SHORTHANDS))
        if unknown:
            raise TypeError(f"AnalysisConfig got unknown setting(s) {unknown}; it takes "
                            f"{names} and the shorthands {sorted(SHORTHANDS)}")
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, settings.get(f.name, f.default))
        if isinstance(self.fit, str):
            object.__setattr__(self, "fit", FitConfig(mode=self.fit, seed=self.seed))
        _validate.as_tuple(self, "probe_hooks")
        _validate.check(self, _CONSTRAINTS, {
            "validation_fraction": "0 uses the pruning default, e.g. 0.2 holds out a fifth"})
        changes: dict[str, dict[str, Any]] = {"fit": {}, "scratch_fit": {}, "mask": {},
                                              "ablation": {}, "probe": {}}
        for short, value in settings.items():
            if short in SHORTHANDS:
                stage, name = SHORTHANDS[short]
                changes[stage][name] = value
        for stage, fields in changes.items():
            current = getattr(self, stage)
            try:
                nested = (current.replace(seed=self.seed, **fields) if stage == "mask" else
                          dataclasses.replace(current, seed=self.seed, **fields))
            except (TypeError, ValueError) as err:
                message = str(err)  # named as the caller wrote it: a shorthand or the stage
                for short, (part, name) in SHORTHANDS.items():
                    if part == stage and short in settings:
                        message = re.sub(rf"^\w+\.{name}\b", f"AnalysisConfig.{short}", message)
                if message == str(err):
                    message = f"AnalysisConfig.{stage}: {message}"
                raise type(err)(message) from None
            object.__setattr__(self, stage, nested)

    def __getattr__(self, name: str) -> Any:
        """A shorthand reads its nested field (``config.n_random`` is ``config.ablation.n_random``)."""
        if name in RENAMED_SHORTHANDS:
            name = _current_names({name: None}).popitem()[0]
        if name in SHORTHANDS and SHORTHANDS[name][0] in self.__dict__:
            stage, field_name = SHORTHANDS[name]
            return getattr(self.__dict__[stage], field_name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @classmethod
    def quick(cls, seed: int = 0, **overrides: Any) -> "AnalysisConfig":
        """Small settings for demos and smoke runs (minutes on a laptop CPU): the upper half of
        the blocks masked (``mask_scope="upper"``), a shorter schedule, fewer controls."""
        settings: dict[str, Any] = dict(seed=seed, fit=FitConfig(epochs=6, seed=seed),
                                        mask_epochs=12, l0_lambda=(1.0, 300.0),
                                        n_random=80, complement=False,
                                        probe_cv=3, mask_scope="upper")
        settings.update(_current_names(overrides))
        return cls(**settings)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _current_names(settings: dict[str, Any], stacklevel: int = 3) -> dict[str, Any]:
    """``settings`` with each old shorthand renamed (a DeprecationWarning names the new one)."""
    out = dict(settings)
    for old, new in RENAMED_SHORTHANDS.items():
        if old in out:
            if new in out:
                raise TypeError(f"AnalysisConfig got both {old!r} and its new name {new!r}; "
                                f"pass {new!r} only")
            _validate.deprecated(f"the AnalysisConfig shorthand {old!r}", repr(new), stacklevel)
            out[new] = out.pop(old)
    return out


@dataclass
class Analysis:
    """What :func:`analyze` found; ``results`` is exactly what ``results.json`` holds."""

    results: dict[str, Any]
    subnetworks: dict[str, Any] = field(repr=False)
    out: Path | None = None

    @property
    def verdict(self) -> str:
        """The verdict sentence, as on every verdict-bearing object (``results["verdict"]``
        holds it as ``text`` beside its headline, the per-subnetwork verdicts and evidence)."""
        return self.results["verdict"]["text"]

    @property
    def scalars(self) -> dict[str, float | None]:
        return self.results["scalars"]

    @property
    def ablation(self) -> "ablation.AblationReport":
        """The ablation stage's report (rows, isolation verdicts, overlap, controls)."""
        return ablation.AblationReport.from_dict(self.results["ablation"])

    @property
    def probes(self) -> "probes.ProbeReport":
        """The probe stage's report."""
        return probes.ProbeReport.from_dict(self.results["probes"])

    @property
    def erasure(self) -> "probes.ErasureReport | None":
        """The erasure stage's report (None when ``AnalysisConfig.erasure`` was off)."""
        data = self.results.get("erasure")
        return None if data is None else probes.ErasureReport.from_dict(data)

    def summary(self) -> str:
        """The verdict, its evidence as a terminal table, and where the report is."""
        evidence = self.results["verdict"]["evidence"]
        lines = [self.verdict] + (["", format_table(evidence)] if evidence else [])
        targets = self.results.get("mask_targets")
        if targets:
            lines += ["", f"masked: {targets['description']}"]
        timings = self.results.get("timings") or {}
        if timings:
            lines += ["", "stage times: " + ", ".join(
                f"{stage} {t['wall_s']:.1f} s wall / {t['cpu_s']:.1f} s CPU"
                + (" (resumed)" if t.get("resumed") else "") for stage, t in timings.items())]
            for stage, t in timings.items():
                lines += [f"  {stage}: {s['step']} {s['wall_s']:.1f} s wall / {s['cpu_s']:.1f} s "
                          "CPU" + (f", {s['epochs']} epochs" if s.get("epochs") else "")
                          for s in t.get("steps", [])]
        if self.out is not None:
            lines += ["", f"report: {self.out / 'report.html'}"]
        return "\n".join(lines)


def analyze(model: Any, task: Any, out: str | Path | None = None,
            config: AnalysisConfig | None = None, *, label: str = "model") -> Analysis:
    """Run the five stages on ``model`` (a spec, module or HookedModel) and ``task``.

    ``task`` is a :class:`modprobe.tasks.Task` or a family name (built with ``seed``).
    ``label`` names the model in the report rows (the comparison uses "pretrained" and
    "random_init"). With ``out``, every stage is saved and a rerun resumes.
    """
    config = config or AnalysisConfig()
    if not isinstance(config, AnalysisConfig):
        raise TypeError(f"config must be an AnalysisConfig, got {type(config).__name__}")
    hm = load_model(model)
    if isinstance(task, str):
        task = tasks.load(task, seed=config.seed, model=hm)
    tasks.check_model(task, hm)
    targets = mask_targets(hm, config)
    mask_config = config.mask.replace(params=targets["params"],
                                      share_prefix=config.reuse_activations)
    _check_inputs(hm, task, config, label)
    store = (_Store(Path(out), fingerprint(hm, task, label), settings_of(config, mask_config),
                    lambda: unrecorded_fingerprint(hm, task, config, mask_config, label))
             if out is not None else None)

    timings: dict[str, dict[str, Any]] = {}
    steps: dict[str, list[dict[str, Any]]] = {"masks": [], "twin": [], "ablation": []}
    # The twin is copied before anything runs the model: a bridge that has run forward passes
    # can hold non-leaf tensors that deepcopy refuses.
    twin_module = (reinitialize(hm, seed=config.seed).module
                   if config.twin_check and not (store and store.done("twin.json")) else None)
    with _timed(timings, "fit"):
        fitted, readout, fit_result = _fit_stage(hm, task, config, store)
    gate = competence(fit_result, threshold=task.competence_threshold)
    if config.stop_unless_learned is True and not gate["competent"]:
        log.info("the fitted model did not learn the task: stopping after stage 1")
        return _finish(store, out, _stopped_results(hm, task, config, label, fit_result, gate),
                       {}, timings, targets)

    def with_head(sub: Subroutine) -> Subroutine:
        """The fitted head reads every subroutine, unless the task gave it its own readout."""
        if readout is None or sub.readout is not None:
            return sub
        return dataclasses.replace(sub, readout=readout)

    train = {name: with_head(split.train) for name, split in task.subroutines.items()}
    validation = {}
    if config.validation_fraction > 0:
        for name, sub in train.items():
            train[name], validation[name] = sub.holdout(config.validation_fraction)
    subnetworks = _cached(store, "masks", lambda: pruning.train_subnetworks(
        fitted, train, mask_config, validation=validation, progress=config.progress,
        timings=steps["masks"]),
        save=lambda subs, d: [s.save(d / _validate.path_name(n)) for n, s in subs.items()],
        load=lambda d: _load_masks(store, list(task.subroutines)),
        timings=timings)

    twin = _cached(store, "twin.json", lambda: _twin_check(
        fitted.with_module(twin_module), train, validation, subnetworks, config, steps["twin"]),
        save=lambda found, p: _write_stage(p, "twin", {"subnetworks": found}),
        load=lambda p: _read_stage(p, "twin", lambda d: d["subnetworks"]),
        timings=timings) if config.twin_check else {}

    tests = {name: with_head(split.test) for name, split in task.subroutines.items()}
    ablation_report = _cached(store, "ablation.json", lambda: ablation.run(
        fitted, subnetworks, tests,
        dataclasses.replace(config.ablation, reuse_prefix=config.reuse_activations), label=label,
        progress=config.progress, timings=steps["ablation"]),
        save=lambda rep, p: _write_stage(p, "ablation", rep.to_dict()),
        load=lambda p: _read_stage(p, "ablation", ablation.AblationReport.from_dict),
        timings=timings)

    probe_report = _cached(store, "probes.json", lambda: probes.decodability(
        fitted, task.constituents, config=config.probe, hooks=config.probe_hooks,
        heldout=task.heldout_constituents, label=label, progress=config.progress),
        save=lambda rep, p: _write_stage(p, "probes", rep.to_dict()),
        load=lambda p: _read_stage(p, "probes", probes.ProbeReport.from_dict),
        timings=timings)

    erasure_report = None if not config.erasure else _cached(
        store, "erasure.json", lambda: probes.erasure_effects(
            fitted, tests, task.constituents, hooks=config.probe_hooks,
            n_random=config.erasure_random, seed=config.seed),
        save=lambda rep, p: _write_stage(p, "erasure", rep.to_dict()),
        load=lambda p: _read_stage(p, "erasure", probes.ErasureReport.from_dict),
        timings=timings)

    _add_twin_evidence(ablation_report.isolation, twin, config.ablation.rules)
    results = _results(hm, task, config, label, fit_result, subnetworks, ablation_report,
                       probe_report)
    if erasure_report is not None:
        results["erasure"] = erasure_report.to_dict()
    results["twin_check"] = twin
    for stage, rows in steps.items():
        if rows and stage in timings:
            timings[stage]["steps"] = rows
    return _finish(store, out, results, subnetworks, timings, targets)


def _finish(store: "_Store | None", out: str | Path | None, results: dict[str, Any],
            subnetworks: dict[str, Any], timings: dict[str, Any],
            targets: dict[str, Any]) -> Analysis:
    """Add the timings and mask targets, write results.json and the report, return the Analysis."""
    results["timings"] = timings
    results["mask_targets"] = targets
    analysis = Analysis(results, subnetworks, Path(out) if out is not None else None)
    if store is not None:
        _io.write_json(store.root / "results.json", results)
        write_report(results, store.root / "report.html")
    return analysis


def mask_targets(hm: HookedModel, config: AnalysisConfig) -> dict[str, Any]:
    """The tensors the mask search covers and why: ``{"params": patterns or None, "scope",
    "description"}`` (``mask_params`` when given, else the ``mask_scope`` default)."""
    if config.mask_params is not None:
        return {"params": list(config.mask_params), "scope": "mask_params",
                "description": "the tensors named by mask_params: "
                               + ", ".join(config.mask_params)}
    if config.mask_scope == "all":
        return {"params": None, "scope": "all", "description": "every weight matrix except "
                "the embeddings (mask_scope='all')"}
    n_layers = getattr(getattr(hm.module, "cfg", None), "n_layers", None)
    if hm.is_bridge and n_layers:
        upper = range(n_layers // 2, n_layers)
        params = [f"blocks.{i}.{part}.*.weight" for i in upper for part in ("attn", "mlp")]
        return {"params": params, "scope": "upper", "description": (
            f"the attention and MLP weight matrices of the upper {len(upper)} of {n_layers} "
            f"blocks (blocks.{upper[0]}-{upper[-1]}; mask_scope='upper', override with "
            "mask_params / --mask-params)")}
    lists = [(path, m) for path, m in hm.module.named_modules()
             if isinstance(m, torch.nn.ModuleList) and len(m) >= 2]
    if not lists:
        return {"params": None, "scope": "all", "description": "every weight matrix except the "
                "embeddings (mask_scope='upper' found no list of blocks in this model)"}
    path, blocks = max(lists, key=lambda item: len(item[1]))
    upper = range(len(blocks) // 2, len(blocks))
    heads = tuple(f"{path}.{i}." for i in upper)
    params = [n for n, w in hm.params().items() if n.startswith(heads) and w.dim() >= 2]
    return {"params": params, "scope": "upper", "description": (
        f"the weight matrices of the upper {len(upper)} of the {len(blocks)} blocks of "
        f"{path!r} (mask_scope='upper', override with mask_params / --mask-params)")}


# ----------------------------------------------------------------------------- stages
def _fit_stage(hm: HookedModel, task: Any, config: AnalysisConfig, store: "_Store | None"
               ) -> tuple[HookedModel, Readout | None, FitResult]:
    """Stage 1, or its saved result: the head (and fine-tuned backbone) from ``out/model``."""
    n_outputs = task.n_classes or int(task.composite.train.targets().shape[-1])
    if store is not None and store.done("fit.json"):
        saved, result = _read_stage(store.path("fit.json"), "fit",
                                    lambda d: (d, FitResult(**d["result"])), ("result", "readout"))
        fitted, readout = reading_model(hm, result), None
        if result.finetuned:
            fitted = fitted.with_module(copy.deepcopy(hm.module))
            _load_parameters(fitted, store.root / "model" / "backbone.safetensors")
        if saved["readout"] is not None:
            readout = Readout(**saved["readout"])
            _load_parameters(readout, store.root / "model" / "head.safetensors")
            readout.to(fitted.device).eval().requires_grad_(False)
        return fitted, readout, result
    fit_config = dataclasses.replace(config.fit, seed=config.seed, progress=config.progress)
    fitted, readout, result = fit(hm, task.composite.train, task.composite.test, n_outputs,
                                  fit_config, heldout=task.heldout)
    if store is not None:
        if result.finetuned:
            _save_parameters(fitted.module, store.root / "model" / "backbone.safetensors")
        head = None
        if readout is not None:
            _save_parameters(readout, store.root / "model" / "head.safetensors")
            head = dict(d_in=readout.linear.in_features, n_out=readout.linear.out_features,
                        pooling=readout.pooling, n_positions=readout.n_positions)
        _write_stage(store.path("fit.json"), "fit", {"result": result.to_dict(), "readout": head})
    return fitted, readout, result


def _twin_check(twin: HookedModel, train: dict[str, Subroutine],
                validation: dict[str, Subroutine], subnetworks: dict[str, Any],
                config: AnalysisConfig, timings: list[dict] | None = None) -> dict[str, Any]:
    """Each subroutine's chosen search (its selected λ, no necessity rounds) on ``twin`` (the
    user's architecture re-initialised, read like the fitted model):
    ``{name: {"keep_only", "full", "full_trained", "density", "data"}}``, on validation data
    when there is any."""
    out = {}
    for name, sub in subnetworks.items():
        cfg = dataclasses.replace(sub.config, necessity="none")
        val = {name: validation[name]} if name in validation else None
        found = pruning.train_subnetworks(twin, {name: train[name]}, cfg, validation=val,
                                          progress=config.progress, timings=timings)[name]
        metric = train[name].metric_name
        key = f"val_{metric}" if val else metric
        full_key = f"val_full_{metric}" if val else f"full_{metric}"
        out[name] = {"keep_only": found.metrics[key], "full": found.metrics[full_key],
                     "full_trained": sub.metrics[full_key], "density": found.density,
                     "data": "validation" if val else "training"}
    return out


def _add_twin_evidence(isolation: list[dict[str, Any]], twin: dict[str, Any],
                       rules: ablation.VerdictRules) -> None:
    """Put the twin's keep-only score beside each verdict, and its caution in the reason."""
    for entry in isolation:
        found = twin.get(entry["subnetwork"])
        if not found or entry.get("verdict") in (None, "cannot judge"):
            continue
        caution = twin_caution(entry, found["keep_only"], found["full_trained"], rules)
        entry["twin_keep_only"], entry["creatable"] = found["keep_only"], caution is not None
        if caution:
            entry["reason"] += "; " + caution


def _cached(store: "_Store | None", name: str, compute: Callable[[], Any],
            save: Callable[[Any, Path], Any], load: Callable[[Path], Any],
            timings: dict[str, dict[str, Any]]) -> Any:
    """Load stage ``name`` when a previous run finished it, else compute, time and save it."""
    stage = name.removesuffix(".json")
    if store is not None and store.done(name):
        timings[stage] = {"wall_s": 0.0, "cpu_s": 0.0, "resumed": True}
        log.info("stage %s: resumed from %s", stage, store.path(name))
        return load(store.path(name))
    with _timed(timings, stage):
        value = compute()
    if store is not None:
        store.finish(name, value, save)
    return value


@contextlib.contextmanager
def _timed(timings: dict[str, dict[str, Any]], stage: str) -> Iterator[None]:
    """Record the stage's wall and CPU seconds (this process, every thread) in ``timings``."""
    wall, cpu = time.perf_counter(), time.process_time()
    log.info("stage %s: started", stage)
    yield
    timings[stage] = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
                      "resumed": False}
    log.info("stage %s: done in %.1f s", stage, timings[stage]["wall_s"])


def _check_inputs(hm: HookedModel, task: Any, config: AnalysisConfig, label: str) -> None:
    """Everything checkable before the first stage: names that become paths, parameter patterns
    and probe hooks against the model, the hold-out split, and each subroutine that brings its
    own readout scored on one batch of the model's output."""
    if not isinstance(label, str) or not label.strip():
        raise ValueError(f"label must be a non-empty string, got {label!r}")
    missing = [a for a in ("composite", "subroutines", "constituents") if not hasattr(task, a)]
    if missing:
        raise TypeError(f"task must be a modprobe.tasks.Task or a family name "
                        f"{tasks.names()}, got {type(task).__name__} (it lacks {missing})")
    if not task.subroutines:
        raise ValueError("the task has no subroutines: there is nothing to find subnetworks for")
    for name in task.subroutines:
        _validate.path_name(name)
    _validate.against_model(hm, config.mask.params, config.probe_hooks)
    for name, split in task.subroutines.items():
        if config.validation_fraction > 0:
            split.train.holdout(config.validation_fraction)
        for sub in (split.train, split.test):
            if sub.readout is not None:
                check_output(hm, sub, name)


def _write_stage(path: Path, kind: str, data: dict[str, Any]) -> None:
    _io.write_json(path, {"schema_version": SCHEMA_VERSION, "kind": kind, **data})


def _read_stage(path: Path, kind: str, build: Callable[[dict[str, Any]], Any],
                required: tuple[str, ...] = ()) -> Any:
    """A saved stage, checked; a file that does not hold what its stage wrote is refused."""
    data = _validate.read_json(path, kind=kind, required=required)
    try:
        return build(data)
    except (TypeError, KeyError, ValueError) as err:
        raise ValueError(f"{path} does not hold a complete {kind} stage ({err}); delete it and "
                         "re-run to recompute the stage") from None


def _load_masks(store: "_Store", names: list[str]) -> dict[str, Any]:
    """The subnetworks recorded in ``stages/masks.done``, refused unless they are exactly this
    task's subroutines and each directory holds the subnetwork of its name."""
    done = store.root / "stages" / "masks.done"
    recorded = _validate.read_json(done, kind="masks", required=("names",))["names"]
    if sorted(recorded) != sorted(names):
        raise ValueError(f"{done} records subnetworks {recorded}, but the task's subroutines are "
                         f"{names}; delete {store.root / 'masks'} and {done} to retrain them")
    subnetworks = {}
    for name in recorded:
        sub = pruning.Subnetwork.load(store.root / "masks" / _validate.path_name(name))
        if sub.name != name:
            raise ValueError(f"{store.root / 'masks' / name} holds subnetwork {sub.name!r}, not "
                             f"{name!r}; delete {done} to retrain the masks")
        subnetworks[name] = sub
    return subnetworks


# ----------------------------------------------------------------------------- results
def _results(hm: HookedModel, task: Any, config: AnalysisConfig, label: str, fit_result: FitResult,
             subnetworks: dict[str, Any], ablation_report: Any, probe_report: Any) -> dict[str, Any]:
    subs = {name: {"density": s.density, "densities": s.densities, "metrics": s.metrics,
                   "history": s.history, "notes": list(getattr(s, "notes", [])),
                   "necessary_density": s.necessary_density, "necessity": s.necessity}
            for name, s in subnetworks.items()}
    isolation = _isolation_scalar(ablation_report.isolation)
    decod = probe_report.decodability_of(label) if probe_report.rows else None
    bid = ablation.break_it_down_scores(ablation_report.rows)
    scalars = {"task_metric": fit_result.test,
               "density": (sum(s.density for s in subnetworks.values()) / len(subnetworks)
                           if subnetworks else None),
               "isolation": isolation, "decodability": decod,
               "subnetwork_score": ablation.mean_score(bid, "subnetwork_score"),
               "ablation_score": ablation.mean_score(bid, "ablation_score")}
    return {
        "schema_version": SCHEMA_VERSION, "kind": "analysis", "label": label,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(), "config": config.to_dict(),
        "model": {"description": repr(hm), "bridge": hm.is_bridge, "output": hm.output},
        "task": {"name": task.name, "description": task.describe(), "options": task.options,
                 "n_classes": task.n_classes},
        "fit": fit_result.to_dict(), "subnetworks": subs,
        "ablation": ablation_report.to_dict(), "probes": probe_report.to_dict(),
        "break_it_down": bid, "scalars": scalars,
        "verdict": _verdict(ablation_report.isolation, probe_report, label, fit_result,
                            task.competence_threshold),
    }


def _stopped_results(hm: HookedModel, task: Any, config: AnalysisConfig, label: str,
                     fit_result: FitResult, gate: dict[str, Any]) -> dict[str, Any]:
    """The results of an analysis stopped after stage 1 (``stop_unless_learned``): the fit and
    the competence verdict, with empty masks, ablation and probes."""
    results = _results(hm, task, config, label, fit_result, {}, ablation.AblationReport(rows=[]),
                       probes.ProbeReport(rows=[]))
    results["stopped"] = ("the fitted model did not learn the task (competence gate), so no "
                          "masks, ablations or probes were computed (stop_unless_learned)")
    results["verdict"]["text"] += " Stopped after stage 1: " + results["stopped"] + "."
    results["twin_check"] = {}
    return results


def _isolation_scalar(isolation: list[dict[str, Any]]) -> float | None:
    """Mean over subnetworks of (effect on its own subroutine - mean effect on the others).

    ``effect`` = mean random-control metric - metric after ablating the subnetwork, so a
    positive value means selective damage beyond size-matched random ablations.
    """
    values = []
    for entry in isolation:
        if entry.get("effect_target") is None or not entry.get("others"):
            continue
        others = [o["effect"] for o in entry["others"]]
        values.append(entry["effect_target"] - sum(others) / len(others))
    return sum(values) / len(values) if values else None


def _verdict(isolation: list[dict[str, Any]], probe_report: Any, label: str,
             fit_result: FitResult, threshold: float) -> dict[str, Any]:
    gate = competence(fit_result, threshold=threshold)
    if not gate["competent"]:
        return {"text": gate["text"], "headline": gate["text"],
                "isolated": {e["subnetwork"]: None for e in isolation},
                "verdicts": {e["subnetwork"]: "cannot judge" for e in isolation},
                "evidence": [], "competence": gate}
    judged = [e for e in isolation if e.get("verdict") is not None]
    isolated = [e["subnetwork"] for e in judged if e["verdict"] == "isolated"]
    rest = ", ".join(f"{e['subnetwork']}: {e['verdict']}" for e in judged
                     if e["verdict"] != "isolated")
    if not judged:
        head = "No subnetwork could be judged (each needs its own and another eval task)."
    elif all(e["verdict"] == "cannot judge" for e in judged):
        head = f"Cannot judge: {judged[0]['reason']}."
    elif len(isolated) == len(judged):
        head = (f"Modular: all {len(judged)} subnetworks are isolated (each is sufficient for its "
                "subroutine, ablating its necessary set hurts that subroutine beyond size-matched "
                "random ablations, and no other).")
    elif isolated:
        head = (f"Partly modular: {len(isolated)} of {len(judged)} subnetworks are isolated "
                f"({', '.join(isolated)}); {rest}.")
    else:
        head = f"Not shown to be modular: no subnetwork is isolated ({rest})."
    text = (f"{head} The fitted model scores {fit_result.test:.3f} ({fit_result.metric}) on the "
            "composite task's test data.")
    if fit_result.test < _WEAK_FIT:
        text += (" Caution: the model does not solve the composite task well, so its subnetworks "
                 "say little about how a working solution is organised.")
    if probe_report.rows:
        best = list(probe_report.best_layers(label).items())
        shown = ", ".join(f"{c} at {h}" for c, h in best[:6])
        more = f" and {len(best) - 6} more" if len(best) > 6 else ""
        text += (f" Constituent decodability (best layer's selectivity, mean over constituents): "
                 f"{probe_report.decodability_of(label):.3f}; best layers: {shown}{more}.")
    evidence = [{"subnetwork": e["subnetwork"], "target": e["target_task"],
                 "verdict": e.get("verdict"), "effect_on_target": e["effect_target"],
                 "p_adjusted": e["p_target_adjusted"], "reason": e["reason"]} for e in isolation]
    return {"text": text, "headline": head,
            "isolated": {e["subnetwork"]: e["isolated"] for e in isolation},
            "verdicts": {e["subnetwork"]: e.get("verdict") for e in isolation},
            "evidence": evidence, "competence": gate}


_RESULTS_KEYS = {
    "analysis": ("label", "config", "model", "task", "fit", "subnetworks", "ablation", "probes",
                 "scalars", "verdict"),
    "comparison": ("config", "seeds", "metrics", "verdict", "pretrained", "random"),
}


def read_results(path: str | Path) -> dict[str, Any]:
    """A results.json (of an analysis or a comparison), checked: parseable, a schema version this
    modprobe reads, a known ``kind`` and every key the report needs; errors name the path.
    An older file is returned in the current vocabulary (see :func:`upgrade_results`)."""
    results = _validate.read_json(path, kind=tuple(_RESULTS_KEYS), versions=_READABLE)
    _check_results(results, str(path))
    return upgrade_results(results)


_READABLE = (2, 3, SCHEMA_VERSION)  # results.json versions read_results reads
# Version 2 names that version 3 renamed, per part of an analysis' results.
_RENAMED = {"p_holm": "p_adjusted", "p_target_holm": "p_target_adjusted",
            "n_boot": "n_bootstrap"}
# Version 3 probe row columns that version 4 renamed.
_RENAMED_PROBE = {"accuracy": "score", "control_accuracy": "control_score",
                  "heldout_accuracy": "heldout_score"}


def upgrade_results(results: dict[str, Any]) -> dict[str, Any]:
    """An analysis' or comparison's results dict of an older schema version in the current
    vocabulary (a copy; a current one, or one of a version it does not know, is returned as it
    is: :func:`read_results` refuses those).

    Version 2 to 3: ablation rows, isolation entries, verdict evidence and erasure rows say
    ``p_adjusted`` (was ``p_holm``), ablation and erasure configs ``n_bootstrap`` (was
    ``n_boot``), probe rows name their model in ``model`` (was ``condition``); the ``config``
    keeps its version 2 (flat) layout. Version 3 to 4: probe rows say ``score``,
    ``control_score`` and ``heldout_score`` (were ``accuracy``, ``control_accuracy`` and
    ``heldout_accuracy``), the probe configs name the measure ``"score"`` (was ``"accuracy"``)
    and the probe and erasure configs the pooling of every position ``"tokens"`` (was
    ``"none"``)."""
    version = results.get("schema_version")
    if version == SCHEMA_VERSION or version not in _READABLE:
        return results
    results = copy.deepcopy(results)
    results["schema_version"] = SCHEMA_VERSION
    if results["kind"] == "comparison":
        for group in ("pretrained", "random"):
            results[group] = [upgrade_results(run) for run in results[group]]
        return results
    if version == 2:
        _from_version_2(results)
    _from_version_3(results)
    return results


def _from_version_3(results: dict[str, Any]) -> None:
    probe_part = results.get("probes") or {}
    probe_part["rows"] = [{_RENAMED_PROBE.get(k, k): v for k, v in row.items()}
                          for row in probe_part.get("rows", [])]
    configs = list((probe_part.get("configs") or {}).values())
    configs.append((results.get("config") or {}).get("probe"))  # nested since version 3
    configs.append((results.get("erasure") or {}).get("config"))
    for config in configs:
        if isinstance(config, dict) and isinstance(config.get("measure"), list):
            config["measure"] = ["score" if m == "accuracy" else m for m in config["measure"]]
        if isinstance(config, dict) and config.get("pooling") == "none":
            config["pooling"] = "tokens"


def _from_version_2(results: dict[str, Any]) -> None:
    def renamed(entry: dict[str, Any]) -> dict[str, Any]:
        return {_RENAMED.get(k, k): v for k, v in entry.items()}

    ablation_part = results["ablation"]
    for key in ("rows", "isolation"):
        ablation_part[key] = [renamed(e) for e in ablation_part.get(key, [])]
    for entry in ablation_part["isolation"]:
        entry["others"] = [renamed(o) for o in entry.get("others", [])]
    ablation_part["config"] = {k: renamed(v) for k, v in ablation_part.get("config", {}).items()}
    results["verdict"]["evidence"] = [renamed(e) for e in results["verdict"].get("evidence", [])]
    results["probes"]["rows"] = [{("model" if k == "condition" else k): v for k, v in r.items()}
                                 for r in results["probes"].get("rows", [])]
    if "erasure" in results:
        results["erasure"]["rows"] = [renamed(r) for r in results["erasure"].get("rows", [])]
        results["erasure"]["config"] = renamed(results["erasure"].get("config") or {})


def _check_results(results: Any, where: str) -> None:
    kind = results.get("kind")
    missing = [k for k in _RESULTS_KEYS[kind] if k not in results]
    if missing:
        raise ValueError(f"{where} lacks the key(s) {missing} of a {kind} results file; it is "
                         "incomplete: re-run the analysis")
    if kind == "comparison":
        for group in ("pretrained", "random"):
            runs = results[group]
            if not isinstance(runs, list) or not runs:
                raise ValueError(f"{where}: {group!r} must list one analysis per seed")
            for i, run in enumerate(runs):
                if not isinstance(run, dict) or run.get("kind") != "analysis":
                    raise ValueError(f"{where}: {group}[{i}] is not an analysis result")
                _check_results(run, f"{where} {group}[{i}]")


def package_versions() -> dict[str, str]:
    import transformers

    from . import __version__

    out = {"modprobe": __version__, "python": platform.python_version(),
           "torch": torch.__version__, "transformers": transformers.__version__}
    try:
        from importlib.metadata import version

        out["transformer_lens"] = version("transformer-lens")
    except Exception:  # not installed: nothing to report
        pass
    return out


# ----------------------------------------------------------------------------- storage
class _Store:
    """The ``out/`` directory. ``run.json`` records the model's and task's fingerprint and every
    setting; a rerun resumes only when the fingerprint matches and no setting differs (a setting
    that one side lacks is read at its default, so a field added to a config later, at a default
    that keeps the old behaviour, does not orphan the runs made before it). A ``run.json`` from
    before settings were recorded resumes when ``unrecorded()`` (its one-hash fingerprint)
    matches, and is rewritten in the current form."""

    def __init__(self, root: Path, fingerprint: str, settings: dict[str, Any],
                 unrecorded: Callable[[], str]):
        self.root = root
        (root / "stages").mkdir(parents=True, exist_ok=True)
        run = root / "run.json"
        if run.exists():
            saved = _validate.read_json(run, kind="run", required=("fingerprint",))
            if "settings" not in saved:
                if saved["fingerprint"] != unrecorded():
                    raise ValueError(f"{root} holds a run with another model, task or settings "
                                     "(made before run.json named its settings); pass a new out= "
                                     "directory (or delete this one) to start afresh")
                _write_stage(run, "run", {"fingerprint": fingerprint, "settings": settings})
                return
            if saved["fingerprint"] != fingerprint:
                raise ValueError(f"{root} holds a run of another model or task; pass a new out= "
                                 "directory (or delete this one) to start afresh")
            changed = changed_settings(saved["settings"], settings)
            if changed:
                shown = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, a, b in changed[:4])
                more = f"; and {len(changed) - 4} more" if len(changed) > 4 else ""
                raise ValueError(f"{root} holds a run with other settings ({shown}{more}); pass "
                                 "a new out= directory (or delete this one) to start afresh")
        else:
            _write_stage(run, "run", {"fingerprint": fingerprint, "settings": settings})

    def path(self, name: str) -> Path:
        return self.root / ("masks" if name == "masks" else f"stages/{name}")

    def done(self, name: str) -> bool:
        return (self.root / "stages" / f"{name}.done").exists() or (
            name.endswith(".json") and self.path(name).exists())

    def finish(self, name: str, value: Any, save: Callable[[Any, Path], Any]) -> None:
        """Save a stage, then mark it done (a crash between the two just redoes the stage)."""
        target = self.path(name)
        if name == "masks":
            import shutil

            tmp = self.root / ".masks.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                tmp.mkdir(parents=True)
                save(value, tmp)
                shutil.rmtree(target, ignore_errors=True)
                tmp.rename(target)
            except BaseException:  # a full disk or an interrupt leaves no half-written copy
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            _write_stage(self.root / "stages" / "masks.done", "masks", {"names": list(value)})
        else:
            save(value, target)


def fingerprint(hm: HookedModel, task: Any, label: str) -> str:
    """sha256 of the model's content (every parameter's and buffer's name, dtype, shape and
    bytes), the task and the label; the settings are recorded beside it (:func:`settings_of`)."""
    return _digest(hm, _identity(hm, task, label))


def unrecorded_fingerprint(hm: HookedModel, task: Any, config: AnalysisConfig,
                           mask_config: pruning.MaskConfig, label: str) -> str:
    """The fingerprint of a ``run.json`` written before settings were recorded beside it: the
    model's content, the task and every setting in one hash."""
    return _digest(hm, {**_identity(hm, task, label), "config": config.to_dict(),
                        "mask": mask_config.to_dict()})


def _identity(hm: HookedModel, task: Any, label: str) -> dict[str, Any]:
    """What names the model and task beside the model's bytes."""
    return {"task": task.name, "options": task.options, "model": repr(hm), "output": hm.output,
            "label": label}


def _digest(hm: HookedModel, described: dict[str, Any]) -> str:
    """sha256 of the model's content, then of ``described`` as sorted JSON."""
    digest = _content_digest(hm)
    digest.update(json.dumps(described, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _content_digest(hm: HookedModel) -> Any:
    """A sha256 fed every parameter's and buffer's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for kind, named in (("param", hm.module.named_parameters()),
                            ("buffer", hm.module.named_buffers())):
            for name, tensor in named:
                tensor = tensor.detach().cpu().contiguous()
                digest.update(f"{kind}:{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
                digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest


#: Settings that change how a run shows its work, not its numbers; a resume may differ in them.
PRESENTATION_SETTINGS = ("progress",)


def settings_of(config: AnalysisConfig, mask_config: pruning.MaskConfig) -> dict[str, Any]:
    """Every setting that decides the numbers, by dotted name (``config.fit.epochs``,
    ``mask.params``: the pruning settings as resolved, with the defaults the config leaves
    open), as JSON values."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else key, inner)
        elif prefix.rsplit(".", 1)[-1] not in PRESENTATION_SETTINGS:
            flat[prefix] = value

    walk("", json.loads(json.dumps({"config": config.to_dict(), "mask": mask_config.to_dict()},
                                   default=str)))
    return flat


def changed_settings(saved: dict[str, Any], now: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(name, saved value, current value)`` for each setting that differs; a name only one side
    records is read at its default there (absent from both defaults, it differs)."""
    default = settings_of(AnalysisConfig(), pruning.MaskConfig())
    missing = object()
    out = []
    for name in sorted(saved.keys() | now.keys()):
        a, b = saved.get(name, default.get(name, missing)), now.get(name, default.get(name, missing))
        if a != b:
            out.append((name, None if a is missing else a, None if b is missing else b))
    return out


def _save_parameters(module: torch.nn.Module, path: Path) -> None:
    tensors = {n: p.detach().cpu().contiguous() for n, p in module.named_parameters()}
    _io.atomic_write(path, lambda tmp: save_file(tensors, tmp))


def _load_parameters(target: Any, path: Path) -> None:
    module = target.module if isinstance(target, HookedModel) else target
    live = dict(module.named_parameters())
    saved = _validate.read_tensors(path)
    wrong = sorted(set(saved) ^ set(live)) + [n for n in saved if n in live
                                               and saved[n].shape != live[n].shape]
    if wrong:
        raise ValueError(f"{path} does not fit this model (parameters {wrong[:5]} are missing, "
                         "extra or of another shape); delete the run directory's model/ and "
                         "stages/ to refit")
    with torch.no_grad():
        for name, tensor in saved.items():
            live[name].copy_(tensor.to(live[name].device))
