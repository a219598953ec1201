"""Probe features: pooled activations per hook point, and the same rows built from the raw inputs.

Activations are collected once per batch through ``HookedModel.run_with_cache`` and kept pooled,
in float32 on the CPU, so memory grows with examples x width, never with sequence length (except
for ``pooling="tokens"``, which keeps every real position as its own row).

Shapes: ``(N, D)`` is used as is; ``(N, T, D)`` is a sequence (TransformerLens layout) pooled over
``T`` with the attention mask when one is given; ``(N, C, *spatial)`` (a conv map) is read as ``C``
channels at ``prod(spatial)`` positions, so ``"mean"`` is global average pooling.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..models import HookedModel
from .._validate import renamed
from ..subroutine import index_inputs, move_to

INPUT = "input"
POOLINGS = ("mean", "first", "last", "tokens")
#: Old option values still read, with a DeprecationWarning: setting -> {old: new}. The CLI reads
#: this map too (``--probe-pooling none`` is ``--probe-pooling tokens``).
RENAMED_VALUES = {"pooling": {"none": "tokens"}, "measure": {"accuracy": "score"}}


def pooling_name(pooling: Any, where: str, stacklevel: int = 4) -> Any:
    """``pooling``, with the old name ``"none"`` (every position its own row) read as
    ``"tokens"`` and a DeprecationWarning; ``where`` names the setting, ``stacklevel`` the
    caller's frame for the warning (as for :func:`warnings.warn`, counted from here)."""
    for old, new in RENAMED_VALUES["pooling"].items():
        pooling = renamed(pooling, old, new, where, stacklevel=stacklevel + 1)
    return pooling


@dataclass
class InputRows:
    """What the probes see of one input set: one row per example (or per position)."""

    features: dict[str, torch.Tensor]  # hook -> (R, D) float32
    example: torch.Tensor  # (R,) the example each row comes from
    types: torch.Tensor  # (R,) input-type id per row: same id = same input (token for "tokens")


def default_hooks(model: HookedModel) -> list[str]:
    """Every block's output: ``blocks.{i}.hook_out`` on bridges; elsewhere the elements of the
    longest ``ModuleList`` (the layer stack), or the top-level children when there is none.
    (A ``ModuleList`` itself never runs, so it cannot be hooked.)"""
    names = model.hook_names
    if model.is_bridge:
        blocks = [n for n in names if re.fullmatch(r"blocks\.\d+\.hook_out", n)]
        return sorted(blocks, key=lambda n: int(n.split(".")[1]))
    stacks = [(name, sub) for name, sub in model.module.named_modules()
              if isinstance(sub, nn.ModuleList) and len(sub)]
    if stacks:
        name, stack = max(stacks, key=lambda item: len(item[1]))
        return [f"{name}.{i}" if name else str(i) for i in range(len(stack))]
    return [name for name, _ in model.module.named_children()]


def check_hooks(model: HookedModel, hooks: Sequence[str]) -> list[str]:
    """``hooks`` as a list, or a ValueError naming each unknown hook with its closest names."""
    known = model.hook_names
    for hook in hooks:
        if hook != INPUT and hook not in known:
            close = difflib.get_close_matches(hook, known, n=5, cutoff=0.3)
            raise ValueError(f"unknown hook point {hook!r}; closest: {close}. model.hook_names "
                             f"lists all {len(known)}, and {INPUT!r} names the input baseline")
    if len(set(hooks)) != len(hooks):
        raise ValueError(f"hooks {list(hooks)} name a hook point twice")
    return list(hooks)


def n_examples(inputs: Any) -> int:
    return len(_source(inputs))


