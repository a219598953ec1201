"""``run``: the Break It Down ablation protocol with size-matched random controls and statistics."""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
from tqdm.auto import tqdm

from ..models import reinitialize, wrap
from ..subroutine import Subroutine, as_subroutine, check_output, move_to
from ._evaluate import Evaluator, MeanAblation
from ._masks import (MaskSpec, build_specs, control_masks, mask_overlap, no_complement,
                     seeded_generator, separation)
from ._report import AblationReport
from .._stats import adjust_pvalues
from .._validate import Bool, Instance, Int, OneOf, Real, Text, check, configured
from ._stats import bootstrap_ci, effect_size, empirical_p, percentile_interval
from ._verdict import VerdictRules, judge

STRATEGIES = ("zero", "random", "mean")
CONTROLS = ("random_ablate", "complement_sampled")


@dataclass(frozen=True)
class AblationConfig:
    """Settings of one ablation study (see :func:`run`).

    ``n_random``: size-matched random controls per subnetwork and kind (with 2 subnetworks x
    2 tasks at least 80 are needed before Holm-corrected empirical p-values can fall below
    0.05). ``strategy``: what removed weights become, ``"zero"``, ``"random"`` (the weights of
    ``reinitialize(model, seed)``) or ``"mean"`` (a neuron's mean activation). ``complement``:
    also draw controls from outside the ablated set only. ``n_bootstrap``: bootstrap resamples of
    the CIs (0 skips them). ``alpha``: the significance level of the verdicts, whose other
    thresholds are ``rules``. ``label`` names the model in the rows. ``batch_size``,
    ``vectorize`` and ``mask_chunk`` change speed and memory, never the numbers.
    """

    n_random: int = 100
    seed: int = 0
    strategy: str = "zero"
    complement: bool = True
    n_bootstrap: int = 1000
    alpha: float = 0.05
    label: str = "model"
    batch_size: int | None = None
    vectorize: bool | None = None
    mask_chunk: int = 8
    rules: VerdictRules = VerdictRules()
    reuse_prefix: bool = True

    def __post_init__(self) -> None:
        check(self, {"n_random": Int(1), "seed": Int(0), "strategy": OneOf(STRATEGIES),
                     "complement": Bool(), "n_bootstrap": Int(0), "alpha": Real(0, 1, True, True),
                     "label": Text(), "batch_size": Int(1, none=True),
                     "vectorize": Bool(none=True), "mask_chunk": Int(1),
                     "rules": Instance(VerdictRules), "reuse_prefix": Bool()},
              {"n_random": "random controls give the p-values", "n_bootstrap": "0 skips the CIs"})

    @property
    def kinds(self) -> tuple[str, ...]:
        return CONTROLS if self.complement else CONTROLS[:1]


