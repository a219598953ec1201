"""The ``modprobe`` command line: analyze, compare, report, demo."""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import sys
from pathlib import Path
from typing import Any

from .ablation import STRATEGIES
from .probes import POOLINGS, RENAMED_VALUES, measures
from .pruning import methods
from .pruning.layout import GRANULARITIES

log = logging.getLogger(__name__)

_EXAMPLES = """examples:
  modprobe demo                                            # MiniLM vs random init, language task
  modprobe analyze --model minilm --task language --out runs/x --quick
  modprobe analyze --model path/to/hf_dir --task language --out runs/hf   # its own tokenizer
  modprobe analyze --model-factory mypkg.models:build --task hyperteacher --fit as_is --out runs/a
  modprobe analyze --model-factory mypkg.models:build --task vision --out runs/mine
  modprobe analyze --model minilm --task language --out runs/hc --mask-method hard_concrete --granularity neuron --strategy mean
  modprobe compare --model minilm --task language --seeds 0 1 2 --out runs/cmp
  modprobe report runs/x                                   # re-render runs/x/report.html
  modprobe sweep examples/scaling.toml --out runs/scaling --quick   # a study of many analyses
  modprobe sweep study.toml --out runs/s --backend ray --address auto
  modprobe sweep report runs/scaling                       # re-render the sweep's tables and report
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modprobe", description="Modularity analysis of neural networks: one subnetwork per "
        "subroutine, ablations against random controls, constituent probes.",
        epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback when a command fails")
    _loudness(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser, model_required: bool = True) -> None:
        which = p.add_mutually_exclusive_group(required=model_required)
        which.add_argument("--model", help='"minilm", a local HuggingFace directory')
        which.add_argument("--model-factory", metavar="MODULE:FUNCTION",
                           help="import MODULE and call FUNCTION() for an nn.Module")
        p.add_argument("--task", required=True, help="task family: hyperteacher, language, "
                       "symbolic, vision")
        p.add_argument("--out", required=True, type=Path, help="output directory (resumes)")
        p.add_argument("--seed", type=int, default=0, help="every stage's seed (default 0)")
        p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default cpu)")
        p.add_argument("--quick", action="store_true", help="small settings: minutes on a CPU")
        p.add_argument("--n-random", type=int, default=None, help="random controls per "
                       "subnetwork (default 100; --quick 80)")
        p.add_argument("--strategy", choices=STRATEGIES, default=None,
                       help="what ablated weights become: zero (default), random (the weights of "
                       "a re-initialised copy) or mean (a neuron's mean activation; needs whole "
                       "output units, e.g. --granularity neuron)")
        p.add_argument("--mask-method", choices=methods.names(), default=None,
                       help="how subnetworks are searched: continuous (default: continuous "
                       "sparsification), hard_concrete (L0 gates) or magnitude (top |w|, no "
                       "training)")
        p.add_argument("--granularity", choices=GRANULARITIES, default=None,
                       help="one mask entry per weight (default), output neuron or attention head")
        p.add_argument("--mask-params", nargs="+", default=None, metavar="GLOB",
                       help="parameters to mask, e.g. 'blocks.*.mlp.*.weight'")
        p.add_argument("--l0-lambda", nargs="+", type=float, default=None, metavar="LAMBDA",
                       help="weight of the masks' sparsity penalty (MaskConfig.l0_lambda); "
                       "several values are a grid searched on held-out data (default 1 10 100 "
                       "1000; --quick 1 300)")
        p.add_argument("--mask-lambda", nargs="+", type=float, default=None,
                       help=argparse.SUPPRESS)  # the old name of --l0-lambda
        p.add_argument("--mask-epochs", type=int, default=None,
                       help="epochs of each mask search (default 20; --quick 12)")
        p.add_argument("--necessity", choices=("peel", "none"), default=None,
                       help="peel (default): before ablating, find every weight a subroutine can "
                       "run on by repeating the search on what is left; none: ablate the "
                       "sufficient subnetwork only")
        p.add_argument("--max-rounds", type=int, default=None,
                       help="most subnetworks the necessity search peels (default 8)")
        p.add_argument("--probe-measure", nargs="+", default=None, metavar="MEASURE",
                       choices=measures.names() + tuple(_RENAMED_VALUES["probe_measure"]),
                       help="what the probes report, among " + ", ".join(measures.names())
                       + ": score (accuracy, or R² for continuous constituents; always "
                       "reported), mdl (online codelength) or a measure registered with "
                       "modprobe.probes.measures.register (default: score and mdl)")
        p.add_argument("--probe-pooling", default=None,
                       choices=POOLINGS + tuple(_RENAMED_VALUES["probe_pooling"]),
                       metavar="{" + ",".join(POOLINGS) + "}",
                       help="how a sequence becomes the probes' rows: mean (default), first, "
                       "last, or tokens (every position its own row)")
        p.add_argument("--probe-hooks", nargs="+", default=None, metavar="HOOK",
                       help="hook points to probe (default: every block's output)")
        p.add_argument("--fit", choices=("finetune", "head", "as_is"), default=None,
                       help="stage 1: finetune (default: a head and a fine-tuned copy), head (a "
                       "head on the frozen model), as_is (the model exactly as it is)")

    analyze = sub.add_parser("analyze", help="analyse one model on one task",
                             formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EXAMPLES)
    common(analyze)
    compare = sub.add_parser("compare", help="pretrained model vs random-init twins across seeds",
                             formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EXAMPLES)
    common(compare)
    compare.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    compare.add_argument("--scratch-epochs", type=int, default=None,
                         help="most epochs a random-init twin trains from scratch (default 40; "
                         "it stops once its held-out share reaches --scratch-stop-at)")
    compare.add_argument("--scratch-lr", type=float, default=None,
                         help="the twin's learning rate, after warm-up, with cosine decay "
                         "(default 3e-4)")
    compare.add_argument("--scratch-stop-at", type=float, default=None,
                         help="stop training a twin once 10%% of its training data held out "
                         "score this (default 0.98)")
    compare.add_argument("--analyze-unlearned", action="store_true",
                         help="run every stage on an arm that did not learn the task too "
                         "(default: its analysis stops after the fit, since the comparison "
                         "leaves it out)")
    report = sub.add_parser("report", help="re-render report.html from a run's results.json")
    report.add_argument("run", type=Path, help="a directory holding results.json")
    demo = sub.add_parser("demo", help="the bundled MiniLM vs its random-init twin (minutes)")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"))
    demo.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                      help="more seeds give a confidence interval (each adds two analyses)")
    sweep = sub.add_parser("sweep", help="run a study of many analyses (grid over models, "
                           "tasks, seeds, settings), or `sweep report DIR`",
                           usage="modprobe sweep STUDY.toml [options]\n       "
                           "modprobe sweep report DIR",
                           formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EXAMPLES)
    sweep.add_argument("target", nargs="+", metavar="STUDY.toml",
                       help="the study (TOML), or `report DIR` to rewrite a sweep's tables and "
                       "report from its cells")
    sweep.add_argument("--out", type=Path, default=None, help="sweep directory (default "
                       "runs/<study name>); finished cells are skipped, unfinished ones resume")
    sweep.add_argument("--quick", action="store_true", help="the study's [quick] settings")
    sweep.add_argument("--backend", choices=["local", "ray"], default="local")
    sweep.add_argument("--address", default=None, help="Ray cluster: auto or ray://host:10001 "
                       "(default: start a local Ray instance)")
    sweep.add_argument("--workers", type=int, default=None, help="local worker processes "
                       "(default: CPU count // threads)")
    sweep.add_argument("--threads", type=int, default=1, help="torch threads per cell")
    sweep.add_argument("--max-retries", type=int, default=3, help="retries of a cell whose "
                       "worker died")
    sweep.add_argument("--gpus-per-cell", type=float, default=None, help="Ray: GPUs per cell "
                       "(default: 1 when the cluster has GPUs, else 0)")
    sweep.add_argument("--device", default=None, help="cpu, cuda ... (default: CUDA if present)")
    for p in (analyze, compare, report, demo, sweep):
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback when the command fails")
        _loudness(p, default=argparse.SUPPRESS)
    return parser


def _loudness(parser: argparse.ArgumentParser, default: Any = False) -> None:
    """``--quiet`` and ``--verbose``, accepted before or after the command."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="no progress bars and no log messages below warnings; the result "
                       "summary is still printed")
    group.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="log each stage as it starts, finishes or resumes (logging, INFO)")