def collect(model: HookedModel, inputs: Any, hooks: Sequence[str], pooling: str,
            batch_size: int, progress: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``({hook: (R, D) pooled float32 activations}, (R,) example of each row)``."""
    n, mask = n_examples(inputs), _attention_mask(inputs)
    parts: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    examples: list[torch.Tensor] = []
    with model.evaluating(), torch.no_grad():
        for start in tqdm(range(0, n, batch_size), desc="activations", disable=not progress,
                          leave=False):
            idx = torch.arange(start, min(n, start + batch_size))
            _, cache = model.run_with_cache(move_to(index_inputs(inputs, idx), model.device),
                                            names=hooks)
            batch_mask = mask[idx] if mask is not None else None
            rows_of = None
            for hook in hooks:
                rows, example = _pool(cache[hook], batch_mask, pooling, hook)
                if rows_of is not None and not torch.equal(example, rows_of):
                    raise ValueError(f"pooling='tokens' needs the same positions at every hook; "
                                     f"{hook!r} has {len(example)} rows where {hooks[0]!r} has "
                                     f"{len(rows_of)}: probe these hooks in separate calls")
                rows_of = example
                parts[hook].append(rows.detach().float().cpu())
            examples.append(rows_of + start)
    return {h: torch.cat(p) for h, p in parts.items()}, torch.cat(examples)


def _pool(act: torch.Tensor, mask: torch.Tensor | None, pooling: str, hook: str
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, example index within the batch)`` of one hook's batch of activations."""
    n = act.shape[0]
    if act.dim() == 2:
        if pooling == "tokens":
            raise ValueError(f"pooling='tokens' probes every position, but {hook!r} gives one "
                             f"vector per example (shape {tuple(act.shape)}); use pooling='mean'")
        return act, torch.arange(n)
    if act.dim() > 3:  # (N, C, *spatial) -> (N, positions, C)
        act = act.flatten(2).transpose(1, 2)
    if mask is None or mask.shape[1] != act.shape[1]:
        mask = torch.ones(act.shape[:2], dtype=torch.bool)
    return _pool_positions(act, mask.to(act.device).bool(), pooling)


def _pool_positions(x: torch.Tensor, mask: torch.Tensor, pooling: str
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool ``(N, T, D)`` over the real positions in ``mask`` (N, T)."""
    n = x.shape[0]
    if pooling == "tokens":
        example, _ = mask.nonzero(as_tuple=True)
        return x[mask], example.cpu()
    if pooling == "mean":
        weights = mask.to(x.dtype).unsqueeze(-1)
        return (x * weights).sum(1) / weights.sum(1).clamp_min(1), torch.arange(n)
    if pooling == "first":
        return x[:, 0], torch.arange(n)
    last = mask.shape[1] - 1 - mask.flip(1).int().argmax(1)  # last real position (any padding side)
    return x[torch.arange(n, device=x.device), last], torch.arange(n)


# --------------------------------------------------------------------- input baseline
def input_rows(input_sets: Sequence[Any], pooling: str, max_dim: int, seed: int
               ) -> list[InputRows] | None:
    """The input baseline's features and the input types, for each input set.

    Token ids become a bag of tokens over the ids that occur in any set ("mean": counts / length;
    "first"/"last"/"tokens": the one-hot token); other inputs are flattened per example (or, for
    "tokens", kept per position of an (N, T, d) tensor). Wider than ``max_dim`` -> a fixed seeded
    Gaussian projection to ``max_dim`` (which keeps linear decodability, up to noise).
    Input types (for the control task) are whole inputs, or the token / vector at a position.
    ``None`` where positions are undefined: ``pooling="tokens"`` on inputs that are not token ids
    or an (N, T, d) tensor.
    """
    sources = [_source(x) for x in input_sets]
    masks = [_attention_mask(x) for x in input_sets]
    if all(not s.is_floating_point() for s in sources):
        return _token_rows(sources, masks, pooling, max_dim, seed)
    if any(not s.is_floating_point() for s in sources):
        raise TypeError("inputs and heldout inputs must both be token ids or both be features")
    if pooling == "tokens" and any(s.dim() != 3 for s in sources):
        return None
    out = []
    for source in sources:
        if pooling == "tokens":
            mask = torch.ones(source.shape[:2], dtype=torch.bool)
            rows, example = source[mask].float(), mask.nonzero(as_tuple=True)[0]
        else:
            rows, example = source.flatten(1).float(), torch.arange(len(source))
        out.append((rows, example))
    every = torch.cat([r for r, _ in out])
    types = _unique_ids(every)
    projected = _project(every, max_dim, seed)
    result, start = [], 0
    for rows, example in out:
        stop = start + len(rows)
        result.append(InputRows({INPUT: projected[start:stop]}, example, types[start:stop]))
        start = stop
    return result


def _token_rows(ids_sets: list[torch.Tensor], masks: list[torch.Tensor | None], pooling: str,
                max_dim: int, seed: int) -> list[InputRows]:
    ids_sets = [ids.reshape(len(ids), -1).long() for ids in ids_sets]
    masks = [torch.ones_like(ids, dtype=torch.bool) if m is None else m.bool()
             for ids, m in zip(ids_sets, masks)]
    vocab = torch.unique(torch.cat([ids[m] for ids, m in zip(ids_sets, masks)]))
    table = _project(torch.eye(len(vocab)), max_dim, seed)
    result = []
    for ids, mask in zip(ids_sets, masks):
        cols = torch.searchsorted(vocab, ids.clamp(min=int(vocab[0]), max=int(vocab[-1])))
        if pooling == "mean":
            counts = torch.zeros(len(ids), len(vocab)).index_put_(
                (torch.arange(len(ids)).unsqueeze(1).expand_as(ids)[mask], cols[mask]),
                torch.ones(int(mask.sum())), accumulate=True)
            feats = (counts / mask.sum(1, keepdim=True).clamp_min(1)) @ table
        else:
            feats, _ = _pool_positions(table[cols], mask, pooling)
        if pooling == "tokens":
            example = mask.nonzero(as_tuple=True)[0]
            types = ids[mask]
        else:
            example = torch.arange(len(ids))
            types = _unique_ids(torch.where(mask, ids, -1))
        result.append(InputRows({INPUT: feats}, example, types))
    return result


def _project(x: torch.Tensor, max_dim: int, seed: int) -> torch.Tensor:
    if x.shape[1] <= max_dim:
        return x
    gen = torch.Generator().manual_seed(seed)
    out = torch.zeros(x.shape[0], max_dim)
    for start in range(0, x.shape[1], max_dim):  # stream the projection: it can be huge
        block = x[:, start:start + max_dim]
        out += block @ torch.randn(block.shape[1], max_dim, generator=gen)
    return out / max_dim ** 0.5


def _unique_ids(rows: torch.Tensor) -> torch.Tensor:
    return torch.unique(rows.reshape(len(rows), -1), dim=0, return_inverse=True)[1]


def _source(inputs: Any) -> torch.Tensor:
    """The tensor that holds the examples: ``input_ids``, else the first tensor given."""
    if isinstance(inputs, torch.Tensor):
        return inputs
    if isinstance(inputs, Mapping):
        if "input_ids" in inputs:
            return inputs["input_ids"]
        values = list(inputs.values())
    elif isinstance(inputs, (tuple, list)):
        values = list(inputs)
    else:
        values = []
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    if not tensors:
        raise TypeError(f"inputs of type {type(inputs).__name__} hold no tensor: pass a tensor, a "
                        "dict of tensors (e.g. a tokenizer's output) or a tuple of tensors")
    return tensors[0]


def _attention_mask(inputs: Any) -> torch.Tensor | None:
    if isinstance(inputs, Mapping) and isinstance(inputs.get("attention_mask"), torch.Tensor):
        return inputs["attention_mask"].bool().cpu()
    return None
