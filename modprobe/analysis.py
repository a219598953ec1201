"""The whole analysis of one model on one compositional task, resumable stage by stage.

Stages: (1) fit the model on the composite task, (2) one subnetwork per subroutine, (3) ablations
against size-matched random controls, (4) constituent probes, (5) ``results.json`` and
``report.html``. Each stage's output is written atomically under ``out/``; a rerun with the same
``out/`` and the same configuration loads finished stages instead of recomputing them.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

from safetensors.torch import load_file, save_file

from . import _io, ablation, probes, pruning, tasks
from ._results import format_table
from .fitting import FitConfig, FitResult, Readout, competence, fit, reading_model
from .models import HookedModel, load_model
from .report import write_report
from .subroutine import Subroutine

SCHEMA_VERSION = 1
_WEAK_FIT = 0.8  # a composite-task metric below this gets a caution in the verdict


@dataclass(frozen=True)
class AnalysisConfig:
    """Everything that decides an analysis' numbers (it is part of the resume fingerprint).

    ``mask_params``: glob patterns of the tensors to mask (None: the pruning default, every
    weight matrix). ``mask_lambda``: the sparsity penalty; a tuple is a grid, and the sparsest
    mask whose keep-only metric on the validation split stays within tolerance of the full
    model's wins (one λ does not carry across model sizes: λ = 1 suits small MLPs, MiniLM needs
    about 300). ``validation_fraction``: the share of each subroutine's training data held
    out to choose among those settings (0: the pruning default, 20% for a grid); the split is
    the same for every ``seed``, like the task's own train/test split, so that seeds vary only
    the training.
    ``n_random``: random controls per subnetwork; with 2 subnetworks x 2 tasks at least 80 are
    needed before Holm-corrected empirical p-values can fall below 0.05.
    ``fit``: a :class:`FitConfig`, or just its mode: ``"finetune"``, ``"head"`` or ``"as_is"``.
    """

    seed: int = 0
    fit: FitConfig = FitConfig()
    mask_params: tuple[str, ...] | None = None
    mask_epochs: int = 20
    mask_lambda: float | tuple[float, ...] = (1.0, 10.0, 100.0, 1000.0)
    n_random: int = 100
    complement: bool = True
    strategy: str = "zero"
    probe_cv: int = 5
    probe_hooks: tuple[str, ...] | None = None
    validation_fraction: float = 0.25
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.fit, str):
            object.__setattr__(self, "fit", FitConfig(mode=self.fit, seed=self.seed))

    @classmethod
    def quick(cls, seed: int = 0, **overrides: Any) -> "AnalysisConfig":
        """Small settings for demos and smoke runs (minutes on a laptop CPU)."""
        settings: dict[str, Any] = dict(seed=seed, fit=FitConfig(epochs=4, seed=seed),
                                        mask_epochs=12, mask_lambda=(1.0, 300.0),
                                        n_random=80, complement=False,
                                        probe_cv=3)
        settings.update(overrides)
        return cls(**settings)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass
class Analysis:
    """What :func:`analyze` found; ``results`` is exactly what ``results.json`` holds."""

    results: dict[str, Any]
    subnetworks: dict[str, Any] = field(repr=False)
    out: Path | None = None

    @property
    def verdict(self) -> str:
        return self.results["verdict"]["text"]

    @property
    def scalars(self) -> dict[str, float | None]:
        return self.results["scalars"]

    def summary(self) -> str:
        """The verdict, its evidence as a terminal table, and where the report is."""
        evidence = self.results["verdict"]["evidence"]
        lines = [self.verdict] + (["", format_table(evidence)] if evidence else [])
        if self.out is not None:
            lines += ["", f"report: {self.out / 'report.html'}"]
        return "\n".join(lines)


def analyze(model: Any, task: Any, out: str | Path | None = None,
            config: AnalysisConfig | None = None, *, label: str = "model") -> Analysis:
    """Run the five stages on ``model`` (a spec, module or HookedModel) and ``task``.

    ``task`` is a :class:`modprobe.tasks.Task` or a family name (built with ``seed``).
    ``label`` names the model in the report rows (the comparison uses "pretrained" and
    "random_init"). With ``out``, every stage is saved and a rerun resumes.
    """
    config = config or AnalysisConfig()
    hm = load_model(model)
    if isinstance(task, str):
        task = tasks.load(task, seed=config.seed, model=hm)
    tasks.check_model(task, hm)
    mask_config = pruning.MaskConfig(params=config.mask_params, epochs=config.mask_epochs,
                                     l0_lambda=config.mask_lambda, seed=config.seed)
    store = (_Store(Path(out), _fingerprint(hm, task, config, mask_config, label))
             if out is not None else None)

    fitted, readout, fit_result = _fit_stage(hm, task, config, store)

    def with_head(sub: Subroutine) -> Subroutine:
        """The fitted head reads every subroutine, unless the task gave it its own readout."""
        if readout is None or sub.readout is not None:
            return sub
        return dataclasses.replace(sub, readout=readout)

    train = {name: with_head(split.train) for name, split in task.subroutines.items()}
    validation = {}
    if config.validation_fraction > 0:
        for name, sub in train.items():
            train[name], validation[name] = sub.holdout(config.validation_fraction)
    subnetworks = _cached(store, "masks", lambda: pruning.train_subnetworks(
        fitted, train, mask_config, validation=validation, progress=config.progress),
        save=lambda subs, d: [s.save(d / n) for n, s in subs.items()],
        load=lambda d: {p.name: pruning.Subnetwork.load(p)
                        for p in sorted(d.iterdir()) if p.is_dir()})

    tests = {name: with_head(split.test) for name, split in task.subroutines.items()}
    ablation_report = _cached(store, "ablation.json", lambda: ablation.run(
        fitted, subnetworks, tests, n_random=config.n_random, seed=config.seed,
        strategy=config.strategy, complement=config.complement, label=label,
        progress=config.progress),
        save=lambda rep, p: _io.write_json(p, rep.to_dict()),
        load=lambda p: ablation.AblationReport.from_dict(json.loads(p.read_text())))

    probe_report = _cached(store, "probes.json", lambda: probes.decodability(
        fitted, task.constituents, hooks=config.probe_hooks, cv=config.probe_cv,
        seed=config.seed, heldout=task.heldout_constituents, condition=label,
        progress=config.progress),
        save=lambda rep, p: _io.write_json(p, rep.to_dict()),
        load=lambda p: probes.ProbeReport.from_dict(json.loads(p.read_text())))

    results = _results(hm, task, config, label, fit_result, subnetworks, ablation_report,
                       probe_report)
    analysis = Analysis(results, subnetworks, Path(out) if out is not None else None)
    if store is not None:
        _io.write_json(store.root / "results.json", results)
        write_report(results, store.root / "report.html")
    return analysis


# ----------------------------------------------------------------------------- stages
def _fit_stage(hm: HookedModel, task: Any, config: AnalysisConfig, store: "_Store | None"
               ) -> tuple[HookedModel, Readout | None, FitResult]:
    """Stage 1, or its saved result: the head (and fine-tuned backbone) from ``out/model``."""
    n_outputs = task.n_classes or int(task.composite.train.targets().shape[-1])
    if store is not None and store.done("fit.json"):
        saved = json.loads(store.path("fit.json").read_text())
        result = FitResult(**saved["result"])
        fitted, readout = reading_model(hm, result), None
        if result.finetuned:
            fitted = fitted.with_module(copy.deepcopy(hm.module))
            _load_parameters(fitted, store.root / "model" / "backbone.safetensors")
        if saved["readout"] is not None:
            readout = Readout(**saved["readout"])
            _load_parameters(readout, store.root / "model" / "head.safetensors")
            readout.to(fitted.device).eval().requires_grad_(False)
        return fitted, readout, result
    fit_config = dataclasses.replace(config.fit, seed=config.seed, progress=config.progress)
    fitted, readout, result = fit(hm, task.composite.train, task.composite.test, n_outputs,
                                  fit_config, heldout=task.heldout)
    if store is not None:
        if result.finetuned:
            _save_parameters(fitted.module, store.root / "model" / "backbone.safetensors")
        head = None
        if readout is not None:
            _save_parameters(readout, store.root / "model" / "head.safetensors")
            head = dict(d_in=readout.linear.in_features, n_out=readout.linear.out_features,
                        pooling=readout.pooling, n_positions=readout.n_positions)
        _io.write_json(store.path("fit.json"), {"result": result.to_dict(), "readout": head})
    return fitted, readout, result


def _cached(store: "_Store | None", name: str, compute: Callable[[], Any],
            save: Callable[[Any, Path], Any], load: Callable[[Path], Any]) -> Any:
    """Load stage ``name`` when a previous run finished it, else compute and save it."""
    if store is not None and store.done(name):
        return load(store.path(name))
    value = compute()
    if store is not None:
        store.finish(name, value, save)
    return value


# ----------------------------------------------------------------------------- results
def _results(hm: HookedModel, task: Any, config: AnalysisConfig, label: str, fit_result: FitResult,
             subnetworks: dict[str, Any], ablation_report: Any, probe_report: Any) -> dict[str, Any]:
    subs = {name: {"density": s.density, "densities": s.densities, "metrics": s.metrics,
                   "history": s.history, "notes": list(getattr(s, "notes", []))}
            for name, s in subnetworks.items()}
    isolation = _isolation_scalar(ablation_report.isolation)
    decod = probe_report.decodability_of(label) if probe_report.rows else None
    scalars = {"task_metric": fit_result.test,
               "density": sum(s.density for s in subnetworks.values()) / len(subnetworks),
               "isolation": isolation, "decodability": decod}
    return {
        "schema_version": SCHEMA_VERSION, "kind": "analysis", "label": label,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(), "config": config.to_dict(),
        "model": {"description": repr(hm), "bridge": hm.is_bridge, "output": hm.output},
        "task": {"name": task.name, "description": task.describe(), "options": task.options,
                 "n_classes": task.n_classes},
        "fit": fit_result.to_dict(), "subnetworks": subs,
        "ablation": ablation_report.to_dict(), "probes": probe_report.to_dict(),
        "scalars": scalars,
        "verdict": _verdict(ablation_report.isolation, probe_report, label, fit_result,
                            task.competence_threshold),
    }


def _isolation_scalar(isolation: list[dict[str, Any]]) -> float | None:
    """Mean over subnetworks of (effect on its own subroutine - mean effect on the others).

    ``effect`` = mean random-control metric - metric after ablating the subnetwork, so a
    positive value means selective damage beyond size-matched random ablations.
    """
    values = []
    for entry in isolation:
        if entry.get("effect_target") is None or not entry.get("others"):
            continue
        others = [o["effect"] for o in entry["others"]]
        values.append(entry["effect_target"] - sum(others) / len(others))
    return sum(values) / len(values) if values else None


def _verdict(isolation: list[dict[str, Any]], probe_report: Any, label: str,
             fit_result: FitResult, threshold: float) -> dict[str, Any]:
    gate = competence(fit_result, threshold=threshold)
    if not gate["competent"]:
        return {"text": gate["text"], "isolated": {e["subnetwork"]: None for e in isolation},
                "evidence": [], "competence": gate}
    judged = [e for e in isolation if e["isolated"] is not None]
    isolated = [e["subnetwork"] for e in judged if e["isolated"]]
    if not judged:
        head = "No subnetwork could be judged (each needs its own and another eval task)."
    elif len(isolated) == len(judged):
        head = (f"Modular: all {len(judged)} subnetworks are functionally isolated (ablating each "
                "hurts its own subroutine beyond size-matched random ablations and no other).")
    elif isolated:
        head = (f"Partly modular: {len(isolated)} of {len(judged)} subnetworks are isolated "
                f"({', '.join(isolated)}).")
    else:
        head = (f"Not modular: none of the {len(judged)} subnetworks is isolated from the other "
                "subroutines.")
    text = (f"{head} The fitted model scores {fit_result.test:.3f} ({fit_result.metric}) on the "
            "composite task's test data.")
    if fit_result.test < _WEAK_FIT:
        text += (" Caution: the model does not solve the composite task well, so its subnetworks "
                 "say little about how a working solution is organised.")
    if probe_report.rows:
        best = list(probe_report.best_layers(label).items())
        shown = ", ".join(f"{c} at {h}" for c, h in best[:6])
        more = f" and {len(best) - 6} more" if len(best) > 6 else ""
        text += (f" Constituent decodability (best layer's selectivity, mean over constituents): "
                 f"{probe_report.decodability_of(label):.3f}; best layers: {shown}{more}.")
    evidence = [{"subnetwork": e["subnetwork"], "target": e["target_task"],
                 "isolated": e["isolated"], "effect_on_target": e["effect_target"],
                 "p_holm": e["p_target_holm"], "reason": e["reason"]} for e in isolation]
    return {"text": text, "isolated": {e["subnetwork"]: e["isolated"] for e in isolation},
            "evidence": evidence, "competence": gate}


def package_versions() -> dict[str, str]:
    import transformers

    from . import __version__

    out = {"modprobe": __version__, "python": platform.python_version(),
           "torch": torch.__version__, "transformers": transformers.__version__}
    try:
        from importlib.metadata import version

        out["transformer_lens"] = version("transformer-lens")
    except Exception:  # not installed: nothing to report
        pass
    return out


# ----------------------------------------------------------------------------- storage
class _Store:
    """The ``out/`` directory: a fingerprint guards against resuming a different run."""

    def __init__(self, root: Path, fingerprint: str):
        self.root = root
        (root / "stages").mkdir(parents=True, exist_ok=True)
        run = root / "run.json"
        if run.exists():
            saved = json.loads(run.read_text()).get("fingerprint")
            if saved != fingerprint:
                raise ValueError(f"{root} holds a run with another model, task or configuration; "
                                 "pass a new out= directory (or delete this one) to start afresh")
        else:
            _io.write_json(run, {"fingerprint": fingerprint})

    def path(self, name: str) -> Path:
        return self.root / ("masks" if name == "masks" else f"stages/{name}")

    def done(self, name: str) -> bool:
        return (self.root / "stages" / f"{name}.done").exists() or (
            name.endswith(".json") and self.path(name).exists())

    def finish(self, name: str, value: Any, save: Callable[[Any, Path], Any]) -> None:
        """Save a stage, then mark it done (a crash between the two just redoes the stage)."""
        target = self.path(name)
        if name == "masks":
            import shutil

            tmp = self.root / ".masks.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save(value, tmp)
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
            _io.write_text(self.root / "stages" / "masks.done", "")
        else:
            save(value, target)


def _fingerprint(hm: HookedModel, task: Any, config: AnalysisConfig,
                 mask_config: pruning.MaskConfig, label: str) -> str:
    """Model, task and every setting, including the pruning defaults the config leaves open."""
    with torch.no_grad():
        checksum = sum(float(p.double().sum()) for p in hm.module.parameters())
    blob = json.dumps({"config": config.to_dict(), "mask": mask_config.to_dict(),
                       "task": task.name, "options": task.options,
                       "model": repr(hm), "checksum": round(checksum, 6), "label": label},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _save_parameters(module: torch.nn.Module, path: Path) -> None:
    tensors = {n: p.detach().cpu().contiguous() for n, p in module.named_parameters()}
    _io.atomic_write(path, lambda tmp: save_file(tensors, tmp))


def _load_parameters(target: Any, path: Path) -> None:
    module = target.module if isinstance(target, HookedModel) else target
    live = dict(module.named_parameters())
    with torch.no_grad():
        for name, tensor in load_file(str(path)).items():
            live[name].copy_(tensor.to(live[name].device))