def _logging(args: argparse.Namespace) -> None:
    """The ``modprobe`` loggers' level for this command: WARNING, ERROR with --quiet, INFO with
    --verbose (messages go to stderr)."""
    logger = logging.getLogger("modprobe")
    for old in [h for h in logger.handlers if h.get_name() == "modprobe-cli"]:
        logger.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name("modprobe-cli")
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.ERROR if args.quiet else logging.INFO if args.verbose
                    else logging.WARNING)


def _sweep(args: argparse.Namespace) -> int:
    from .sweeps import SweepError, load_study, sweep

    if args.target[0] == "report":
        from .sweeps import write_tables
        from .sweeps.report import write_sweep_report

        if len(args.target) != 2:
            raise SystemExit("usage: modprobe sweep report DIR")
        try:
            write_tables(args.target[1])
            print(f"report: {write_sweep_report(args.target[1])}")
        except FileNotFoundError as err:
            raise SystemExit(str(err)) from err
        return 0
    if len(args.target) != 1:
        raise SystemExit(f"give one study file (or `report DIR`), got {args.target}")
    try:
        study = load_study(args.target[0], quick=args.quick)
        out = args.out or Path("runs") / (study.name + ("_quick" if args.quick else ""))
        result = sweep(study, out, backend=args.backend, workers=args.workers,
                       address=args.address, threads=args.threads,
                       max_retries=args.max_retries, gpus_per_cell=args.gpus_per_cell,
                       device=args.device)
    except (ValueError, TypeError, FileNotFoundError, ImportError, SweepError) as err:
        raise SystemExit(str(err)) from err
    print(result.summary())
    return 0


