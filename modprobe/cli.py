"""The ``modprobe`` command line: analyze, compare, report, demo."""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
from pathlib import Path
from typing import Any

_EXAMPLES = """examples:
  modprobe demo                                            # MiniLM vs random init, language task
  modprobe analyze --model minilm --task language --out runs/x --quick
  modprobe analyze --model path/to/hf_dir --task language --out runs/hf   # its own tokenizer
  modprobe analyze --model-factory mypkg.models:build --task hyperteacher --fit as_is --out runs/a
  modprobe analyze --model-factory mypkg.models:build --task vision --out runs/mine
  modprobe compare --model minilm --task language --seeds 0 1 2 --out runs/cmp
  modprobe report runs/x                                   # re-render runs/x/report.html
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modprobe", description="Modularity analysis of neural networks: one subnetwork per "
        "subroutine, ablations against random controls, constituent probes.",
        epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser, model_required: bool = True) -> None:
        which = p.add_mutually_exclusive_group(required=model_required)
        which.add_argument("--model", help='"minilm", a local HuggingFace directory')
        which.add_argument("--model-factory", metavar="MODULE:FUNCTION",
                           help="import MODULE and call FUNCTION() for an nn.Module")
        p.add_argument("--task", required=True, help="task family: hyperteacher, language, "
                       "symbolic, vision")
        p.add_argument("--out", required=True, type=Path, help="output directory (resumes)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default cpu)")
        p.add_argument("--quick", action="store_true", help="small settings: minutes on a CPU")
        p.add_argument("--n-random", type=int, default=None, help="random controls per subnetwork")
        p.add_argument("--mask-params", nargs="+", default=None, metavar="GLOB",
                       help="parameters to mask, e.g. 'blocks.*.mlp.*.weight'")
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
    report = sub.add_parser("report", help="re-render report.html from a run's results.json")
    report.add_argument("run", type=Path, help="a directory holding results.json")
    demo = sub.add_parser("demo", help="the bundled MiniLM vs its random-init twin (minutes)")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"))
    demo.add_argument("--seeds", type=int, nargs="+", default=[0],
                      help="more seeds give a confidence interval (each adds two analyses)")
    return parser


def _load(args: argparse.Namespace) -> Any:
    from .models import load_model, wrap

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


def _config(args: argparse.Namespace) -> Any:
    from .analysis import AnalysisConfig

    overrides: dict[str, Any] = {}
    if args.n_random is not None:
        overrides["n_random"] = args.n_random
    if args.mask_params:
        overrides["mask_params"] = tuple(args.mask_params)
    config = (AnalysisConfig.quick(seed=args.seed, **overrides) if args.quick
              else AnalysisConfig(seed=args.seed, **overrides))
    if args.fit:
        config = dataclasses.replace(config, fit=dataclasses.replace(config.fit, mode=args.fit))
    return config


def _task(name: str, seed: int, quick: bool, model: Any = None) -> Any:
    """Task family ``name``; a tokenized family uses ``model``'s own tokenizer."""
    from . import tasks

    if name not in tasks.names():
        raise SystemExit(f"unknown task {name!r}; choose one of {tasks.names()}")
    sizes = dict(n_train=384, n_test=128) if quick else {}
    try:
        return tasks.load(name, seed=seed, model=model, **sizes)
    except (ValueError, ImportError) as err:
        raise SystemExit(str(err)) from err


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "report":
        from .report import write_report

        results_path = args.run / "results.json"
        if not results_path.exists():
            raise SystemExit(f"{results_path} does not exist: run `modprobe analyze` first")
        print(f"report: {write_report(json.loads(results_path.read_text()), args.run / 'report.html')}")
        return 0
    if args.command == "demo":
        from .demo import run_demo

        print(run_demo(args.out, seeds=tuple(args.seeds)).summary())
        return 0
    model, config = _load(args), _config(args)
    task = _task(args.task, args.seed, args.quick, model)
    if args.command == "analyze":
        from .analysis import analyze

        print(analyze(model, task, out=args.out, config=config).summary())
    else:
        from .comparison import compare

        print(compare(model, task, seeds=tuple(args.seeds), out=args.out, config=config).summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
