"""A study: a grid or list of analysis cells, each named by a content hash of its settings.

A study file (TOML, or the same structure as a dict) has four tables::

    name = "scaling"
    [base]                         # settings every cell starts from
    model = { scratch = "mlp", width = 64, depth = 2 }
    task = { name = "hyperteacher", n_train = 1024 }
    config = { quick = true, mask_epochs = 4 }
    [grid]                         # dotted key -> list of values; the cells are the product
    "model.width" = [32, 128]
    seed = [0, 1, 2]
    [[cells]]                      # optional list of overrides, each crossed with the grid
    "task.support" = "random"      # (tables here merge into base; a grid value replaces)
    [quick]                        # what --quick changes: base (merged), grid axes, cells

A cell's ``model`` is ``{spec = "minilm" | "path/to/hf_dir"}``, ``{factory = "module:function",
args = {...}}`` or ``{scratch = "mlp" | "cnn" | "transformer", ...builder options}`` (``mlp`` takes
``width`` and ``depth``, or ``sizes`` where ``"in"`` / ``"out"`` stand for the task's widths).
``task`` is ``{name = family, ...options}`` (the task's seed defaults to the cell's ``seed``);
``config`` holds :class:`modprobe.AnalysisConfig` fields and shorthands (``fit``, ``mask``,
``ablation`` and ``probe`` as tables of their configs' fields, ``quick = true`` starts from
``AnalysisConfig.quick``); ``init`` is ``"pretrained"`` (the model as
built) or ``"random_init"`` (``modprobe.reinitialize(model, seed)``); ``seed`` is the analysis seed.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

INITS = ("pretrained", "random_init")
SCRATCH = ("mlp", "cnn", "transformer")
_CELL_KEYS = ("model", "task", "config", "init", "seed")
_STUDY_KEYS = ("name", "base", "grid", "cells", "quick")


@dataclass(frozen=True)
class Cell:
    """One analysis of a sweep: plain JSON settings; ``id`` is a hash of exactly these."""

    model: dict[str, Any]
    task: dict[str, Any]
    config: dict[str, Any]
    init: str = "pretrained"
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {k: copy.deepcopy(getattr(self, k)) for k in _CELL_KEYS}

    @property
    def id(self) -> str:
        """12 hex digits of the SHA-256 of the canonical JSON of the settings."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def flat(self) -> dict[str, Any]:
        """Dotted ``{"model.width": 64, "task.name": ..., "seed": 0}``; lists become JSON text."""
        out: dict[str, Any] = {}
        for key in _CELL_KEYS:
            _flatten(getattr(self, key), key, out)
        return out


@dataclass(frozen=True)
class Study:
    """The expanded list of cells of a study (order: cells list outer, grid inner)."""

    cells: tuple[Cell, ...]
    name: str = "study"

    def __len__(self) -> int:
        return len(self.cells)


def load_study(source: str | os.PathLike | Mapping[str, Any] | Study, quick: bool = False) -> Study:
    """A :class:`Study` from a TOML path, a dict of the same structure, or a Study.

    Every cell is checked (model form, task family and options, config fields, init, seed)
    before anything runs; errors name the cell's settings and the fix.
    """
    if isinstance(source, Study):
        return source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"study file {str(path)!r} does not exist")
        import tomllib

        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{path} is not valid TOML: {err}") from err
        default_name = path.stem
    elif isinstance(source, Mapping):
        data, default_name = copy.deepcopy(dict(source)), "study"
    else:
        raise TypeError(f"a study is a TOML path or a dict, got {type(source).__name__}")
    unknown = sorted(set(data) - set(_STUDY_KEYS))
    if unknown:
        raise ValueError(f"unknown study key(s) {unknown}; a study has {list(_STUDY_KEYS)}")
    base, grid, cells = dict(data.get("base", {})), _grid(data.get("grid", {})), data.get("cells")
    if quick:
        q = data.get("quick")
        if not q:
            raise ValueError("--quick needs a [quick] table in the study (base / grid / cells "
                             "overrides for a small run)")
        bad = sorted(set(q) - {"base", "grid", "cells"})
        if bad:
            raise ValueError(f"unknown key(s) {bad} in [quick]; it may hold base, grid and cells")
        base = _merge(base, q.get("base", {}))
        grid.update(_grid(q.get("grid", {})))
        cells = q.get("cells", cells)
    cells = cells if cells is not None else [{}]
    if not isinstance(cells, list) or not all(isinstance(c, Mapping) for c in cells):
        raise ValueError("cells must be a list of tables of dotted overrides ([[cells]] in TOML)")
    names, axes = list(grid), [grid[k] for k in grid]
    expanded, seen = [], set()
    for overrides in cells:
        for point in itertools.product(*axes):
            settings = copy.deepcopy(base)
            for key, value in _dotted(overrides).items():
                _set(settings, key, value)
            for key, value in zip(names, point):
                _set(settings, key, value)
            try:
                cell = make_cell(settings)
            except ValueError as err:
                where = {**_dotted(overrides), **dict(zip(names, point))}
                raise ValueError(f"{err} (in the cell {where or 'of [base]'})") from err
            if cell.id not in seen:
                seen.add(cell.id)
                expanded.append(cell)
    if not expanded:
        raise ValueError("the study has no cells: a grid axis is an empty list")
    return Study(tuple(expanded), str(data.get("name", default_name)))