def _load(args: argparse.Namespace) -> Any:
    from ._validate import device
    from .models import load_model, wrap

    device(args.device)
    if args.model_factory:
        module_name, _, function = args.model_factory.partition(":")
        if not function:
            raise SystemExit(f"--model-factory needs MODULE:FUNCTION, got {args.model_factory!r}")
        try:
            factory = getattr(importlib.import_module(module_name), function)
        except (ImportError, AttributeError) as err:
            raise SystemExit(f"cannot import {args.model_factory!r}: {err}") from err
        model = wrap(factory())
        if args.device:
            model.module.to(args.device)
        return model
    try:
        return load_model(args.model, device=args.device)
    except (ValueError, TypeError, ImportError) as err:
        raise SystemExit(str(err)) from err


# Command-line options that set an AnalysisConfig shorthand: {option dest: shorthand}.
_SHORTHAND_OPTIONS = {"n_random": "n_random", "strategy": "strategy", "mask_method": "mask_method",
                      "granularity": "granularity", "mask_params": "mask_params",
                      "l0_lambda": "l0_lambda", "mask_epochs": "mask_epochs",
                      "necessity": "necessity", "max_rounds": "max_rounds",
                      "probe_measure": "probe_measure"}


# Old option values still accepted, each with a warning naming its new name:
# {option dest: {old value: new value}}. Old options are AnalysisConfig's renamed shorthands.
_RENAMED_VALUES = {f"probe_{setting}": names for setting, names in RENAMED_VALUES.items()}


def _renamed(args: argparse.Namespace) -> None:
    """Old options and option values replaced by their new names in ``args``, with a warning."""
    from .analysis import RENAMED_SHORTHANDS

    for old, new in RENAMED_SHORTHANDS.items():
        if getattr(args, old, None) is not None:
            log.warning("--%s is deprecated; use --%s", old.replace("_", "-"),
                        new.replace("_", "-"))
            if getattr(args, new) is None:
                setattr(args, new, getattr(args, old))
    for dest, names in _RENAMED_VALUES.items():
        value = getattr(args, dest, None)
        values = value if isinstance(value, list) else [value]
        for old, new in names.items():
            if old in values:
                log.warning("--%s %s is deprecated; use --%s %s", dest.replace("_", "-"), old,
                            dest.replace("_", "-"), new)
                values = [new if v == old else v for v in values]
        if value is not None:
            setattr(args, dest, values if isinstance(value, list) else values[0])


