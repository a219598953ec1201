"""A learned subnetwork: binary masks over a model's weights plus how and how well it was found."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._io import atomic_write, write_json
from .._validate import device_problem, read_json, read_tensors
from .config import MaskConfig
from .layout import Slot

_FORMAT = 3
_READABLE = (1, 2, 3)  # format 1: no necessity fields; 1 and 2: no unit layout
_TENSORS, _META = "masks.safetensors", "subnetwork.json"
_REQUIRED = ("name", "config", "metrics", "history", "notes", "selection", "order", "has_units")


@dataclass
class Subnetwork:
    """Binary masks for one subroutine.

    ``masks``: ``{parameter name (HookedModel.param_names): bool tensor of that parameter's
    shape}``, True = kept; neuron and head masks are expanded to the weight's shape and also given
    per unit in ``units``. ``metrics``: the hard-masked ("keep only") metric on the training data
    and on validation data when given, beside the full model's. ``history``: one dict per epoch.
    ``notes``: what the search decided on its own (e.g. tensors dropped as unused).
    ``selection``: one row per grid point tried when hyperparameters were searched.
    ``necessary``: the union of peeled sufficient subnetworks (``MaskConfig(necessity="peel")``),
    the set an ablation removes to test necessity, with per-unit masks in ``necessary_units``;
    ``None`` when only the sufficient subnetwork was searched. ``necessity``: how the peeling
    went (``rounds``, ``broken``: whether the remainder stopped performing the subroutine,
    ``level``: the metric it had to fall to, ``data``: what it was scored on).
    ``layout``: ``{parameter name: Slot}``, the unit axis and block of every masked tensor
    (see :mod:`modprobe.pruning.layout`); ``None`` for masks saved before it was recorded.
    """

    name: str
    masks: dict[str, torch.Tensor]
    config: MaskConfig
    metrics: dict[str, float]
    history: list[dict]
    units: dict[str, torch.Tensor] | None = None
    notes: list[str] = field(default_factory=list)
    selection: list[dict] = field(default_factory=list)
    necessary: dict[str, torch.Tensor] | None = None
    necessary_units: dict[str, torch.Tensor] | None = None
    necessity: dict = field(default_factory=dict)
    layout: dict[str, Slot] | None = None

    @property
    def density(self) -> float:
        """Fraction of all masked entries that are kept."""
        kept = sum(int(m.sum()) for m in self.masks.values())
        total = sum(m.numel() for m in self.masks.values())
        return kept / total if total else 0.0

    @property
    def necessary_density(self) -> float | None:
        """Fraction of all masked entries in the necessary set (None when none was searched)."""
        if self.necessary is None:
            return None
        total = sum(m.numel() for m in self.necessary.values())
        return sum(int(m.sum()) for m in self.necessary.values()) / total if total else 0.0

    @property
    def densities(self) -> dict[str, float]:
        """Fraction kept per masked tensor."""
        return {n: float(m.float().mean()) for n, m in self.masks.items()}

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v:.3f}" for k, v in self.metrics.items())
        return (f"Subnetwork({self.name!r}, {len(self.masks)} tensors, density={self.density:.4f}, "
                f"{shown})")

    def save(self, directory: str | Path) -> Path:
        """Write ``masks.safetensors`` and ``subnetwork.json`` (each atomically) into ``directory``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        tensors = {f"mask/{n}": m.detach().cpu().contiguous() for n, m in self.masks.items()}
        for prefix, group in (("unit", self.units), ("necessary", self.necessary),
                              ("necessary_unit", self.necessary_units)):
            tensors.update({f"{prefix}/{n}": t.detach().cpu().contiguous()
                            for n, t in (group or {}).items()})
        atomic_write(directory / _TENSORS, lambda tmp: save_file(tensors, tmp))
        write_json(directory / _META, {
            "schema_version": _FORMAT, "kind": "subnetwork", "name": self.name,
            "config": self.config.to_dict(),
            "metrics": self.metrics, "history": self.history, "notes": self.notes,
            "selection": self.selection, "order": list(self.masks),
            "has_units": self.units is not None, "has_necessary": self.necessary is not None,
            "has_necessary_units": self.necessary_units is not None,
            "necessity": self.necessity,
            "layout": None if self.layout is None else {n: s.to_dict()
                                                        for n, s in self.layout.items()}})
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "Subnetwork":
        """Read a subnetwork written by :meth:`save`; a file that is truncated, lacks keys or holds
        non-boolean masks is refused with its path."""
        directory = Path(directory)
        if not (directory / _META).exists() or not (directory / _TENSORS).exists():
            raise FileNotFoundError(f"{directory} holds no saved Subnetwork (expected {_META} and "
                                    f"{_TENSORS}, written by Subnetwork.save)")
        path = directory / _META
        meta = read_json(path, kind=("subnetwork", None), versioned=False, required=_REQUIRED)
        version = meta.get("schema_version", meta.get("format"))
        if version not in _READABLE:
            raise ValueError(f"{path} has schema_version {version!r}, but this modprobe reads "
                             f"versions {_READABLE}: upgrade modprobe to read newer files")
        tensors = read_tensors(directory / _TENSORS)
        order = meta["order"]
        if not isinstance(order, list):
            raise ValueError(f"{path}: 'order' must list the masked parameter names")
        groups = [("mask", True), ("unit", meta["has_units"]),
                  ("necessary", meta.get("has_necessary")),
                  ("necessary_unit", meta.get("has_necessary_units"))]
        keys = [f"{kind}/{n}" for kind, present in groups if present for n in order]
        missing = [k for k in keys if k not in tensors]
        if missing:
            raise ValueError(f"{directory / _TENSORS} lacks the tensors {missing[:5]} that {path} "
                             "lists; the two files come from different saves: save again")
        not_bool = [k for k in keys if tensors[k].dtype != torch.bool]
        if not_bool:
            raise ValueError(f"{directory / _TENSORS} holds non-boolean masks {not_bool[:5]} "
                             f"(dtype {tensors[not_bool[0]].dtype}); masks are bool tensors, "
                             "True = kept: convert with mask > 0.5 and save again")
        try:
            saved = dict(meta["config"])
            if version == 1:  # written before necessity searches existed
                saved.setdefault("necessity", "none")
            if device_problem(saved.get("device")):  # trained on a device this machine lacks
                saved["device"] = None
            config = MaskConfig.from_dict(saved)
        except (TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"{path} holds an invalid mask config: {err}") from None

        def group(prefix: str, present: bool) -> dict[str, torch.Tensor] | None:
            return {n: tensors[f"{prefix}/{n}"] for n in order} if present else None

        masks = group("mask", True)
        try:
            layout = None if meta.get("layout") is None else {
                n: Slot(n, tuple(masks[n].shape), meta["layout"][n]["axis"],
                        meta["layout"][n]["block"]) for n in order}
        except (KeyError, TypeError) as err:
            raise ValueError(f"{path} holds an incomplete unit layout ({err}); save again") from None
        return cls(name=meta["name"], masks=masks, config=config, layout=layout,
                   metrics=meta["metrics"], history=meta["history"],
                   units=group("unit", meta["has_units"]), notes=meta["notes"],
                   selection=meta["selection"],
                   necessary=group("necessary", meta.get("has_necessary")),
                   necessary_units=group("necessary_unit", meta.get("has_necessary_units")),
                   necessity=meta.get("necessity", {}))
