"""The self-contained HTML report, drawn only from the results JSON (re-render without re-running).

One file that opens offline: plotly's JavaScript is embedded once, every figure is a div. The
verdict comes first, in words, then the evidence: mask densities per layer, overlap between
subnetworks and the subnetwork graph, ablation effects against random controls, probe heatmaps,
pretrained-versus-random panels when comparing, and the configuration and versions used.
"""
from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any, Callable

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from ._io import write_text
from .graph import subnetwork_graph

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2"]
_OWNER_GREY = {"shared": "#7f7f7f", "none": "#dddddd"}


def write_report(results: dict[str, Any], path: str | os.PathLike) -> Path:
    """Render ``results`` (an analysis or comparison results dict) to ``path`` atomically."""
    return write_text(path, render_html(results))


def render_html(results: dict[str, Any]) -> str:
    """The whole report as one HTML string."""
    if results.get("kind") == "comparison":
        title = f"modprobe comparison: {results['pretrained'][0]['task']['name']}"
        sections = [("What was analysed", _about(results["pretrained"][0]))]
        sections += _comparison_sections(results)
    else:
        title = f"modprobe analysis: {results['task']['name']}"
        sections = [("What was analysed", _about(results))]
        sections += _analysis_sections(results, prefix="")
    sections.append(("Configuration and versions", _timings_html(results) + _pre(json.dumps(
        {k: results.get(k) for k in ("config", "mask_targets", "versions", "schema_version",
                                     "created")}, indent=2, default=str))))
    return page(title, sections)


def _timings_html(results: dict[str, Any]) -> str:
    """Wall and CPU seconds of every stage and of its sub-steps (each mask, each λ, each
    necessity round, each set of ablation controls), when the run recorded them."""
    rows = []
    for stage, t in (results.get("timings") or {}).items():
        rows.append({"stage": stage, "step": "(whole stage)" + (" resumed" if t.get("resumed")
                                                                  else ""),
                     "wall_s": round(t["wall_s"], 2), "cpu_s": round(t["cpu_s"], 2),
                     "epochs": None})
        rows += [{"stage": stage, "step": s["step"], "wall_s": round(s["wall_s"], 2),
                  "cpu_s": round(s["cpu_s"], 2), "epochs": s.get("epochs")}
                 for s in t.get("steps", [])]
    if not rows:
        return ""
    return ('<p class="note">Time per stage and sub-step (wall and CPU seconds of this process; '
            'a mask\'s own steps and checks, not the passes it shared).</p>'
            + html_table(rows, 500))


def page(title: str, sections: list[tuple[str, str]]) -> str:
    """One self-contained HTML page: a heading and ``(heading, html)`` sections."""
    body = "\n".join(f"<section><h2>{html.escape(h)}</h2>\n{content}</section>"
                     for h, content in sections)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