def _config(args: argparse.Namespace) -> Any:
    from .analysis import AnalysisConfig

    _renamed(args)
    overrides: dict[str, Any] = {
        short: tuple(value) if isinstance(value, list) else value
        for dest, short in _SHORTHAND_OPTIONS.items()
        if (value := getattr(args, dest)) is not None}
    if args.probe_hooks:
        overrides["probe_hooks"] = tuple(args.probe_hooks)
    if args.quiet:
        overrides["progress"] = False
    config = (AnalysisConfig.quick(seed=args.seed, **overrides) if args.quick
              else AnalysisConfig(seed=args.seed, **overrides))
    if args.probe_pooling:
        config = dataclasses.replace(
            config, probe=dataclasses.replace(config.probe, pooling=args.probe_pooling))
    if args.fit:
        config = dataclasses.replace(config, fit=dataclasses.replace(config.fit, mode=args.fit))
    scratch = {field: value for field, value in (
        ("epochs", getattr(args, "scratch_epochs", None)),
        ("backbone_lr", getattr(args, "scratch_lr", None)),
        ("stop_at", getattr(args, "scratch_stop_at", None))) if value is not None}
    if scratch:
        config = dataclasses.replace(config,
                                     scratch_fit=dataclasses.replace(config.scratch_fit, **scratch))
    if getattr(args, "analyze_unlearned", False):
        config = dataclasses.replace(config, stop_unless_learned=False)
    return config


# --quick training examples: a comparison trains random-init twins from scratch, which takes more
# data than fine-tuning (MiniLM's architecture solves the language task from 512 sentences, not
# from 384: docs/comparison.md)
QUICK_TRAIN = {"analyze": 384, "compare": 512}


def load_task(name: str, seed: int, quick: bool, model: Any = None, n_quick: int = 384) -> Any:
    """Task family ``name`` as the CLI builds it (``quick``: ``n_quick`` training and 128 test
    examples); a tokenized family uses ``model``'s own tokenizer."""
    from . import tasks

    if name not in tasks.names():
        raise SystemExit(f"unknown task {name!r}; choose one of {tasks.names()}")
    sizes = dict(n_train=n_quick, n_test=128) if quick else {}
    try:
        return tasks.load(name, seed=seed, model=model, **sizes)
    except (ValueError, ImportError) as err:
        raise SystemExit(str(err)) from err


# Failures a user can fix (bad input, a missing or corrupt file, permissions, a full disk): one
# line on stderr and exit status 1; anything else is a bug and keeps its traceback.
_EXPECTED = (ValueError, TypeError, LookupError, OSError, ImportError, FloatingPointError)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _logging(args)
    try:
        return _run(args)
    except _EXPECTED as err:
        if args.debug:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        if isinstance(err, OSError) or not message:
            message = f"{type(err).__name__}: {message}"
        raise SystemExit(f"modprobe: error: {' '.join(message.split())} "
                         "(--debug shows the traceback)") from None


def _run(args: argparse.Namespace) -> int:
    if args.command == "report":
        from .analysis import read_results
        from .report import write_report

        results_path = args.run / "results.json"
        if not results_path.exists():
            raise SystemExit(f"{results_path} does not exist: run `modprobe analyze` first")
        print(f"report: {write_report(read_results(results_path), args.run / 'report.html')}")
        return 0
    if args.command == "sweep":
        return _sweep(args)
    if args.command == "demo":
        from .demo import run_demo

        for part, comparison in run_demo(args.out, seeds=tuple(args.seeds)).items():
            print(f"\n===== {part} =====\n{comparison.summary()}")
        return 0
    config = _config(args)  # settings first: a bad --seed is reported before any loading
    model = _load(args)
    task = load_task(args.task, args.seed, args.quick, model, QUICK_TRAIN[args.command])
    if args.command == "analyze":
        from .analysis import analyze

        print(analyze(model, task, out=args.out, config=config).summary())
    else:
        from .comparison import compare

        print(compare(model, task, seeds=tuple(args.seeds), out=args.out, config=config).summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
