"""Pretrained versus random init: the same analysis on both, paired by seed, at matched competence.

For each seed s the pretrained model and its random-init twin ``reinitialize(model, s)`` are each
trained to solve the composite task (the pretrained model with ``config.fit``, the twin from
scratch with ``config.scratch_fit``, since a fine-tuning recipe does not train a random network)
and analysed the same way with seed s. An arm that does not reach the task's competence threshold
"did not learn the task": its modularity numbers say nothing about how a working solution is
organised, so a seed enters the comparison only when both of its arms learned the task. Per
metric the report gives each arm's mean with a t-interval across the compared seeds, both arms'
task metric beside it, and the paired difference with its t-interval; the verdict sentence reads
the isolation metric's interval and says how many seeds of each arm were compared.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from . import _io, ablation, tasks
from ._results import Report, format_table
from .analysis import SCHEMA_VERSION, AnalysisConfig, analyze, package_versions
from .models import load_model, reinitialize
from .report import write_report

# metric -> (sentence subject, comparative when higher, comparative when lower)
_SENTENCES = {
    "isolation": ("subnetworks are", "more isolated", "less isolated"),
    "decodability": ("constituents are", "more decodable", "less decodable"),
    "task_metric": ("models", "solve the task better", "solve the task worse"),
    "density": ("subnetworks are", "denser", "sparser"),
    "subnetwork_score": ("subnetworks have", "higher subnetwork scores",
                         "lower subnetwork scores"),
    "ablation_score": ("subnetworks have", "higher (less selective) ablation scores",
                       "lower (more selective) ablation scores"),
}
ARMS = ("pretrained", "random")


@dataclass
class ComparisonReport(Report):
    """Per metric: each arm's mean, sd and 95% t-interval over the compared seeds, both arms' task
    metric, and the paired difference with its 95% CI; ``arms``: every (arm, seed) run with its
    task metric and whether it learned the task; ``seeds``: the seeds compared; ``verdict``: the
    verdict sentence (the isolation metric's, with the seeds compared); ``sentences``: one
    sentence per metric."""

    rows: list[dict[str, Any]]
    seeds: list[int]
    verdict: str
    sentences: dict[str, str] = field(default_factory=dict)
    arms: list[dict[str, Any]] = field(default_factory=list)
    each_arm: list[dict[str, Any]] = field(default_factory=list)


def paired_difference(pretrained: Sequence[float], random: Sequence[float]) -> dict[str, Any]:
    """Each group's mean, sd and 95% t-interval and the mean paired difference (pretrained -
    random) with its two-sided 95% t-interval.

    With one seed the intervals are undefined (``None``): one run cannot show a difference.
    """
    if len(pretrained) != len(random) or not pretrained:
        raise ValueError(f"need one value per seed in both groups, got {len(pretrained)} and "
                         f"{len(random)}")
    diffs = [a - b for a, b in zip(pretrained, random)]
    row: dict[str, Any] = {}
    for name, values in (("pretrained", pretrained), ("random", random)):
        low, high = _interval(values)
        row.update({f"{name}_mean": _mean(values), f"{name}_sd": _sd(values),
                    f"{name}_ci_low": low, f"{name}_ci_high": high})
    low, high = _interval(diffs)
    row.update({"difference": _mean(diffs), "ci_low": low, "ci_high": high, "n_seeds": len(diffs)})
    return row


def compare_scalars(pretrained: Sequence[dict[str, float]], random: Sequence[dict[str, float]],
                    seeds: Sequence[int], learned: Sequence[tuple[bool, bool]] | None = None
                    ) -> ComparisonReport:
    """Build the report from per-seed scalar metrics of each arm (same keys, same seed order).

    ``learned``: per seed, whether (pretrained, random) learned the task (default: both did);
    only seeds where both did are compared.
    """
    if not (len(pretrained) == len(random) == len(seeds)):
        raise ValueError(f"need one value per seed in both groups, got {len(pretrained)} and "
                         f"{len(random)} for {len(seeds)} seeds")
    learned = list(learned) if learned is not None else [(True, True)] * len(seeds)
    if len(learned) != len(seeds):
        raise ValueError(f"learned needs one (pretrained, random) pair per seed, got "
                         f"{len(learned)} for {len(seeds)} seeds")
    arms = [{"arm": arm, "seed": seed, "task_metric": values.get("task_metric"),
             "learned": ok[i],
             "status": "learned the task" if ok[i] else "did not learn the task"}
            for seed, p, r, ok in zip(seeds, pretrained, random, learned)
            for i, (arm, values) in enumerate(zip(ARMS, (p, r)))]
    keep = [i for i, ok in enumerate(learned) if all(ok)]
    compared = [seeds[i] for i in keep]
    rows, sentences = [], {}
    for metric in (pretrained[0] if pretrained else {}):
        a = [pretrained[i][metric] for i in keep]
        b = [random[i][metric] for i in keep]
        if not keep or any(v is None for v in a + b):
            continue
        row = {"metric": metric, **paired_difference(a, b),
               "pretrained_task_metric": _mean([pretrained[i]["task_metric"] for i in keep])
               if "task_metric" in pretrained[0] else None,
               "random_task_metric": _mean([random[i]["task_metric"] for i in keep])
               if "task_metric" in random[0] else None,
               "published": _published(metric)}
        rows.append(row)
        sentences[metric] = _sentence(metric, row)
    each_arm = _each_arm(pretrained, random, seeds, learned)
    counts = _counts(learned)
    if not keep:
        alone = [_alone_sentence(r) for r in each_arm if r["metric"] == "isolation"]
        verdict = (f"Nothing to compare: no seed has both arms solving the task ({counts}). An arm "
                   "that did not learn the task has no modular structure of a working solution "
                   "to measure." + "".join(f" {a}" for a in alone))
    else:
        verdict = sentences.get("isolation") or next(iter(sentences.values()),
                                                     "nothing to compare")
        verdict = f"{verdict} Compared: seeds {compared}, where both arms learned the task ({counts})."
    return ComparisonReport(rows=rows, seeds=compared, verdict=verdict, sentences=sentences,
                            arms=arms, each_arm=each_arm)


def _each_arm(pretrained: Sequence[dict[str, float]], random: Sequence[dict[str, float]],
              seeds: Sequence[int], learned: Sequence[tuple[bool, bool]]) -> list[dict[str, Any]]:
    """Per arm and metric: mean, sd and 95% t-interval over the seeds where that arm learned."""
    rows = []
    for i, (arm, runs) in enumerate(zip(ARMS, (pretrained, random))):
        kept = [j for j, ok in enumerate(learned) if ok[i]]
        for metric in (runs[0] if runs else {}):
            values = [runs[j][metric] for j in kept]
            if not values or any(v is None for v in values):
                continue
            low, high = _interval(values)
            rows.append({"arm": arm, "metric": metric, "seeds": [seeds[j] for j in kept],
                         "n_seeds": len(values), "mean": _mean(values), "sd": _sd(values),
                         "ci_low": low, "ci_high": high})
    return rows


def _alone_sentence(row: dict[str, Any]) -> str:
    """One arm's metric alone, e.g. 'The pretrained arm alone (seeds [0, 1]): isolation 0.61,
    95% CI [0.40, 0.82].'"""
    name = "pretrained" if row["arm"] == "pretrained" else "random-init"
    span = ("" if row["ci_low"] is None
            else f", 95% CI [{row['ci_low']:.3f}, {row['ci_high']:.3f}]")
    return (f"The {name} arm alone (seeds {row['seeds']}, where it learned the task): "
            f"{row['metric']} {row['mean']:.3f}{span}.")


