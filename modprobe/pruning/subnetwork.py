"""A learned subnetwork: binary masks over a model's weights plus how and how well it was found."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._io import atomic_write, write_json
from .config import MaskConfig

_FORMAT = 2
_READABLE = (1, 2)  # format 1: no necessity fields
_TENSORS, _META = "masks.safetensors", "subnetwork.json"


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
            "format": _FORMAT, "name": self.name, "config": self.config.to_dict(),
            "metrics": self.metrics, "history": self.history, "notes": self.notes,
            "selection": self.selection, "order": list(self.masks),
            "has_units": self.units is not None, "has_necessary": self.necessary is not None,
            "has_necessary_units": self.necessary_units is not None,
            "necessity": self.necessity})
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "Subnetwork":
        """Read a subnetwork written by :meth:`save`."""
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / _META).exists() or not (directory / _TENSORS).exists():
            raise FileNotFoundError(f"{directory} holds no saved Subnetwork (expected {_META} and "
                                    f"{_TENSORS}, written by Subnetwork.save)")
        meta = json.loads((directory / _META).read_text(encoding="utf-8"))
        if meta.get("format") not in _READABLE:
            raise ValueError(f"{directory / _META} has format {meta.get('format')}; this modprobe "
                             f"reads formats {_READABLE}: upgrade modprobe to read newer files")
        tensors = load_file(str(directory / _TENSORS))
        order = meta["order"]

        def group(prefix: str, flag: str) -> dict[str, torch.Tensor] | None:
            return {n: tensors[f"{prefix}/{n}"] for n in order} if meta.get(flag) else None

        return cls(name=meta["name"], masks=group("mask", "format"),
                   config=MaskConfig.from_dict({"necessity": "none", **meta["config"]}
                                               if meta["format"] == 1 else meta["config"]),
                   metrics=meta["metrics"],
                   history=meta["history"], units=group("unit", "has_units"),
                   notes=meta["notes"], selection=meta["selection"],
                   necessary=group("necessary", "has_necessary"),
                   necessary_units=group("necessary_unit", "has_necessary_units"),
                   necessity=meta.get("necessity", {}))
