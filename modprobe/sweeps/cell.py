"""Run one cell of a sweep: build its task and model, then an ordinary resumable ``analyze``.

A cell lives in ``<out>/cells/<cell id>/``: ``cell.json`` (its settings and size), then every
file ``analyze`` writes (stages saved atomically, ``results.json`` last). ``results.json``
present means finished, so a rerun skips the cell; otherwise ``analyze`` resumes from the stages
already saved. A lock file keeps two processes from working on one cell at the same time.
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
from pathlib import Path
from typing import Any, Iterator

from .. import _io
from .spec import Cell, analysis_config


def cell_dir(root: str | Path, cell: Cell) -> Path:
    return Path(root) / "cells" / cell.id


def run_cell(settings: dict[str, Any], root: str, threads: int = 1,
             device: str | None = None) -> dict[str, Any]:
    """Analyse one cell (or load its finished results); returns ``{"cell": ..., "results": ...}``.

    ``threads``: torch threads for this cell (restored afterwards), the same on every backend so
    that numbers do not depend on where the cell ran. ``device``: ``None`` or ``"auto"`` picks
    CUDA when available.
    """
    import torch

    cell = Cell(**settings)
    directory = cell_dir(root, cell)
    if (directory / "results.json").exists():
        return load_cell(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(directory / ".lock"):
        if (directory / "results.json").exists():  # another process finished it meanwhile
            return load_cell(directory)
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            _analyze(cell, directory, _device(device))
        finally:
            torch.set_num_threads(previous)
    return load_cell(directory)


def load_cell(directory: Path) -> dict[str, Any]:
    """A finished cell's settings and results (an older results file in the current
    vocabulary)."""
    from ..analysis import upgrade_results

    results = json.loads((directory / "results.json").read_text())
    return {"cell": json.loads((directory / "cell.json").read_text()),
            "results": upgrade_results(results)}


def build_task(cell: Cell) -> Any:
    from .. import tasks

    options = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cell.task.items()
               if k != "name"}
    options.setdefault("seed", cell.seed)
    return tasks.load(cell.task["name"], **options)


def build_model(cell: Cell, task: Any, device: str = "cpu") -> Any:
    """The cell's model (seeded by the cell's seed), re-initialised for ``init="random_init"``."""
    import torch

    from .. import scratch
    from ..models import load_model, reinitialize

    spec = cell.model
    if "spec" in spec:
        model = load_model(spec["spec"], device=device)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cell.seed)
            if "factory" in spec:
                module_name, _, function = spec["factory"].partition(":")
                try:
                    factory = getattr(importlib.import_module(module_name), function)
                except (ImportError, AttributeError) as err:
                    raise ValueError(f"cannot import model factory {spec['factory']!r}: "
                                     f"{err}") from err
                model = load_model(factory(**spec.get("args", {})))
            elif spec["scratch"] == "mlp":
                model = scratch.mlp(_mlp_sizes(spec, task), seed=cell.seed,
                                    activation=spec.get("activation", "relu"))
            else:
                options = {k: v for k, v in spec.items() if k != "scratch"}
                model = getattr(scratch, spec["scratch"])(seed=cell.seed, **options)
        model.module.to(device)
    if cell.init == "random_init":
        model = reinitialize(model, seed=cell.seed)
        model.module.to(device)
    return model


def _mlp_sizes(spec: dict[str, Any], task: Any) -> list[int]:
    """``[in] + [width] * depth + [out]``, or ``sizes`` with "in" / "out" filled from the task."""
    d_in = int(task.composite.train.data[0].shape[-1])
    targets = task.composite.train.targets()
    d_out = task.n_classes or int(targets.shape[-1])
    sizes = spec.get("sizes") or ["in"] + [spec["width"]] * int(spec.get("depth", 2)) + ["out"]
    return [d_in if s == "in" else d_out if s == "out" else int(s) for s in sizes]


def _analyze(cell: Cell, directory: Path, device: str) -> None:
    from ..analysis import analyze

    task = build_task(cell)
    model = build_model(cell, task, device)
    n_params = sum(p.numel() for p in model.module.parameters())
    _io.write_json(directory / "cell.json", {"id": cell.id, "settings": cell.to_dict(),
                                             "n_params": n_params})
    analyze(model, task, out=directory, config=analysis_config(cell.config, cell.seed),
            label=cell.init)


def _device(device: str | None) -> str:
    if device not in (None, "auto"):
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