def _counts(learned: Sequence[tuple[bool, bool]]) -> str:
    n = len(learned)
    return ", ".join(f"{name} learned it in {sum(ok[i] for ok in learned)} of {n} seeds"
                     for i, name in enumerate(("pretrained", "random-init")))


def _published(metric: str) -> str | None:
    span = ablation.PUBLISHED.get(metric)
    return None if span is None else f"{span[0]:+.2f} to {span[1]:+.2f}"


def _sentence(metric: str, row: dict[str, Any]) -> str:
    subject, higher, lower = _SENTENCES.get(metric, (f"{metric} values are", "higher", "lower"))
    n = row["n_seeds"]
    if row["ci_low"] is None:
        return (f"With {n} seed, pretrained and random-init {subject} not distinguishable "
                f"({metric}: {row['pretrained_mean']:.3f} vs {row['random_mean']:.3f}); "
                "run more seeds for an interval.")
    stats = (f"{metric} {row['pretrained_mean']:.3f} vs {row['random_mean']:.3f}, difference "
             f"{row['difference']:+.3f}, 95% CI [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}], "
             f"{n} seeds")
    if row["ci_low"] > 0:
        return f"Pretrained {subject} {higher} than random-init ones ({stats})."
    if row["ci_high"] < 0:
        return f"Pretrained {subject} {lower} than random-init ones ({stats})."
    return f"Pretrained {subject} not distinguishably different from random-init ones ({stats})."