section {{ margin-bottom: 2.5em; }} .verdict {{ font-size: 1.2em; padding: 1em; background: #f3f6fa;
border-left: 5px solid #1f77b4; }} table {{ border-collapse: collapse; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }} th {{ background: #eee; }}
pre {{ background: #f6f6f6; padding: 1em; overflow: auto; font-size: 0.8em; }}
.note {{ color: #555; font-size: 0.9em; }} .empty {{ font-style: italic; color: #444; }}
.table-wrap {{ max-width: 100%; overflow-x: auto; }} td {{ max-width: 28em; overflow: hidden;
text-overflow: ellipsis; white-space: nowrap; }} .about td, .about th {{ text-align: left;
white-space: normal; }}
</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head><body><h1>{html.escape(title)}</h1>
{body}
</body></html>
"""


# ----------------------------------------------------------------------------- sections
def _analysis_sections(res: dict[str, Any], prefix: str) -> list[tuple[str, str]]:
    sections = [(f"{prefix}Verdict", _verdict_html(res))]
    fit = res.get("fit")
    if fit:
        shown = {k: v for k, v in fit.items() if k != "history"}
        sections.append((f"{prefix}Model on the task", html_table([shown])))
    builders: list[tuple[str, Callable[[dict], Any], str]] = [
        ("Mask density per layer", _density_figure,
         "Fraction of each masked tensor that a subroutine's subnetwork keeps."),
        ("Overlap between subnetworks", _overlap_figure,
         "Jaccard index of kept weights (1 = the same weights, 0 = disjoint)."),
        ("Subnetwork graph", _graph_figure,
         "Masked tensors in forward order, labelled with their name and the fraction each "
         "subnetwork keeps, coloured by the subnetwork that keeps clearly the most of them "
         "(grey: shared, light: unused)."),
        ("Ablation effects", _ablation_figure,
         "Metric on each subroutine's test data after removing (ablate) or keeping only (keep_only) "
         "a subnetwork, against size-matched random ablations (95% CIs)."),
        ("Random-control distribution", _random_distribution_figure,
         "Each point is one random mask with the same number of weights per tensor; the diamond is "
         "the targeted ablation."),
        ("Probe selectivity", _probe_figure,
         "Linear decodability of each constituent at each hook point: the probe's score "
         "(accuracy, or R² for continuous constituents) minus the control task's; in brackets: "
         "the score."),
        ("Probe compression (MDL)", _mdl_figure,
         "Online-code compression of each constituent's labels at each hook point: uniform "
         "codelength / online codelength (1 = no better than the uniform code; in brackets: "
         "the control task's)."),
        ("Erasure effects", _erasure_figure,
         "Metric drop of each subroutine when a constituent is erased (LEACE) at a hook point, "
         "beyond erasing as many random directions (95% CIs; filled: significant after Holm)."),
    ]
    empty = _empty_masks(res)
    for heading, build, note in builders:
        if empty and heading in _MASK_FIGURES:
            sections.append((prefix + heading, f'<p class="empty">{html.escape(empty)}</p>'))
            continue
        fig = build(res)
        if fig is not None:
            sections.append((prefix + heading,
                             f'<p class="note">{html.escape(note)}</p>' + figure_html(fig)))
    ablation_rows = (res.get("ablation") or {}).get("rows")
    if ablation_rows:
        shown = [{k: r.get(k) for k in _ABLATION_COLUMNS if k in r} for r in ablation_rows]
        sections.append((prefix + "Ablation table", '<p class="note">The main columns; '
                         "results.json holds every column.</p>" + html_table(shown)))
    return sections


_MASK_FIGURES = ("Mask density per layer", "Overlap between subnetworks", "Subnetwork graph")
_ABLATION_COLUMNS = ("subnetwork", "eval_task", "condition", "metric", "chance", "value", "ci_low",
                     "ci_high", "n_controls", "p_value", "p_adjusted", "effect")


def _empty_masks(res: dict[str, Any]) -> str:
    """A sentence when every subnetwork kept nothing (then the mask figures would be blank)."""
    subs = res.get("subnetworks") or {}
    if subs and all(not s.get("density") for s in subs.values()):
        return (f"Every subnetwork's mask is empty ({', '.join(subs)}: 0 weights kept): no "
                "subset of the masked weights performs its subroutine better than removing "
                "them all, so there is no density, overlap or graph to draw.")
    return ""


def _about(res: dict[str, Any]) -> str:
    """Model, task and how the model was fitted: the first thing a reader needs."""
    model, task, fit = res.get("model") or {}, res.get("task") or {}, res.get("fit") or {}
    reading = fit.get("reading") or {}
    read = ""
    if reading.get("output") or reading.get("pool"):
        read = (f"{reading.get('output') or 'the output'}"
                + (f", pooled '{reading['pool']}'" if reading.get("pool") else "")
                + (f" ({reading['reason']})" if reading.get("reason") else ""))
    elif reading:
        read = "the model's own output"
    trained = ("nothing trained" if not fit.get("head") and not fit.get("finetuned") else
               ", ".join(w for w, on in (("readout head", fit.get("head")),
                                         ("fine-tuned copy of the backbone", fit.get("finetuned")))
                         if on))
    score = ""
    if fit.get("test") is not None:
        chance = fit.get("chance")
        score = (f"{fit.get('metric', 'metric')} {fit['test']:.3f} on the composite test data"
                 + (f" (chance {chance:.3f})" if chance is not None else ""))
    rows = [("model", f"{res.get('label', '')}: {model.get('description', '')}"),
            ("task", task.get("description", task.get("name", ""))),
            ("fit", f"mode {fit.get('mode', 'finetune')}: {trained}" if fit else ""),
            ("read at", read), ("fitted score", score)]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in rows if v)
    return f'<div class="table-wrap about"><table>{body}</table></div>'



def _comparison_sections(res: dict[str, Any]) -> list[tuple[str, str]]:
    others = [text for metric, text in (res.get("sentences") or {}).items()
              if text != res["verdict"]]
    listing = "".join(f"<li>{html.escape(t)}</li>" for t in others)
    sections = [("Verdict", f'<div class="verdict">{html.escape(res["verdict"])}</div>'
                 + (f"<ul>{listing}</ul>" if listing else "") + html_table(res["metrics"]))]
    if res.get("arms"):
        sections.append(("Every arm and seed", html_table(res["arms"])))
    if res.get("each_arm") and not res.get("compared_seeds"):
        sections.append(("Each arm alone (not a comparison)",
                         "<p>Mean and 95% t-interval over the seeds where that arm learned the "
                         "task; the seeds may differ between arms.</p>"
                         + html_table([{k: v for k, v in r.items() if k != "seeds"}
                                   for r in res["each_arm"]])))
    fig = _comparison_figure(res)
    if fig is not None:
        sections.append(("Pretrained versus random init", figure_html(fig)))
    sections += _analysis_sections(res["pretrained"][0], prefix="Pretrained (seed "
                                   f"{res['pretrained'][0]['config'].get('seed')}): ")
    sections += _analysis_sections(res["random"][0], prefix="Random init (seed "
                                   f"{res['random'][0]['config'].get('seed')}): ")
    return sections


def _verdict_html(res: dict[str, Any]) -> str:
    verdict = res.get("verdict") or {}
    text = verdict.get("text", "no verdict recorded")
    evidence = verdict.get("evidence") or []
    return (f'<div class="verdict">{html.escape(text)}</div>'
            + (html_table(evidence) if evidence else ""))


# ----------------------------------------------------------------------------- figures
def _density_figure(res: dict[str, Any]) -> go.Figure | None:
    subs = res.get("subnetworks") or {}
    if not subs:
        return None
    fig = go.Figure()
    for i, (name, sub) in enumerate(subs.items()):
        dens = sub["densities"]
        fig.add_bar(x=list(dens), y=list(dens.values()), name=f"{name} ({sub['density']:.1%} kept)",
                    marker_color=COLORS[i % len(COLORS)])
    fig.update_layout(barmode="group", yaxis_title="fraction kept", xaxis_tickangle=-45,
                      height=450, margin=dict(b=160))
    return fig


def _overlap_figure(res: dict[str, Any]) -> go.Figure | None:
    pairs = [r for r in (res.get("ablation") or {}).get("overlap") or [] if r["tensor"] == "*"]
    if not pairs:
        return None
    names = list(dict.fromkeys([p["a"] for p in pairs] + [p["b"] for p in pairs]))
    matrix: list[list[float | None]] = [[1.0 if a == b else None for b in names] for a in names]
    chance = [[None for _ in names] for _ in names]
    for p in pairs:
        i, j = names.index(p["a"]), names.index(p["b"])
        matrix[i][j] = matrix[j][i] = p["jaccard"]
        chance[i][j] = chance[j][i] = p.get("jaccard_chance")
    text = [[("" if v is None else f"{v:.2f}") + ("" if c is None else f"<br>(chance {c:.2f})")
             for v, c in zip(row, crow)] for row, crow in zip(matrix, chance)]
    fig = go.Figure(go.Heatmap(z=matrix, x=names, y=names, zmin=0, zmax=1, colorscale="Blues",
                               text=text, texttemplate="%{text}"))
    fig.update_layout(height=350, width=500)
    return fig


def _graph_figure(res: dict[str, Any]) -> go.Figure | None:
    subs = res.get("subnetworks") or {}
    if not subs:
        return None
    graph = subnetwork_graph({n: s["densities"] for n, s in subs.items()})
    colors = {n: COLORS[i % len(COLORS)] for i, n in enumerate(subs)} | _OWNER_GREY
    rows: dict[int, int] = {}
    pos = {}
    for node, data in graph.nodes(data=True):
        layer = data["layer"]
        pos[node] = (layer, rows.get(layer, 0))
        rows[layer] = rows.get(layer, 0) + 1
    edge_x, edge_y = [], []
    for a, b in graph.edges():
        edge_x += [pos[a][0], pos[b][0], None]
        edge_y += [-pos[a][1], -pos[b][1], None]
    fig = go.Figure(go.Scatter(x=edge_x, y=edge_y, mode="lines", line=dict(color="#bbb", width=1),
                               hoverinfo="skip", showlegend=False))
    for owner in dict.fromkeys(d["owner"] for _, d in graph.nodes(data=True)):
        nodes = [(n, d) for n, d in graph.nodes(data=True) if d["owner"] == owner]
        kept = [" / ".join(f"{v:.0%}" if v >= 0.01 or not v else f"{v:.1%}"
                           for k, v in d.items() if k.startswith("density:")) for _, d in nodes]
        fig.add_scatter(
            x=[pos[n][0] for n, _ in nodes], y=[-pos[n][1] for n, _ in nodes],
            mode="markers+text", textposition="middle right", textfont=dict(size=10),
            text=[f"{_short(n)} ({k})" for n, k in zip([n for n, _ in nodes], kept)],
            name=owner, marker=dict(size=14, color=colors.get(owner, "#000")),
            hovertext=[n + "<br>" + "<br>".join(f"{k[8:]}: {v:.1%}" for k, v in d.items()
                                                if k.startswith("density:")) for n, d in nodes],
            hoverinfo="text")
    order = " / ".join(subs)
    n_rows = max(rows.values()) if rows else 1
    fig.update_layout(height=max(320, 70 * n_rows + 120), xaxis_title="layer",
                      yaxis_visible=False, margin=dict(r=160),
                      title=dict(text=f"kept fraction per tensor: {order}", font=dict(size=12)))
    return fig


def _short(name: str) -> str:
    """A tensor name short enough to label a node (``blocks.3.mlp.in.weight`` -> ``3.mlp.in``)."""
    name = name.removesuffix(".weight")
    return name.removeprefix("blocks.")


def _ablation_figure(res: dict[str, Any]) -> go.Figure | None:
    rows = [r for r in (res.get("ablation") or {}).get("rows", [])
            if r.get("condition") in ("full", "ablate", "keep_only", "random_ablate",
                                      "complement_sampled")]
    if not rows:
        return None
    fig = go.Figure()
    conditions = list(dict.fromkeys(r["condition"] for r in rows))
    for i, cond in enumerate(conditions):
        sel = [r for r in rows if r["condition"] == cond]
        fig.add_bar(
            name=cond, marker_color=COLORS[i % len(COLORS)],
            x=[[r.get("subnetwork") or "-" for r in sel], [r["eval_task"] for r in sel]],
            y=[r["value"] for r in sel],
            error_y=dict(type="data", symmetric=False,
                         array=[_nz(r.get("ci_high"), r["value"]) - r["value"] for r in sel],
                         arrayminus=[r["value"] - _nz(r.get("ci_low"), r["value"]) for r in sel]))
    fig.update_layout(barmode="group", yaxis_title=rows[0].get("metric", "metric"), height=450,
                      xaxis_title="subnetwork / evaluated subroutine")
    _chance_line(fig, rows)
    return fig


def _chance_line(fig: go.Figure, rows: list[dict[str, Any]]) -> None:
    """A dotted line at the chance level, when the rows agree on one."""
    chances = {r.get("chance") for r in rows if r.get("chance") is not None}
    if len(chances) == 1:
        fig.add_hline(y=chances.pop(), line_dash="dot", line_color="#555",
                      annotation_text="chance", annotation_position="top left")


def _random_distribution_figure(res: dict[str, Any]) -> go.Figure | None:
    abl = res.get("ablation") or {}
    controls = [c for c in abl.get("controls") or [] if c.get("values")]
    if not controls:
        return None
    targeted = {(r["subnetwork"], r["eval_task"]): r["value"] for r in abl.get("rows", [])
                if r.get("condition") == "ablate"}
    fig = go.Figure()
    for i, c in enumerate(controls):
        label = f"{c['subnetwork']} on {c['eval_task']}<br>{c['condition']}"
        fig.add_box(y=c["values"], name=label, boxpoints="all", jitter=0.4, pointpos=0,
                    marker_color=COLORS[i % len(COLORS)], showlegend=False)
        value = targeted.get((c["subnetwork"], c["eval_task"]))
        if value is not None:
            fig.add_scatter(x=[label], y=[value], mode="markers", name="targeted ablation",
                            marker=dict(symbol="diamond", size=14, color="black"),
                            showlegend=i == 0)
    fig.update_layout(height=450, yaxis_title="metric after ablation")
    _chance_line(fig, abl.get("rows", []))
    return fig


def _probe_figure(res: dict[str, Any]) -> go.Figure | None:
    return _probe_heatmap(res, "selectivity", "score")


def _mdl_figure(res: dict[str, Any]) -> go.Figure | None:
    return _probe_heatmap(res, "compression", "control_compression")


def _probe_heatmap(res: dict[str, Any], column: str, bracketed: str) -> go.Figure | None:
    """Hook x constituent heatmap of probe row ``column``, each cell also showing ``bracketed``."""
    rows = (res.get("probes") or {}).get("rows") or []
    rows = [r for r in rows if r.get(column) is not None]
    if not rows:
        return None
    hooks = list(dict.fromkeys(r["hook"] for r in rows))
    consts = list(dict.fromkeys(r["constituent"] for r in rows))
    cell = {(r["hook"], r["constituent"]): r for r in rows}

    def label(r: dict[str, Any]) -> str:
        extra = f"<br>({r[bracketed]:.2f})" if r.get(bracketed) is not None else ""
        return f"{r[column]:.2f}{extra}"

    z = [[cell[(h, c)][column] if (h, c) in cell else None for h in hooks] for c in consts]
    text = [[label(cell[(h, c)]) if (h, c) in cell else "" for h in hooks] for c in consts]
    fig = go.Figure(go.Heatmap(z=z, x=hooks, y=consts, colorscale="Viridis", text=text,
                               texttemplate="%{text}", colorbar_title=column))
    fig.update_layout(height=120 + 60 * len(consts), xaxis_tickangle=-45, margin=dict(b=140))
    return fig


def _erasure_figure(res: dict[str, Any]) -> go.Figure | None:
    rows = (res.get("erasure") or {}).get("rows") or []
    if not rows:
        return None
    fig = go.Figure()
    for i, sub in enumerate(dict.fromkeys(r["subroutine"] for r in rows)):
        sel = [r for r in rows if r["subroutine"] == sub]
        color = COLORS[i % len(COLORS)]
        fig.add_bar(
            name=sub, marker_color=[color if r.get("used") else "rgba(0,0,0,0)" for r in sel],
            marker_line=dict(color=color, width=2),
            x=[[r["constituent"] for r in sel], [r["hook"] for r in sel]],
            y=[r["effect"] for r in sel],
            error_y=dict(type="data", symmetric=False,
                         array=[_nz(r.get("ci_high"), r["effect"]) - r["effect"] for r in sel],
                         arrayminus=[r["effect"] - _nz(r.get("ci_low"), r["effect"])
                                     for r in sel]))
    fig.update_layout(barmode="group", height=450, xaxis_title="erased constituent / hook point",
                      yaxis_title=f"{rows[0].get('metric', 'metric')} drop beyond random")
    return fig


def _comparison_figure(res: dict[str, Any]) -> go.Figure | None:
    metrics = res.get("metrics") or []
    if not metrics:
        return None
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[m["metric"] for m in metrics])
    for col, m in enumerate(metrics, start=1):  # one axis per metric: their scales differ
        for i, group in enumerate(("pretrained", "random")):
            fig.add_bar(name=group, x=[group], y=[m[f"{group}_mean"]], marker_color=COLORS[i],
                        error_y=dict(type="data", array=[m.get(f"{group}_sd") or 0]),
                        showlegend=col == 1, row=1, col=col)
    fig.update_layout(height=380, yaxis_title="mean over seeds (± sd)")
    return fig


# ----------------------------------------------------------------------------- html bits
def figure_html(fig: go.Figure) -> str:
    """A plotly figure as an HTML fragment for :func:`page` (plotly.js is loaded by the page)."""
    return pio.to_html(fig, include_plotlyjs=False, full_html=False,
                       config={"displaylogo": False, "responsive": True})


def _nz(value: Any, default: float) -> float:
    return default if value is None else float(value)


def _pre(text: str) -> str:
    return f"<pre>{html.escape(text)}</pre>"


def html_table(rows: list[dict[str, Any]], max_rows: int = 200) -> str:
    """An HTML table of ``rows`` (one column per key seen; at most ``max_rows`` rows)."""
    if not rows:
        return ""
    cols = list(dict.fromkeys(k for r in rows for k in r))

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}"
        if isinstance(v, (dict, list)):
            return html.escape(json.dumps(v)[:80])
        return html.escape("" if v is None else str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    def td(v: Any) -> str:
        text = cell(v)
        return f'<td title="{text}">{text}</td>' if len(text) > 40 else f"<td>{text}</td>"

    body = "".join("<tr>" + "".join(td(r.get(c)) for c in cols) + "</tr>" for r in rows[:max_rows])
    more = (f'<p class="note">First {max_rows} of {len(rows)} rows; results.json holds all.</p>'
            if len(rows) > max_rows else "")
    return f'<div class="table-wrap"><table><tr>{head}</tr>{body}</table></div>{more}'