def run(model: Any, subnetworks: Mapping[str, Any], eval_data: Mapping[str, Any],
        config: AblationConfig | None = None, *, targets: Mapping[str, str] | None = None,
        reference: Any = None, progress: bool = True, timings: list[dict] | None = None,
        **options: Any) -> AblationReport:
    """Ablate each subnetwork, keep only it, and compare with size-matched random ablations.

    ``subnetworks``: ``{name: Subnetwork}`` (anything with ``.masks``) or ``{name: {param: bool
    mask}}`` (True = kept). ``eval_data``: ``{task: Subroutine or data}``. ``config``: an
    :class:`AblationConfig`; ``options`` set its fields instead (``run(..., n_random=50)``) or
    override the given config's. A subnetwork is judged
    against the task of the same name (or ``targets[name]``). For every subnetwork and task:
    the full model, ``ablate`` (its necessary set removed when the search peeled one, see
    ``MaskConfig.necessity``, else its kept weights), ``ablate_sufficient`` (only the sufficient
    subnetwork removed, when that differs), ``keep_only`` (everything but the sufficient
    subnetwork removed from the masked tensors), ``n_random`` ``random_ablate`` controls removing
    exactly as many weights per tensor as ``ablate`` does (whole units for neuron/head masks),
    and as many ``complement_sampled`` controls drawn only from outside the ablated set. Each
    subnetwork gets a verdict (``isolated``, ``shared``, ``redundant``, ``not isolated``,
    ``not found``, ``cannot tell``, ``cannot judge``; see :mod:`modprobe.ablation._verdict`)
    under the config's ``rules``. With ``strategy="mean"`` a removed unit outputs its mean
    activation over ``reference`` (default all eval data). The model is never modified; a fixed
    ``seed`` gives an identical report. ``label`` names the model in the rows (concatenate a
    random-init twin's report with :meth:`AblationReport.concat`). ``reuse_prefix``: the layers
    below the first masked tensor run once per evaluation batch and are replayed for every
    condition (:mod:`modprobe._prefix`; the scores are bit-identical). A list passed as
    ``timings`` gets the wall and CPU seconds of each subnetwork's conditions.
    """
    cfg = configured(AblationConfig, config, options, "run()")
    n_random, seed, strategy, label = cfg.n_random, cfg.seed, cfg.strategy, cfg.label
    hm = wrap(model)
    tasks = _tasks(eval_data)
    for name, sub in tasks.items():
        check_output(hm, sub, name)
    specs = build_specs(hm, subnetworks)
    params = list(dict.fromkeys(p for s in specs.values() for p in s.masks))
    means = MeanAblation(hm, params) if strategy == "mean" else None
    if means is not None:
        specs = build_specs(hm, subnetworks, output_axes=means.output_axes)
    goals = _targets(specs, tasks, targets)
    _warn_resolution(cfg, len(specs) * len(tasks))
    with hm.evaluating(), torch.no_grad():
        replacement = None
        if strategy == "random":
            fresh = reinitialize(hm, seed).params(params)
            replacement = {p: w.to(hm.device) for p, w in fresh.items()}
        ev = Evaluator(hm, tasks, params, strategy, replacement=replacement, means=means,
                        batch_size=cfg.batch_size, vectorize=cfg.vectorize, chunk=cfg.mask_chunk,
                        reuse_prefix=cfg.reuse_prefix)
        if means is not None:
            ref = ([x for t in ev.tasks.values() for x, _ in t.batches] if reference is None
                   else [move_to(x, hm.device) for x, _ in as_subroutine(reference).batches()])
            means.fit(ref)
        rows, controls = _measure(ev, specs, cfg, progress, timings)
    _adjust(rows, cfg)
    chance = {name: sub.chance_level() for name, sub in tasks.items()}
    return AblationReport(rows=rows, isolation=_isolation(rows, specs, goals, chance, cfg),
                          overlap=mask_overlap(specs, label), controls=controls,
                          config={label: asdict(cfg)})


def _tasks(eval_data: Mapping[str, Any]) -> dict[str, Subroutine]:
    if not isinstance(eval_data, Mapping) or not eval_data:
        raise ValueError("eval_data must be a non-empty dict {task name: Subroutine or "
                         "(inputs, targets)}")
    return {name: as_subroutine(data) for name, data in eval_data.items()}


def _targets(specs: Mapping[str, MaskSpec], tasks: Mapping[str, Subroutine],
             targets: Mapping[str, str] | None) -> dict[str, str | None]:
    targets = dict(targets or {})
    for name, task in targets.items():
        if name not in specs or task not in tasks:
            raise ValueError(f"targets maps {name!r} -> {task!r}, but the subnetworks are "
                             f"{list(specs)} and the eval tasks {list(tasks)}")
    return {name: targets.get(name, name if name in tasks else None) for name in specs}


def _warn_resolution(cfg: AblationConfig, m: int) -> None:
    """With n controls an empirical p-value is at least 1/(n+1); Holm multiplies it by m."""
    if m / (cfg.n_random + 1) >= cfg.alpha:
        need = math.floor(m / cfg.alpha)
        while m / (need + 1) >= cfg.alpha:
            need += 1
        warnings.warn(f"with n_random={cfg.n_random} and {m} subnetwork x task comparisons the "
                      f"smallest Holm-adjusted p-value is {m / (cfg.n_random + 1):.3f} >= "
                      f"alpha={cfg.alpha}, so no subnetwork can be called isolated; use "
                      f"n_random >= {need}", stacklevel=3)


