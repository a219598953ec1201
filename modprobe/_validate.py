"""Checks at the boundary: every public config and input is validated before any work starts.

Configs declare their constraints as ``{field: constraint}`` (like scikit-learn's parameter
constraints) and call :func:`check` from ``__post_init__``; each error names the field, the value
given, what is valid and how to fix it. The readers here (:func:`read_json`,
:func:`read_tensors`) check the files modprobe wrote before trusting them, and name the path in
every error.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

SCHEMA_VERSION = 4  # results.json, run.json and stage files (2: verdicts and necessity sets;
# 3: nested stage configs and one vocabulary: p_adjusted, n_bootstrap, probe rows' model column;
# 4: probe rows' score / control_score / heldout_score, the "score" measure)


# --------------------------------------------------------------------- constraints
@dataclass(frozen=True)
class Int:
    """An integer (not a bool, not 2.5) in ``[low, high]``; ``none``: None is allowed too."""

    low: int | None = None
    high: int | None = None
    none: bool = False

    def ok(self, value: Any) -> bool:
        return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
                and (self.low is None or value >= self.low)
                and (self.high is None or value <= self.high))

    def describe(self) -> str:
        return f"an integer {_range(self.low, self.high, False, False)}"


@dataclass(frozen=True)
class Real:
    """A finite real number in the interval; ``grid``: a non-empty tuple of them is allowed too."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    none: bool = False
    grid: bool = False

    def ok(self, value: Any) -> bool:
        if self.grid and isinstance(value, (tuple, list)):
            return len(value) > 0 and all(self._one(v) for v in value)
        return self._one(value)

    def _one(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        value = float(value)
        return (math.isfinite(value)
                and (self.low is None or value > self.low or (value == self.low and not self.low_open))
                and (self.high is None or value < self.high
                     or (value == self.high and not self.high_open)))

    def describe(self) -> str:
        one = f"a finite number {_range(self.low, self.high, self.low_open, self.high_open)}"
        return f"{one}, or a non-empty tuple of such numbers (a grid)" if self.grid else one


@dataclass(frozen=True)
class OneOf:
    """One of a fixed set of values."""

    choices: tuple[Any, ...]
    none: bool = False

    def ok(self, value: Any) -> bool:
        return isinstance(value, (str, type(None))) and value in self.choices

    def describe(self) -> str:
        return f"one of {list(self.choices)}"  # check() words this rule as "unknown ..."


@dataclass(frozen=True)
class Bool:
    none: bool = False

    def ok(self, value: Any) -> bool:
        return isinstance(value, bool)

    def describe(self) -> str:
        return "True or False"


@dataclass(frozen=True)
class Strings:
    """A non-empty tuple of non-empty strings (glob patterns, hook names)."""

    none: bool = False

    def ok(self, value: Any) -> bool:
        return (isinstance(value, tuple) and len(value) > 0
                and all(isinstance(v, str) and v.strip() for v in value))

    def describe(self) -> str:
        return "a non-empty tuple of non-empty strings, e.g. ('blocks.*.mlp.*',)"


@dataclass(frozen=True)
class Text:
    none: bool = False

    def ok(self, value: Any) -> bool:
        return isinstance(value, str) and bool(value.strip())

    def describe(self) -> str:
        return "a non-empty string"


@dataclass(frozen=True)
class Instance:
    cls: type

    none: bool = False

    def ok(self, value: Any) -> bool:
        return isinstance(value, self.cls)

    def describe(self) -> str:
        return f"a {self.cls.__name__}"


@dataclass(frozen=True)
class Device:
    """A torch device string this machine has (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``)."""

    none: bool = True

    def ok(self, value: Any) -> bool:
        return device_problem(value) is None

    def describe(self) -> str:
        return 'a device this machine has, e.g. "cpu" or "cuda"'


def _range(low: Any, high: Any, low_open: bool, high_open: bool) -> str:
    if low is None and high is None:
        return "(any value)"
    if high is None:
        return f"{'>' if low_open else '>='} {low}"
    if low is None:
        return f"{'<' if high_open else '<='} {high}"
    return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def check(config: Any, constraints: Mapping[str, Any], fixes: Mapping[str, str] | None = None
          ) -> None:
    """Raise a ValueError (TypeError for a wrong type) naming the first field that breaks its
    constraint; ``fixes`` adds a hint per field."""
    cls = type(config).__name__
    for name, rule in constraints.items():
        value = getattr(config, name)
        if value is None and rule.none:
            continue
        if rule.ok(value):
            continue
        hint = (fixes or {}).get(name, "")
        problem = device_problem(value) if isinstance(rule, Device) else None
        detail = f" ({problem})" if problem else ""
        if isinstance(rule, OneOf):
            message = (f"{cls}.{name}: unknown {name} {value!r}; choose one of "
                       f"{list(rule.choices)}")
        else:
            message = (f"{cls}.{name} must be {rule.describe()}"
                       f"{' or None' if rule.none else ''}, got {value!r}{detail}")
        message += f"; {hint}" if hint else ""
        wrong_type = (isinstance(rule, (Int, Real)) and not isinstance(value, (numbers.Real, tuple, list))
                      or isinstance(rule, (Strings, Text)) and not isinstance(value, (str, tuple)))
        raise (TypeError if wrong_type else ValueError)(message)


def configured(cls: type, config: Any, options: Mapping[str, Any], where: str) -> Any:
    """A stage's config: ``config`` (default ``cls()``) with the keyword ``options`` replacing
    its fields, so that ``stage(model, data, config)`` and ``stage(model, data, field=value)``
    mean the same; unknown options and configs of another class are refused, naming ``where``."""
    import dataclasses

    if config is not None and not isinstance(config, cls):
        raise TypeError(f"{where}: config must be a {cls.__name__}, got {type(config).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(f"unknown option(s) {unknown}; {where} takes the fields of "
                        f"{cls.__name__}: {sorted(names)}")
    return dataclasses.replace(config or cls(), **options)


def as_tuple(config: Any, *names: str, scalars: bool = False) -> None:
    """Store list (or single-string) values of ``names`` as tuples on a frozen dataclass; with
    ``scalars`` a single number becomes a one-element tuple too."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, str) or scalars and isinstance(value, numbers.Real):
            value = (value,)
        if isinstance(value, list):
            value = tuple(value)
        object.__setattr__(config, name, value)


def device_problem(value: Any) -> str | None:
    if value is None:
        return None
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        return "not a torch device name"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available on this machine; use device='cpu'"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return f"this machine has {torch.cuda.device_count()} CUDA device(s)"
    if device.type == "mps" and not torch.backends.mps.is_available():
        return "MPS is not available on this machine"
    if device.type not in ("cpu", "cuda", "mps"):
        return "modprobe runs on cpu, cuda or mps"
    return None


def device(value: Any) -> Any:
    """``value`` if it names a usable torch device (or is None), else a ValueError saying why."""
    problem = device_problem(value)
    if problem:
        raise ValueError(f"device {value!r} cannot be used: {problem}")
    return value


def deprecated(old: str, new: str, stacklevel: int = 2) -> None:
    """A DeprecationWarning "``old`` is deprecated; use ``new``" attributed to the frame
    ``stacklevel`` levels up (1: the caller of this function, as for :func:`warnings.warn`)."""
    warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning,
                  stacklevel=stacklevel + 1)


def renamed(value: Any, old: Any, new: Any, what: str, stacklevel: int = 4) -> Any:
    """``new`` (with a DeprecationWarning naming it) when ``value`` is the old name ``old``, else
    ``value``; ``what`` names the setting (e.g. ``"ProbeConfig.pooling"``)."""
    if value != old:
        return value
    deprecated(f"{what}={old!r}", f"{what.rsplit('.', 1)[-1]}={new!r}", stacklevel)
    return new


# --------------------------------------------------------------------- names and models
def path_name(name: Any, what: str = "subroutine name") -> str:
    """``name`` if it is safe as one directory name inside ``out/``, else a ValueError."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{what} {name!r} must be a non-empty string: it names a directory")
    bad = [c for c in ("/", "\\", "\0", ":") if c in name]
    if bad or name in (".", "..") or name.startswith(".") or name != name.strip():
        raise ValueError(
            f"{what} {name!r} cannot name a directory inside out/ (it holds {bad or 'a leading dot or space'}); "
            "use letters, digits, '_' and '-', e.g. 'agreement'")
    return name