def _interval(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Two-sided 95% t-interval of the mean (``None`` for fewer than two values)."""
    if len(values) < 2:
        return None, None
    from scipy.stats import t

    half = t.ppf(0.975, len(values) - 1) * _sd(values) / math.sqrt(len(values))
    return _mean(values) - half, _mean(values) + half


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _sd(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    m = _mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


@dataclass
class Comparison:
    """What :func:`compare` found: the report, every per-seed analysis, and results.json."""

    report: ComparisonReport
    pretrained: list[Any]
    random: list[Any]
    results: dict[str, Any]
    out: Path | None = None

    @property
    def verdict(self) -> str:
        """The verdict sentence (``report.verdict``), as :attr:`Analysis.verdict` is the
        analysis'."""
        return self.report.verdict

    def summary(self) -> str:
        """The verdict, every arm's task metric and own verdict, and the metrics table."""
        arms = format_table(self.report.arms, ["arm", "seed", "task_metric", "status"])
        verdicts = [f"{arm} seed {a.results['config']['seed']}: "
                    + a.results["verdict"].get("headline", a.verdict)
                    for arm, runs in zip(ARMS, (self.pretrained, self.random)) for a in runs]
        alone = ["", "each arm alone, over the seeds where it learned the task (not a comparison):",
                 format_table(self.report.each_arm,
                              ["arm", "metric", "n_seeds", "mean", "ci_low", "ci_high"])
                 ] if self.report.each_arm and not self.report.seeds else []
        lines = [self.verdict, "", arms, "", *verdicts, *alone, "", self.report.table(
            ["metric", "pretrained_mean", "pretrained_ci_low", "pretrained_ci_high",
             "random_mean", "random_ci_low", "random_ci_high", "difference", "ci_low", "ci_high",
             "pretrained_task_metric", "random_task_metric", "published"])]
        if self.out is not None:
            lines += ["", f"report: {self.out / 'report.html'}"]
        return "\n".join(lines)


def compare(model: Any, task: Any, seeds: Sequence[int] = (0, 1, 2),
            out: str | Path | None = None, config: Any = None) -> Comparison:
    """Analyse ``model`` and its random-init twins ``reinitialize(model, s)`` for each seed s.

    The pretrained model is fitted with ``config.fit``, the twin trained from scratch with
    ``config.scratch_fit`` (seeded with s); the rest of the analysis is the same for both with
    seed s. Seeds where either arm did not learn the task are reported and left out of the
    comparison; unless ``config.stop_unless_learned`` is False, such an arm's analysis stops after
    its fit. ``task``: a Task (used for every seed) or a family name (built per seed). Each
    run is saved under ``out/pretrained-seed{s}`` and ``out/random-seed{s}`` and resumes there;
    the comparison is written to ``out/results.json`` and ``out/report.html``.
    """
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__len__") or not seeds:
        raise ValueError(f"seeds must be a non-empty sequence of integers >= 0, e.g. (0, 1, 2); "
                         f"got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {list(seeds)} repeat a seed: each seed is one run")
    config = config or AnalysisConfig()
    if config.stop_unless_learned is None:  # an arm that did not learn is left out: skip its stages
        config = dataclasses.replace(config, stop_unless_learned=True)
    for seed in seeds:  # every per-seed configuration is checked before the first run
        dataclasses.replace(config, seed=seed)
    hm = load_model(model)
    root = Path(out) if out is not None else None
    pretrained, random = [], []
    for seed in seeds:
        cfg = dataclasses.replace(config, seed=seed)  # every stage's seed, the fits' included
        seed_task = tasks.load(task, seed=seed, model=hm) if isinstance(task, str) else task
        pretrained.append(analyze(hm, seed_task, root / f"pretrained-seed{seed}" if root else None,
                                  cfg, label="pretrained"))
        scratch = dataclasses.replace(cfg, fit=cfg.scratch_fit)
        random.append(analyze(reinitialize(hm, seed), seed_task,
                              root / f"random-seed{seed}" if root else None, scratch,
                              label="random_init"))
    learned = [(_learned(p), _learned(r)) for p, r in zip(pretrained, random)]
    report = compare_scalars([a.scalars for a in pretrained], [a.scalars for a in random], seeds,
                             learned)
    results = {"schema_version": SCHEMA_VERSION, "kind": "comparison", "versions": package_versions(),
               "config": config.to_dict(), "seeds": list(seeds), "compared_seeds": report.seeds,
               "arms": report.arms, "each_arm": report.each_arm, "metrics": report.rows,
               "verdict": report.verdict, "sentences": report.sentences,
               "pretrained": [a.results for a in pretrained],
               "random": [a.results for a in random]}
    if root is not None:
        _io.write_json(root / "results.json", results)
        write_report(results, root / "report.html")
    return Comparison(report, pretrained, random, results, root)


def _learned(analysis: Any) -> bool:
    """Whether the analysed model passed the task's competence gate (stage 1's fit)."""
    return bool(analysis.results["verdict"]["competence"]["competent"])
