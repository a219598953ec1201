"""Sweeps: many analyses (models x tasks x seeds x settings x init) run as one resumable study.

``sweep(study, out)`` expands a study (TOML file or dict, see :mod:`.spec`) into cells, runs
each cell as an ordinary :func:`modprobe.analyze` in ``<out>/cells/<content hash>/`` (finished
cells are skipped, unfinished ones resume by stage) on local processes or a Ray cluster, then
writes one table of every cell (``table.csv`` / ``table.parquet``), a tidy probe table and an
HTML report with plots across the grid.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .. import _io
from .backends import BACKENDS, SweepError, run_local, run_ray
from .spec import Cell, Study, load_study
from .table import aggregate, missing, read_table, write_tables


@dataclass
class SweepResult:
    """What a sweep left in ``out``: the cell table and probe table (pandas), the cells run."""

    out: Path
    study: Study
    table: Any
    probes: Any
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"study {self.study.name!r}: {len(self.study)} cells ({len(self.ran)} run, "
                f"{len(self.skipped)} already finished)\ntable: {self.out / 'table.csv'} "
                f"(and .parquet), probes: {self.out / 'probes.csv'}\n"
                f"report: {self.out / 'report.html'}")


def sweep(study: str | os.PathLike | Mapping[str, Any] | Study,
          out: str | os.PathLike | None = None, *, backend: str = "local",
          workers: int | None = None, address: str | None = None, quick: bool = False,
          threads: int = 1, max_retries: int = 3, gpus_per_cell: float | None = None,
          device: str | None = None, progress: bool = True, report: bool = True) -> SweepResult:
    """Run every cell of ``study`` under ``out`` (default ``runs/<study name>``) and aggregate.

    ``backend``: ``"local"`` (``workers`` processes; default: CPU count // ``threads``; 1 runs
    in this process) or ``"ray"`` (``address``: ``None`` starts a local Ray instance, ``"auto"``
    or ``"ray://host:10001"`` joins a cluster; ``gpus_per_cell`` defaults to 1 when the cluster
    has GPUs). ``threads``: torch threads per cell, identical on every backend so that results
    do not depend on the backend. ``max_retries``: how often a cell is retried when its worker
    dies (a cell whose analysis raises is not retried). ``quick`` uses the study's ``[quick]``
    table. ``out`` must be visible to every Ray node for stage-level resuming across nodes;
    finished results come back to the driver and are saved under ``out`` either way.
    """
    study = load_study(study, quick=quick)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if threads < 1 or max_retries < 0:
        raise ValueError(f"threads must be >= 1 and max_retries >= 0, got {threads} and "
                         f"{max_retries}")
    if backend == "local" and address is not None:
        raise ValueError("address= is for backend='ray'; pass backend='ray' to join a cluster")
    out = Path(out) if out is not None else Path("runs") / study.name
    out.mkdir(parents=True, exist_ok=True)
    _io.write_json(out / "study.json", {"name": study.name, "cells": [
        {"id": c.id, "settings": c.to_dict()} for c in study.cells]})
    skipped = [c.id for c in study.cells if (out / "cells" / c.id / "results.json").exists()]
    todo = [c for c in study.cells if c.id not in skipped]
    failed = None
    if todo:
        try:
            if backend == "local":
                if workers is None:
                    workers = max(1, (os.cpu_count() or 1) // threads)
                payloads = run_local(todo, str(out.resolve()), workers=workers,
                                     threads=threads, device=device, max_retries=max_retries,
                                     progress=progress)
            else:
                payloads = run_ray(todo, str(out.resolve()), address=address, threads=threads,
                                   gpus_per_cell=gpus_per_cell, device=device,
                                   max_retries=max_retries, progress=progress)
        except SweepError as err:  # tables and report of the cells that did finish, then raise
            failed, payloads = err, err.done
        _keep(out, payloads)
    write_tables(out)
    table, probes = read_table(out), read_table(out, "probes")
    if report:
        from .report import write_sweep_report

        write_sweep_report(out)
    if failed is not None:
        raise failed
    return SweepResult(out, study, table, probes, [c.id for c in todo], skipped)


def _keep(out: Path, payloads: dict[str, dict[str, Any]]) -> None:
    """Save results that came back from workers whose disk ``out`` does not share."""
    for cell_id, payload in payloads.items():
        directory = out / "cells" / cell_id
        if not (directory / "results.json").exists():
            _io.write_json(directory / "cell.json", payload["cell"])
            _io.write_json(directory / "results.json", payload["results"])


__all__ = ["BACKENDS", "Cell", "Study", "SweepError", "SweepResult", "aggregate", "load_study",
           "missing", "read_table", "sweep", "write_tables"]
