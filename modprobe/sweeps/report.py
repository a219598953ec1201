"""The sweep's HTML report, drawn only from ``table.parquet``: plots across the grid.

Per metric (composite-task test score, held-out score, decodability, isolation, density):
the metric against model size (mean and sd over seeds, one line per combination of the other
settings that vary), against seed, and pretrained against random init (one point per pair of
cells that differ only in ``init``). Then the whole table and the study's cells.
"""
from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .._io import write_text
from ..report import COLORS, figure_html, html_table, page
from .table import read_table

METRICS = ("fit.test", "fit.heldout", "decodability", "isolation", "density")
_SETTINGS = ("model.", "task.", "config.", "init", "seed")


def write_sweep_report(root: str | os.PathLike) -> Path:
    """Render ``<root>/report.html`` from ``<root>/table.parquet`` (atomically)."""
    root = Path(root)
    if not (root / "table.parquet").exists():
        raise FileNotFoundError(f"{root / 'table.parquet'} does not exist: run "
                                "`modprobe sweep STUDY.toml --out DIR` first")
    return write_text(root / "report.html", render_sweep_html(read_table(root), root.name))


def render_sweep_html(table: Any, name: str = "sweep") -> str:
    """The report of one sweep table (a pandas DataFrame, one row per cell) as HTML."""
    metrics = [m for m in METRICS if m in table and table[m].notna().any()]
    varying = varying_settings(table)
    size = size_column(table, varying)
    groups = [c for c in varying if c not in (size, "seed")]
    sections = [("Sweep", _overview(table, varying, size))]
    figures = [
        ("Metric versus model size", _versus_size(table, metrics, size, groups),
         f"Mean over seeds (bars: sd) against {size}; one line per setting of "
         f"{', '.join(groups) or 'the study'}."),
        ("Metric versus seed", _versus_seed(table, metrics, groups),
         "Every cell; the spread across seeds is the run-to-run variation."),
        ("Pretrained versus random init", _versus_init(table, metrics),
         "One point per pair of cells that differ only in init; above the diagonal: the "
         "random-init twin scores higher."),
    ]
    for heading, fig, note in figures:
        if fig is not None:
            sections.append((heading,
                             f'<p class="note">{html.escape(note)}</p>' + figure_html(fig)))
    sections.append(("Table", html_table(_plain_rows(table), max_rows=2000)))
    return page(f"modprobe sweep: {name}", sections)


def varying_settings(table: Any) -> list[str]:
    """Setting columns (``model.*``, ``task.*``, ``config.*``, ``init``, ``seed``) that vary."""
    return [c for c in table.columns if c.startswith(_SETTINGS)
            and table[c].astype(str).nunique() > 1]


def size_column(table: Any, varying: list[str]) -> str | None:
    """The numeric model setting that varies (e.g. ``model.width``), else ``n_params``."""
    for column in varying:
        if column.startswith("model.") and _numeric(table[column]):
            return column
    if "n_params" in table and table["n_params"].nunique() > 1:
        return "n_params"
    return None


# ----------------------------------------------------------------------------- figures
def _grid(metrics: list[str]) -> go.Figure:
    return make_subplots(rows=1, cols=len(metrics), subplot_titles=metrics,
                         horizontal_spacing=0.06)


def _labels(table: Any, groups: list[str]) -> Any:
    if not groups:
        return table.assign(_group="all")
    text = table[groups].astype(str).apply(
        lambda row: ", ".join(f"{c.split('.')[-1]}={v}" for c, v in row.items()), axis=1)
    return table.assign(_group=text)


def _versus_size(table: Any, metrics: list[str], size: str | None,
                 groups: list[str]) -> go.Figure | None:
    if size is None or not metrics:
        return None
    data = _labels(table, groups)
    fig = _grid(metrics)
    for g, (label, part) in enumerate(data.groupby("_group", sort=True)):
        color = COLORS[g % len(COLORS)]
        for i, metric in enumerate(metrics, start=1):
            stats = part.groupby(size)[metric].agg(["mean", "std"]).reset_index()
            fig.add_scatter(x=stats[size], y=stats["mean"], mode="lines+markers", name=label,
                            legendgroup=label, showlegend=i == 1, line=dict(color=color),
                            error_y=dict(type="data", array=stats["std"].fillna(0)),
                            row=1, col=i)
    values = table[size].astype(float)
    if values.min() > 0 and values.max() / values.min() >= 8:
        fig.update_xaxes(type="log")
    fig.update_xaxes(title_text=size)
    fig.update_layout(height=420, width=max(600, 330 * len(metrics)))
    return fig


def _versus_seed(table: Any, metrics: list[str], groups: list[str]) -> go.Figure | None:
    if "seed" not in table or not metrics:
        return None
    size_groups = [c for c in varying_settings(table) if c != "seed"]
    data = _labels(table, size_groups)
    fig = _grid(metrics)
    for g, (label, part) in enumerate(data.groupby("_group", sort=True)):
        for i, metric in enumerate(metrics, start=1):
            fig.add_scatter(x=part["seed"], y=part[metric], mode="markers", name=label,
                            legendgroup=label, showlegend=i == 1,
                            marker=dict(color=COLORS[g % len(COLORS)], size=9), row=1, col=i)
    fig.update_xaxes(title_text="seed", dtick=1)
    fig.update_layout(height=420, width=max(600, 330 * len(metrics)))
    return fig


def _versus_init(table: Any, metrics: list[str]) -> go.Figure | None:
    if "init" not in table or set(table["init"]) != {"pretrained", "random_init"} or not metrics:
        return None
    keys = [c for c in table.columns if c.startswith(_SETTINGS) and c != "init"]
    text = table[keys].astype(str).agg("|".join, axis=1)
    pretrained = table[table["init"] == "pretrained"].assign(_key=text)
    random = table[table["init"] == "random_init"].assign(_key=text)
    pairs = pretrained.merge(random, on="_key", suffixes=("", "_random"))
    if pairs.empty:
        return None
    fig = _grid(metrics)
    for i, metric in enumerate(metrics, start=1):
        x, y = pairs[metric].astype(float), pairs[f"{metric}_random"].astype(float)
        fig.add_scatter(x=x, y=y, mode="markers", name=metric, showlegend=False,
                        marker=dict(color=COLORS[0], size=9),
                        text=[f"cell {c}" for c in pairs["cell"]], row=1, col=i)
        both = [v for v in list(x) + list(y) if not math.isnan(v)]
        if both:
            lo, hi = min(both), max(both)
            fig.add_scatter(x=[lo, hi], y=[lo, hi], mode="lines", showlegend=False,
                            line=dict(color="#999", dash="dot"), row=1, col=i)
    fig.update_xaxes(title_text="pretrained")
    fig.update_yaxes(title_text="random init", col=1)
    fig.update_layout(height=420, width=max(600, 330 * len(metrics)))
    return fig


# ----------------------------------------------------------------------------- helpers
def _overview(table: Any, varying: list[str], size: str | None) -> str:
    facts = [f"{len(table)} finished cells",
             f"varying: {', '.join(varying) if varying else 'nothing'}",
             f"size axis: {size or 'none'}"]
    return "<ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in facts) + "</ul>"


def _numeric(series: Any) -> bool:
    import pandas as pd

    return bool(pd.api.types.is_numeric_dtype(series)) and not pd.api.types.is_bool_dtype(series)


def _plain_rows(table: Any) -> list[dict[str, Any]]:
    """Rows with NaN shown as empty cells."""
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            for row in table.to_dict("records")]
