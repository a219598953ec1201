"""Compositional task families with subroutine datasets and constituent labels, generated locally.

``load(name, **options)`` builds a :class:`Task`; ``names()`` lists the families. Each family
module documents its options (a frozen ``*Config`` dataclass) and how its labels are defined.
Your own task: a family with ``subroutines``, ``draw`` and ``encode`` (:class:`Family`), turned
into a :class:`Task` by :func:`assemble` (see ``examples/custom_task.py``).
"""
from __future__ import annotations

import importlib
from typing import Any

import torch

from .base import (COMPETENCE_THRESHOLD, RELATION_CLASSES, Constituents, Draw, Family,
                   RelationHead, Split, Task, TaskConfig, View, assemble, balanced, both_correct,
                   check_choice, check_fraction, check_int, cycle, holdout, make_config, n_heldout,
                   relation_cells, relation_loss, relation_targets, relation_views,
                   split_combinations, stream_rng)

_FAMILIES = ("hyperteacher", "language", "symbolic", "vision")


def names() -> list[str]:
    """The task families :func:`load` knows."""
    return list(_FAMILIES)


def load(name: str, progress: bool = False, model: Any = None, **options) -> Task:
    """Build task family ``name`` with ``options`` (seed, n_train, n_test, frac_ood, ...).

    ``model``: the model the task is for; a tokenized family (``language``) then uses the model's
    own tokenizer unless ``tokenizer=`` is given, and a model that ships none is an error.
    ``progress`` shows a bar over the splits being drawn (large vision tasks take seconds).
    """
    if name not in _FAMILIES:
        raise ValueError(f"unknown task family {name!r}; choose one of {names()}")
    family = importlib.import_module(f"{__name__}.{name}")
    if model is not None and getattr(family, "TOKENIZED", False) and "tokenizer" not in options:
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None:
            raise ValueError(
                f"the {name} task is tokenized with the model's own tokenizer, and this model has "
                "none: save it with the model (tokenizer.save_pretrained(model_dir)), pass "
                "mp.load_model(dir, tokenizer=...) or mp.wrap(module, tokenizer=...), or build "
                f"the task yourself with mp.tasks.load({name!r}, tokenizer=...)")
        options["tokenizer"] = tokenizer
    return family.make(progress=progress, **options)


def check_model(task: Task, model: Any) -> None:
    """Raise, before any work, when ``task``'s inputs cannot be fed to ``model``.

    Token ids must lie inside the model's vocabulary, and a task tokenized by one tokenizer
    must decode to the same sentences under the model's own tokenizer.
    """
    if task.input_kind != "tokens":
        return
    vocab = getattr(model, "vocab_size", None)
    sets = [s for s in _token_sets(task) if isinstance(s.data, tuple)]
    if not sets:
        return
    top = max(int(_ids(sub.data[0]).max()) for sub in sets)
    how = (f"build the task with the model's tokenizer: mp.tasks.load({task.name!r}, "
           "model=model) (or tokenizer=model.tokenizer)")
    if vocab is not None and top >= vocab:
        raise ValueError(f"the {task.name} task has token ids up to {top}, but the model's "
                         f"vocabulary has {vocab} entries: the task was tokenized with "
                         f"{task.info.get('tokenizer', 'another tokenizer')!r}; {how}")
    tokenizer = getattr(model, "tokenizer", None)
    examples = task.info.get("examples")
    if tokenizer is None or not examples or not isinstance(task.composite.train.data, tuple):
        return
    ids = _ids(task.composite.train.data[0])[: len(examples)]
    decoded = tokenizer.batch_decode(ids, skip_special_tokens=True)
    if [" ".join(d.split()) for d in decoded] != [" ".join(e.split()) for e in examples]:
        raise ValueError(f"the {task.name} task was tokenized with {task.info['tokenizer']!r}, "
                         f"not with this model's tokenizer (its ids decode to {decoded[0]!r} "
                         f"instead of {examples[0]!r}); {how}")


def _token_sets(task: Task) -> list[Any]:
    sets = [task.composite.train, task.composite.test]
    sets += [s for split in task.subroutines.values() for s in (split.train, split.test)]
    return sets + ([task.heldout] if task.heldout is not None else [])


def _ids(inputs: Any) -> torch.Tensor:
    return inputs["input_ids"] if isinstance(inputs, dict) else inputs


__all__ = ["COMPETENCE_THRESHOLD", "Constituents", "Draw", "Family", "RELATION_CLASSES",
           "RelationHead", "Split", "Task", "TaskConfig", "View", "assemble", "balanced",
           "both_correct", "check_choice", "check_fraction", "check_int", "check_model", "cycle",
           "holdout", "load", "make_config", "n_heldout", "names", "relation_cells",
           "relation_loss", "relation_targets", "relation_views", "split_combinations",
           "stream_rng"]
