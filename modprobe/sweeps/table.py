"""One table of a sweep's cells (settings, size, fit metrics, scalars) and a tidy probe table.

Both are drawn only from the files under ``<out>/cells/`` and ``<out>/study.json``, so they can
be rebuilt at any time; unfinished cells are left out (and listed by :func:`missing`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import _io
from .spec import Cell

SCALARS = ("task_metric", "density", "isolation", "decodability")
FIT = ("metric", "train", "test", "heldout", "head", "finetuned", "epochs")
PROBE = ("model", "hook", "constituent", "metric", "score", "ci_low", "ci_high",
         "selectivity", "baseline", "heldout_score", "heldout_baseline")


def study_cells(root: str | Path) -> list[Cell]:
    """The cells of the study last run in ``root`` (from ``study.json``), in study order."""
    path = Path(root) / "study.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: {root} is not a sweep directory "
                                "(run `modprobe sweep STUDY.toml --out DIR` first)")
    return [Cell(**c["settings"]) for c in json.loads(path.read_text())["cells"]]


def missing(root: str | Path) -> list[str]:
    """Ids of the study's cells that have no ``results.json`` yet."""
    return [c.id for c in study_cells(root)
            if not (Path(root) / "cells" / c.id / "results.json").exists()]


def cell_row(cell: Cell, payload: dict[str, Any]) -> dict[str, Any]:
    """One row: ``cell`` id, dotted settings, ``n_params``, ``fit.*``, scalars, per-subnetwork."""
    results = payload["results"]
    row: dict[str, Any] = {"cell": cell.id, **cell.flat(), "n_params": payload["cell"]["n_params"]}
    row.update({f"fit.{k}": results["fit"].get(k) for k in FIT})
    row.update({k: results["scalars"].get(k) for k in SCALARS})
    for name, sub in sorted(results["subnetworks"].items()):
        row[f"density.{name}"] = sub["density"]
    for name, isolated in sorted(results["verdict"]["isolated"].items()):
        row[f"isolated.{name}"] = isolated
    return row


def probe_rows(cell: Cell, payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The cell's probe rows (one per hook x constituent) with its id and settings."""
    settings = {"cell": cell.id, **cell.flat()}
    return [{**settings, **{k: r.get(k) for k in PROBE}}
            for r in (payload["results"].get("probes") or {}).get("rows", [])]


def aggregate(root: str | Path) -> tuple[Any, Any]:
    """``(table, probes)`` as pandas DataFrames over the finished cells of ``root``'s study."""
    import pandas as pd

    from .cell import load_cell

    rows, probes = [], []
    for cell in study_cells(root):
        directory = Path(root) / "cells" / cell.id
        if not (directory / "results.json").exists():
            continue
        payload = load_cell(directory)
        rows.append(cell_row(cell, payload))
        probes += probe_rows(cell, payload)
    return pd.DataFrame(rows), pd.DataFrame(probes)


def write_tables(root: str | Path) -> dict[str, Path]:
    """Write ``table.csv`` / ``.parquet`` and ``probes.csv`` / ``.parquet`` atomically."""
    root = Path(root)
    table, probes = aggregate(root)
    paths = {}
    for name, frame in (("table", table), ("probes", probes)):
        paths[f"{name}.csv"] = _io.atomic_write(
            root / f"{name}.csv", lambda tmp, f=frame: f.to_csv(tmp, index=False))
        paths[f"{name}.parquet"] = _io.atomic_write(
            root / f"{name}.parquet", lambda tmp, f=frame: f.to_parquet(tmp, index=False))
    return paths


def read_table(root: str | Path, name: str = "table") -> Any:
    """A written table (``"table"`` or ``"probes"``) back as a DataFrame, from Parquet."""
    import pandas as pd

    return pd.read_parquet(Path(root) / f"{name}.parquet")