def _measure(ev: Evaluator, specs: Mapping[str, MaskSpec], cfg: AblationConfig,
             progress: bool, timings: list[dict] | None = None
             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Evaluate every condition and turn the scores into rows (p-values not yet adjusted)."""
    rows, controls = [], []
    clock = (time.perf_counter(), time.process_time())

    def lap(step: str) -> None:
        nonlocal clock
        now = (time.perf_counter(), time.process_time())
        if timings is not None:
            timings.append({"step": step, "wall_s": now[0] - clock[0], "cpu_s": now[1] - clock[1]})
        clock = now

    for task in ev.tasks:
        rows.append(_scored_row(ev, cfg, None, task, "full", {}))
    total = len(specs) * cfg.n_random * len(cfg.kinds)
    bar = tqdm(total=total, desc="ablation controls", disable=not progress, leave=False)
    for name, spec in specs.items():
        targeted = {"ablate": spec.masks,
                    "keep_only": {p: ~m for p, m in spec.sufficient.items()}}
        if spec.keep is not None:
            targeted["ablate_sufficient"] = spec.keep
        scores = {cond: {} for cond in targeted}
        for cond, removed in targeted.items():
            for task in ev.tasks:
                row = _scored_row(ev, cfg, name, task, cond, removed)
                scores[cond][task] = row["value"]
                rows.append(row)
        lap(f"ablation {name} targeted conditions")
        for kind in cfg.kinds:
            crowded = no_complement(spec) if kind == "complement_sampled" else []
            if crowded:
                warnings.warn(f"subnetwork {name!r} keeps more than half of {crowded}, so no "
                              "complement of equal size exists; skipping its complement_sampled "
                              "controls", stacklevel=4)
                bar.update(cfg.n_random)
                continue
            values: dict[str, list[float]] = {task: [] for task in ev.tasks}
            masks = control_masks(spec, cfg.n_random, cfg.seed, kind)
            for chunk in _chunks(masks, cfg.mask_chunk):
                for task, got in ev.scores(chunk).items():
                    values[task] += got
                bar.update(len(chunk))
            for task, vals in values.items():
                rows.append(_control_row(ev, cfg, name, task, kind, vals, scores["ablate"][task]))
                controls.append(dict(model=cfg.label, subnetwork=name, eval_task=task,
                                     condition=kind, values=vals))
            lap(f"ablation {name} {kind} x{cfg.n_random}")
    bar.close()
    return rows, controls


def _chunks(items, size: int):
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _row(ev: Evaluator, cfg: AblationConfig, subnetwork: str | None, task: str, condition: str,
         **values: Any) -> dict[str, Any]:
    t = ev.tasks[task]
    row = dict(model=cfg.label, subnetwork=subnetwork, eval_task=task, condition=condition,
               metric=t.sub.metric_name, chance=t.sub.chance_level(), value=None, ci_low=None,
               ci_high=None, n_examples=len(t.targets), n_controls=None, p_value=None,
               p_adjusted=None, effect=None, effect_z=None)
    row.update(values)
    return row


def _scored_row(ev: Evaluator, cfg: AblationConfig, subnetwork: str | None, task: str,
                condition: str, removed: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The score of one condition with a bootstrap CI over examples (paired across conditions:
    every condition of a task resamples the same example indices)."""
    t = ev.tasks[task]
    readouts = ev.readouts(task, removed)
    low = high = None
    if cfg.n_bootstrap:
        gen = seeded_generator(cfg.seed, "bootstrap", task)
        low, high = bootstrap_ci(lambda idx: t.score(readouts, idx), len(t.targets),
                                  cfg.n_bootstrap, gen)
    return _row(ev, cfg, subnetwork, task, condition, value=t.score(readouts),
                ci_low=low, ci_high=high)


def _control_row(ev: Evaluator, cfg: AblationConfig, subnetwork: str, task: str, kind: str,
                 values: list[float], ablated: float) -> dict[str, Any]:
    low, high = percentile_interval(values)
    effect, effect_z = effect_size(ablated, values)
    return _row(ev, cfg, subnetwork, task, kind, value=sum(values) / len(values), ci_low=low,
                ci_high=high, n_controls=len(values), p_value=empirical_p(ablated, values),
                effect=effect, effect_z=effect_z)


def _adjust(rows: list[dict[str, Any]], cfg: AblationConfig) -> None:
    """Holm across subnetworks x tasks, separately for each kind of control."""
    for kind in cfg.kinds:
        family = [r for r in rows if r["condition"] == kind]
        for r, p in zip(family, adjust_pvalues([r["p_value"] for r in family], "holm")):
            r["p_adjusted"] = p


def _isolation(rows: list[dict[str, Any]], specs: Mapping[str, MaskSpec],
               goals: Mapping[str, str | None], chance: Mapping[str, float],
               cfg: AblationConfig) -> list[dict[str, Any]]:
    """Per subnetwork S of subroutine A: the verdict of :func:`._verdict.judge` with its evidence,
    and Break It Down's subnetwork and ablation scores against each other task."""
    get = {(r["subnetwork"], r["eval_task"], r["condition"]): r for r in rows}
    tasks = list(chance)
    out = []
    for name, spec in specs.items():
        target = goals[name]
        entry: dict[str, Any] = dict(model=cfg.label, subnetwork=name, target_task=target,
                                     chance_target=chance.get(target), verdict=None,
                                     isolated=None, reason="", p_target=None,
                                     p_target_adjusted=None, effect_target=None,
                                     effect_z_target=None, others=[],
                                     necessity=_necessity_summary(spec))
        if target is None:
            entry["reason"] = (f"no eval task is named {name!r}; pass targets={{{name!r}: "
                               "<task>}} to say which subroutine it computes")
            out.append(entry)
            continue
        tr = get[(name, target, "random_ablate")]
        entry.update(p_target=tr["p_value"], p_target_adjusted=tr["p_adjusted"], effect_target=tr["effect"],
                     effect_z_target=tr["effect_z"])

        def value(cond: str, task: str) -> float:
            return get[(None if cond == "full" else name, task, cond)]["value"]

        def score(cond: str, task: str) -> float:
            return max(value(cond, task), chance[task])

        for other in (t for t in tasks if t != target):
            r = get[(name, other, "random_ablate")]
            rival = next((n for n, g in goals.items() if g == other), None)
            entry["others"].append(dict(
                task=other, p_value=r["p_value"], p_adjusted=r["p_adjusted"], effect=r["effect"],
                hurt=r["p_value"] < cfg.alpha,
                subnetwork_score=score("keep_only", target) - score("keep_only", other),
                ablation_score=score("ablate", target) - score("ablate", other),
                subnetwork=rival,
                **((separation(spec, specs[rival], max(cfg.n_random, 999), cfg.seed) or {})
                   if rival is not None else {})))
        if not entry["others"]:
            entry["reason"] = "needs a second eval task to check that other subroutines survive"
        else:
            entry["verdict"], entry["reason"] = judge(
                name, target, value, dict(chance), tr, entry["others"], spec.necessity or {},
                cfg.rules, cfg.alpha)
            entry["isolated"] = entry["verdict"] == "isolated"
        out.append(entry)
    return out


def _necessity_summary(spec: MaskSpec) -> dict[str, Any] | None:
    """How the ablated set was found: rounds peeled, whether the subroutine broke, sizes."""
    if spec.keep is None:
        return None
    rounds = (spec.necessity or {}).get("rounds") or []
    return {"rounds": len(rounds), "broken": bool((spec.necessity or {}).get("broken")),
            "union_density": rounds[-1]["union_density"] if rounds else None,
            "first_density": rounds[0]["density"] if rounds else None}