def make_cell(settings: Mapping[str, Any]) -> Cell:
    """A validated :class:`Cell` from ``{model, task, config, init, seed}``."""
    unknown = sorted(set(settings) - set(_CELL_KEYS))
    if unknown:
        raise ValueError(f"unknown cell setting(s) {unknown}; a cell has {list(_CELL_KEYS)}")
    for key in ("model", "task"):
        if key not in settings:
            raise ValueError(f"a cell needs a {key!r} table (set it in [base], the grid or a "
                             f"cell); got {dict(settings)}")
    model = settings["model"]
    model = {"spec": model} if isinstance(model, str) else dict(model)
    task = settings["task"]
    task = {"name": task} if isinstance(task, str) else dict(task)
    config = dict(settings.get("config", {}))
    config.setdefault("progress", False)
    init, seed = settings.get("init", "pretrained"), settings.get("seed", 0)
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    _check_model(model)
    if init == "random_init" and "scratch" in model:
        raise ValueError(f"init='random_init' with a scratch model repeats init='pretrained': "
                         "the scratch model is already randomly initialised from the seed; got "
                         f"{model}. Vary seed instead, or use a pretrained spec or factory")
    _check_task(task)
    _check_config(config)
    return Cell(model, task, config, init, seed)


# ----------------------------------------------------------------------------- checks
def _check_model(model: dict[str, Any]) -> None:
    forms = [k for k in ("spec", "factory", "scratch") if k in model]
    if len(forms) != 1:
        raise ValueError(f"a model is one of {{spec = ...}}, {{factory = 'module:function'}} or "
                         f"{{scratch = 'mlp' | 'cnn' | 'transformer', ...}}; got {model}")
    form = forms[0]
    if form == "spec" and set(model) != {"spec"}:
        raise ValueError(f"a model spec takes no other keys, got {model}")
    if form == "factory":
        if not isinstance(model["factory"], str) or ":" not in model["factory"]:
            raise ValueError(f"factory must be 'module:function', got {model['factory']!r}")
        extra = set(model) - {"factory", "args"}
        if extra or not isinstance(model.get("args", {}), dict):
            raise ValueError(f"a factory model has 'factory' and an 'args' table only, got {model}")
    if form == "scratch":
        if model["scratch"] not in SCRATCH:
            raise ValueError(f"scratch builder must be one of {SCRATCH}, got {model['scratch']!r}")
        if model["scratch"] == "mlp":
            has_sizes, has_width = "sizes" in model, "width" in model
            if has_sizes == has_width:
                raise ValueError(f"a scratch mlp needs either width (and depth) or sizes, "
                                 f"got {model}")
            extra = set(model) - {"scratch", "sizes", "width", "depth", "activation"}
            if extra:
                raise ValueError(f"unknown scratch mlp option(s) {sorted(extra)}; it takes width, "
                                 "depth, sizes and activation")