def against_model(model: Any, params: Sequence[str] | None, hooks: Sequence[str] | None) -> None:
    """Every parameter glob matches a parameter of ``model`` and every hook names a hook point."""
    if params is not None:
        model.param_names(list(params))  # ValueError naming the pattern and the closest names
    if hooks is not None:
        from .probes.activations import check_hooks

        check_hooks(model, list(hooks))


# --------------------------------------------------------------------- readers
def read_json(path: str | os.PathLike, *, kind: str | Iterable[str] | None = None,
              required: Iterable[str] = (), versioned: bool = True,
              versions: tuple[int, ...] = (SCHEMA_VERSION,)) -> dict[str, Any]:
    """A JSON object written by modprobe, checked: it parses, its ``schema_version`` is one of
    ``versions`` (when ``versioned``), its ``kind`` is expected and it has the ``required`` keys.
    Every error names ``path``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} cannot be read: {err}") from err
    if not text.strip():
        raise ValueError(f"{path} is empty (an interrupted write?); delete it and re-run")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}, column "
                         f"{err.colno}); the file is truncated or corrupt: delete it and re-run"
                         ) from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, expected an object")
    if versioned:
        version = data.get("schema_version")
        if version not in versions:
            newer = isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION
            why = ("it was written by a newer modprobe: upgrade modprobe to read it" if newer else
                   "it was not written by this version of modprobe")
            readable = " or ".join(filter(None, (", ".join(str(v) for v in versions[:-1]),
                                                 str(versions[-1]))))
            raise ValueError(f"{path} has schema_version {version!r}, but this modprobe reads "
                             f"version {readable}; {why}")
    if kind is not None:
        kinds = (kind,) if isinstance(kind, str) else tuple(kind)
        if data.get("kind") not in kinds:
            raise ValueError(f"{path} has kind {data.get('kind')!r}, expected "
                             f"{' or '.join(repr(k) for k in kinds)}")
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(f"{path} lacks the key(s) {missing}: it is incomplete or not a modprobe "
                         "file; delete it and re-run")
    return data


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A safetensors file as ``{name: tensor}``; truncated or corrupt files raise a ValueError
    naming ``path`` (safetensors never unpickles, so loading cannot run code)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err}); it is truncated or "
                         "corrupt: delete it and re-run") from None


def hf_directory(path: str | os.PathLike) -> None:
    """A local HuggingFace directory has a parseable config.json naming a model_type and a weights
    file, else a ValueError naming what is wrong (before any loader prints its own guesses)."""
    path = Path(path)
    config = path / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{config} is not a readable JSON file ({err}); the model directory is "
                         "corrupt: save it again with model.save_pretrained(dir)") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise ValueError(f"{config} names no model_type; the model directory is corrupt: save it "
                         "again with model.save_pretrained(dir)")
    weights = [p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth")
               or p.name.endswith(".index.json")]
    if not weights:
        raise ValueError(f"{path} holds no weights file (model.safetensors or pytorch_model.bin); "
                         "save the model with model.save_pretrained(dir)")
    from safetensors import SafetensorError, safe_open

    for file in (p for p in weights if p.suffix == ".safetensors"):
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{file} is not a readable safetensors file ({err}); it is truncated "
                             "or corrupt: save the model again with model.save_pretrained(dir)"
                             ) from None
