"""Pretrained versus random init: the same analysis on both, paired by seed, with honest intervals.

For each seed s the pretrained model and ``reinitialize(model, s)`` are fitted and analysed the
same way with seed s. Per scalar metric the groups' means and the paired difference with a
t-interval across seeds are reported; the verdict sentence reads the isolation metric's interval.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from . import _io, tasks
from ._results import Report
from .analysis import SCHEMA_VERSION, AnalysisConfig, analyze, package_versions
from .models import load_model, reinitialize
from .report import write_report

# metric -> (sentence subject, comparative when higher, comparative when lower)
_SENTENCES = {
    "isolation": ("subnetworks are", "more isolated", "less isolated"),
    "decodability": ("constituents are", "more decodable", "less decodable"),
    "task_metric": ("models", "solve the task better", "solve the task worse"),
    "density": ("subnetworks are", "denser", "sparser"),
}


@dataclass
class ComparisonReport(Report):
    """Per metric: both groups' mean and sd over seeds, the paired difference and its 95% CI."""

    rows: list[dict[str, Any]]
    seeds: list[int]
    verdict: str
    sentences: dict[str, str] = field(default_factory=dict)


def paired_difference(pretrained: Sequence[float], random: Sequence[float]) -> dict[str, Any]:
    """Mean paired difference (pretrained - random) with a two-sided 95% t-interval.

    With one seed the interval is undefined (``None``): one run cannot show a difference.
    """
    if len(pretrained) != len(random) or not pretrained:
        raise ValueError(f"need one value per seed in both groups, got {len(pretrained)} and "
                         f"{len(random)}")
    diffs = [a - b for a, b in zip(pretrained, random)]
    n = len(diffs)
    mean = sum(diffs) / n
    row: dict[str, Any] = {"pretrained_mean": _mean(pretrained), "pretrained_sd": _sd(pretrained),
                           "random_mean": _mean(random), "random_sd": _sd(random),
                           "difference": mean, "ci_low": None, "ci_high": None, "n_seeds": n}
    if n > 1:
        from scipy.stats import t

        half = t.ppf(0.975, n - 1) * _sd(diffs) / math.sqrt(n)
        row["ci_low"], row["ci_high"] = mean - half, mean + half
    return row


def compare_scalars(pretrained: Sequence[dict[str, float]], random: Sequence[dict[str, float]],
                    seeds: Sequence[int]) -> ComparisonReport:
    """Build the report from per-seed scalar metrics of each group (same keys, same seed order)."""
    rows, sentences = [], {}
    for metric in pretrained[0]:
        a = [p[metric] for p in pretrained]
        b = [r[metric] for r in random]
        if any(v is None for v in a + b):
            continue
        row = {"metric": metric, **paired_difference(a, b)}
        rows.append(row)
        sentences[metric] = _sentence(metric, row)
    verdict = sentences.get("isolation") or next(iter(sentences.values()), "nothing to compare")
    return ComparisonReport(rows=rows, seeds=list(seeds), verdict=verdict, sentences=sentences)


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
        return self.report.verdict

    def summary(self) -> str:
        lines = [self.verdict, "", self.report.table(
            ["metric", "pretrained_mean", "random_mean", "difference", "ci_low", "ci_high"])]
        if self.out is not None:
            lines += ["", f"report: {self.out / 'report.html'}"]
        return "\n".join(lines)


def compare(model: Any, task: Any, seeds: Sequence[int] = (0, 1, 2),
            out: str | Path | None = None, config: Any = None) -> Comparison:
    """Analyse ``model`` and its random-init twins ``reinitialize(model, s)`` for each seed s.

    Both are fitted and analysed the same way with seed s (so pairs differ only in the weights
    the analysis starts from). ``task``: a Task (used for every seed) or a family name (built
    per seed). Each run is saved under ``out/pretrained-seed{s}`` and ``out/random-seed{s}``
    and resumes there; the comparison is written to ``out/results.json`` and ``out/report.html``.
    """
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__len__") or not seeds:
        raise ValueError(f"seeds must be a non-empty sequence of integers >= 0, e.g. (0, 1, 2); "
                         f"got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {list(seeds)} repeat a seed: each seed is one run")
    config = config or AnalysisConfig()
    for seed in seeds:  # every per-seed configuration is checked before the first run
        dataclasses.replace(config, seed=seed)
    hm = load_model(model)
    root = Path(out) if out is not None else None
    pretrained, random = [], []
    for seed in seeds:
        cfg = dataclasses.replace(config, seed=seed)
        seed_task = tasks.load(task, seed=seed, model=hm) if isinstance(task, str) else task
        pretrained.append(analyze(hm, seed_task, root / f"pretrained-seed{seed}" if root else None,
                                  cfg, label="pretrained"))
        random.append(analyze(reinitialize(hm, seed), seed_task,
                              root / f"random-seed{seed}" if root else None, cfg,
                              label="random_init"))
    report = compare_scalars([a.scalars for a in pretrained], [a.scalars for a in random], seeds)
    results = {"schema_version": SCHEMA_VERSION, "kind": "comparison", "versions": package_versions(),
               "config": config.to_dict(), "seeds": list(seeds), "metrics": report.rows,
               "verdict": report.verdict, "sentences": report.sentences,
               "pretrained": [a.results for a in pretrained],
               "random": [a.results for a in random]}
    if root is not None:
        _io.write_json(root / "results.json", results)
        write_report(results, root / "report.html")
    return Comparison(report, pretrained, random, results, root)