def _check_task(task: dict[str, Any]) -> None:
    from .. import tasks
    from ..tasks.base import TaskConfig, make_config

    name = task.get("name")
    if name not in tasks.names():
        raise ValueError(f"task name must be one of {tasks.names()}, got {name!r} in {task}")
    family = importlib.import_module(f"modprobe.tasks.{name}")
    classes = [c for c in vars(family).values() if isinstance(c, type)
               and issubclass(c, TaskConfig) and c is not TaskConfig]
    options = {k: (tuple(v) if isinstance(v, list) else v) for k, v in task.items() if k != "name"}
    options.setdefault("seed", 0)
    if classes:
        make_config(classes[0], name, options)


def _check_config(config: dict[str, Any]) -> None:
    from ..analysis import RENAMED_SHORTHANDS, SHORTHANDS, AnalysisConfig

    fields = [f.name for f in dataclasses.fields(AnalysisConfig)]
    valid = set(fields) | set(SHORTHANDS) | set(RENAMED_SHORTHANDS) | {"quick"}
    unknown = sorted(set(config) - valid)
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; AnalysisConfig has {fields}, the "
                         f"shorthands {sorted(SHORTHANDS)} and quick")
    start = AnalysisConfig()
    for stage in _STAGES:
        table = config.get(stage, {})
        names = [f.name for f in dataclasses.fields(getattr(start, stage))]
        unknown = sorted(set(table) - set(names))
        if unknown:
            raise ValueError(f"unknown config.{stage} field(s) {unknown}; "
                             f"{type(getattr(start, stage)).__name__} has {names}")
    analysis_config(config, seed=0)  # raises on bad values


# The nested stage configs a cell's config may hold as tables (``config.mask.epochs = 4``).
_STAGES = ("fit", "mask", "ablation", "probe")


def analysis_config(config: Mapping[str, Any], seed: int) -> Any:
    """The :class:`modprobe.AnalysisConfig` a cell's ``config`` table describes: ``quick``
    starts from ``AnalysisConfig.quick``, tables of the nested stage configs (``fit``, ``mask``,
    ``ablation``, ``probe``) change their fields, the other keys are AnalysisConfig fields or
    shorthands."""
    from ..analysis import AnalysisConfig

    def plain(value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    start = AnalysisConfig.quick(seed=seed) if config.get("quick") else AnalysisConfig(seed=seed)
    settings = {k: plain(v) for k, v in config.items() if k not in _STAGES and k != "quick"}
    for stage in _STAGES:
        if isinstance(config.get(stage), Mapping):
            current = getattr(start, stage)
            names = {f.name for f in dataclasses.fields(current)}
            changes = {k: plain(v) for k, v in config[stage].items() if k in names}
            settings[stage] = (current.replace(**changes) if stage == "mask"
                               else dataclasses.replace(current, **changes))
    return dataclasses.replace(start, **settings)


# ----------------------------------------------------------------------------- dict helpers
def _grid(grid: Mapping[str, Any]) -> dict[str, list[Any]]:
    """``{dotted key: list of values}``; nested tables are walked until a list is found."""
    if not isinstance(grid, Mapping):
        raise ValueError(f"grid must be a table of lists, got {grid!r}")
    flat = {}
    for key, value in grid.items():
        if isinstance(value, Mapping):
            flat.update({f"{key}.{k}": v for k, v in _grid(value).items()})
        elif isinstance(value, list):
            flat[key] = value
        else:
            raise ValueError(f"grid axis {key!r} must be a list of values, got {value!r}")
    return flat


def _dotted(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A cell's overrides as ``{dotted key: value}``: nested tables merge into the settings."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, Mapping):
            flat.update(_dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _set(settings: dict[str, Any], key: str, value: Any) -> None:
    """``settings["a"]["b"] = value`` for ``key = "a.b"`` (a string model/task becomes a table)."""
    parts = key.split(".")
    if parts[0] not in _CELL_KEYS:
        raise ValueError(f"setting {key!r} does not start with one of {list(_CELL_KEYS)}")
    node = settings
    for part in parts[:-1]:
        child = node.get(part)
        if isinstance(child, str) and part in ("model", "task"):
            child = {"spec": child} if part == "model" else {"name": child}
        node[part] = dict(child) if isinstance(child, Mapping) else {}
        node = node[part]
    node[parts[-1]] = copy.deepcopy(value)


def _merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(a))
    for key, value in b.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}", out)
    elif isinstance(value, (list, tuple)):
        out[prefix] = json.dumps(list(value))
    else:
        out[prefix] = value
