"""Stage-by-stage time of the MiniLM analysis (language task), before and after the speed work,
side by side in one process.

"before": every weight matrix masked (``mask_scope="all"``), no activation reuse
(``reuse_activations=False``: every mask and every ablation control recomputes the layers below
the first masked tensor), the 1%-of-kept settling rule alone (``mask_stable_total=0``), and
denormal floats not flushed during mask training.
"after": the current defaults of ``AnalysisConfig.quick()`` (the upper half of the blocks masked,
prefix replay, early stopping that settles) and of ``AnalysisConfig()`` (every weight matrix, as
before, with prefix replay and settling). Each run is a fresh ``analyze`` without ``out=``.
Prints each stage's wall and CPU seconds, the after/before ratio, and the epochs each mask ran.
``--n-random N`` sets the random controls of both runs (fewer: a cheaper run, the same
comparison for every other stage). ``--parts`` instead times the exact speedups alone on the
quick setting's tensors (results asserted identical): the λ grid of one subroutine trained
together vs one after another, and ablation controls with the prefix replayed vs recomputed.
Run: python benchmarks/bench_analysis.py [--quick-only | --parts] [--n-random 80] [--threads 2]
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

import modprobe as mp  # noqa: E402
from modprobe.analysis import AnalysisConfig  # noqa: E402
from modprobe.cli import load_task  # noqa: E402
from modprobe.pruning import batched  # noqa: E402

BEFORE = dict(mask_scope="all", reuse_activations=False, mask_stable_total=0.0)


def run(config: AnalysisConfig, quick: bool, flush: bool) -> tuple[dict, float, float]:
    """One analysis as ``modprobe analyze --model minilm --task language [--quick]`` runs it
    (the quick task is the CLI's smaller one), without an output directory."""
    wall, cpu = time.perf_counter(), time.process_time()
    hm = mp.load_model("minilm")
    task = load_task("language", config.seed, quick, hm)
    flushing = batched._flushing_denormals
    if not flush:  # the old behaviour: no flushing context around mask training
        batched._flushing_denormals = contextlib.nullcontext
    try:
        analysis = mp.analyze(hm, task, config=config)
    finally:
        batched._flushing_denormals = flushing
    return analysis.results, time.perf_counter() - wall, time.process_time() - cpu


def table(name: str, before: tuple, after: tuple) -> None:
    (rb, wb, cb), (ra, wa, ca) = before, after
    print(f"\n{name}: wall s (CPU s)")
    print(f"  {'stage':<10} {'before':>18} {'after':>18} {'after/before':>13}")
    for stage in rb["timings"]:
        b, a = rb["timings"][stage], ra["timings"].get(stage, {"wall_s": 0.0, "cpu_s": 0.0})
        print(f"  {stage:<10} {b['wall_s']:8.1f} ({b['cpu_s']:7.1f}) {a['wall_s']:8.1f} "
              f"({a['cpu_s']:7.1f}) {a['wall_s'] / max(b['wall_s'], 1e-9):12.2f}x")
    print(f"  {'total':<10} {wb:8.1f} ({cb:7.1f}) {wa:8.1f} ({ca:7.1f}) {wa / wb:12.2f}x")
    for label, res in (("before", rb), ("after", ra)):
        steps = [s for stage in ("masks", "twin") for s in res["timings"][stage].get("steps", [])]
        epochs = ", ".join(f"{s['step'].removeprefix('mask ')}: {s['epochs']}" for s in steps)
        print(f"  {label} epochs per mask: {epochs}")
        print(f"  {label} masked: {res['mask_targets']['description']}")
        print(f"  {label} verdict: {res['verdict']['verdicts']}")


def parts(n_random: int) -> None:
    """Side by side, alternating, best of two: the exact speedups alone, same results."""
    from modprobe.analysis import mask_targets
    from modprobe.pruning.batched import fit_masks
    from modprobe.pruning.layout import slots as layout

    from modprobe.fitting import FitConfig, fit

    hm = mp.load_model("minilm")
    task = load_task("language", 0, True, hm)
    hm, readout, _ = fit(hm, task.composite.train, task.composite.test, task.n_classes,
                         FitConfig(mode="head", epochs=2, progress=False))
    subs = {n: {k: dataclasses.replace(getattr(s, k), readout=readout) for k in ("train", "test")}
            for n, s in task.subroutines.items()}
    name = next(iter(subs))
    sub = subs[name]["train"]
    names = hm.param_names(mask_targets(hm, AnalysisConfig.quick())["params"])
    slots, weights = layout(hm, names, "weight"), hm.params(names)
    grid = [mp.pruning.MaskConfig(l0_lambda=lam, epochs=3) for lam in (1.0, 300.0)]
    labels = [f"{name} λ={c.l0_lambda:g}" for c in grid]
    subnet = mp.pruning.train_subnetworks(hm, {name: sub}, mp.pruning.MaskConfig(
        params=tuple(names), l0_lambda=300.0, epochs=3, necessity="none"), progress=False)[name]
    tests = {n: s["test"] for n, s in subs.items()}

    def grid_fit(share):
        return fit_masks(hm, sub, slots, weights, grid, labels, share=share, progress=False)

    def ablate(reuse):
        return mp.ablation.run(hm, {name: subnet}, tests, n_random=n_random, n_bootstrap=0,
                               reuse_prefix=reuse, progress=False)

    for title, fn, same in (
            (f"λ grid (1, 300), 3 epochs, {len(names)} tensors", grid_fit,
             lambda a, b: all(torch.equal(x.units, y.units) and x.history == y.history
                              for x, y in zip(a, b))),
            (f"ablation, {n_random} random controls x {len(tests)} tasks", ablate,
             lambda a, b: a.rows == b.rows)):
        times = {False: [], True: []}
        results = {}
        for _ in range(2):
            for on in (False, True):
                start = time.perf_counter()
                results[on] = fn(on)
                times[on].append(time.perf_counter() - start)
        assert same(results[False], results[True]), f"{title}: results differ"
        off, on = min(times[False]), min(times[True])
        print(f"  {title}: recomputed {off:.1f} s, shared/replayed {on:.1f} s, "
              f"ratio {on / off:.2f}x (identical results)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick-only", action="store_true", help="skip the default analysis")
    parser.add_argument("--parts", action="store_true",
                        help="time only the exact speedups (grid sharing, prefix replay)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--n-random", type=int, default=None,
                        help="random controls per subnetwork in both runs (default: the config's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f} at start")
    if args.parts:
        parts(args.n_random or 16)
        print(f"load average {os.getloadavg()[0]:.2f} at the end")
        return
    cases = [("quick", AnalysisConfig.quick(progress=False))]
    if not args.quick_only:
        cases.append(("default", AnalysisConfig(progress=False)))
    for name, after in cases:
        if args.n_random:
            after = dataclasses.replace(after, n_random=args.n_random)
        before = dataclasses.replace(after, **BEFORE)
        quick = name == "quick"
        table(name, run(before, quick, flush=False), run(after, quick, flush=True))
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
