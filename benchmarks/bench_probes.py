"""Torch versus scikit-learn probe engines on the same folds, side by side in one run.

Synthetic activations: 7 layers x 2000 examples x 384 dims, anisotropic Gaussian noise plus
planted linear codes of three constituents (8, 4 and 2 classes) whose strength varies by layer,
so accuracies range from chance to near perfect. Both engines fit the same probes (every layer x
outer fold x constituent x C value) on the same standardised folds and predict the same test
rows; the script prints each engine's time and mean accuracy and the speed ratio (target: torch
>= 10x faster, mean accuracy within 1 point). ``--minilm`` uses real activations instead: the
bundled MiniLM (embeddings + 6 blocks, mean-pooled) on templated sentences. ``--pipeline``
also times the whole ``decodability`` run (nested CV over 7 C values, control tasks,
permutations, bootstrap) with each engine, side by side, and prints the ratio and the largest
per-row accuracy difference (target: torch >= 4x sklearn within 1 point; both engines solve to
the same tolerance, 1e-6, so equal accuracy means equal work done). ``--load N`` runs N other
CPU-bound processes meanwhile (target there: >= 2x). Threads: each engine takes the cores free
now (``modprobe.probes.linear.free_cores``) unless ``--threads`` pins them.

    python benchmarks/bench_probes.py [--grid 3] [--threads 1] [--minilm] [--pipeline] [--load 1]
"""
from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import time

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from modprobe.probes import decodability
from modprobe.probes.folds import nested_splits
from modprobe.probes.linear import fit_predict

CLASSES = (8, 4, 2)  # classes of the synthetic constituents


class _Planted(nn.Module):
    """Input: example indices. Layer i returns the stored activations of layer i."""

    def __init__(self, tables: list[torch.Tensor]):
        super().__init__()
        self.layers = nn.ModuleList(_Table(t) for t in tables)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return [layer(idx) for layer in self.layers][-1]


class _Table(nn.Module):
    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table[idx]


def synthetic(n: int, dim: int, layers: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    labels = [torch.randint(0, k, (n,), generator=gen) for k in CLASSES]
    spectrum = torch.logspace(0, -1.5, dim)  # correlated features, as real activations are
    feats = []
    for layer in range(layers):
        mixing = torch.linalg.qr(torch.randn(dim, dim, generator=gen))[0] * spectrum
        x = torch.randn(n, dim, generator=gen) @ mixing.T
        for c, (y, k) in enumerate(zip(labels, CLASSES)):
            strength = 0.08 * np.exp(-((layer - 2 * c - 1) ** 2) / 4)  # peaks at layer 2c + 1
            x += strength * torch.randn(k, dim, generator=gen)[y]
        feats.append(x)
    return feats, {f"c{k}": y for k, y in zip(CLASSES, labels)}


_NOUNS = ["dog", "cat", "teacher", "farmer", "pilot", "doctor", "child", "bird"]
_PLURALS = ["dogs", "cats", "teachers", "farmers", "pilots", "doctors", "children", "birds"]
_VERBS = {  # tense -> (singular, plural)
    "past": [("saw", "saw"), ("liked", "liked"), ("found", "found")],
    "present": [("sees", "see"), ("likes", "like"), ("finds", "find")],
    "future": [("will see", "will see"), ("will like", "will like"), ("will find", "will find")],
}
_OBJECTS = ["the ball", "a house", "the river", "some bread", "an old car", "the garden"]
_ADJECTIVES = ["", "small ", "happy ", "tired ", "young ", "quiet "]


def minilm(n: int, seed: int):
    """Mean-pooled MiniLM activations (embeddings + 6 blocks) of templated sentences whose
    constituents are the subject noun (8), grammatical number (2) and tense (3)."""
    import modprobe as mp
    from modprobe.probes.activations import collect

    rng = np.random.default_rng(seed)
    noun, number, tense = rng.integers(0, 8, n), rng.integers(0, 2, n), rng.integers(0, 3, n)
    sentences = []
    for i in range(n):
        tense_name = list(_VERBS)[tense[i]]
        verb = _VERBS[tense_name][rng.integers(0, 3)][number[i]]
        subject = (_PLURALS if number[i] else _NOUNS)[noun[i]]
        sentences.append(f"the {_ADJECTIVES[rng.integers(0, 6)]}{subject} {verb} "
                         f"{_OBJECTS[rng.integers(0, 6)]}")
    hm = mp.load_model("minilm")
    inputs = dict(hm.tokenizer(sentences, padding=True, return_tensors="pt"))
    hooks = ["embed.hook_out"] + [f"blocks.{i}.hook_out" for i in range(6)]
    feats, _ = collect(hm, inputs, hooks, "mean", 64, progress=True)
    labels = {"noun": noun, "tense": tense, "number": number}
    return [feats[h] for h in hooks], {k: torch.as_tensor(v) for k, v in labels.items()}


def engines(feats, constituents, grid: int, seed: int) -> None:
    labels = list(constituents.values())
    unit = np.arange(len(labels[0]))
    key = np.unique(torch.stack(labels, 1).numpy(), axis=0, return_inverse=True)[1].reshape(-1)
    splits = nested_splits(unit, key, 5, 3, np.random.default_rng(seed)).outer
    y = torch.stack(labels)
    classes = [int(t.max()) + 1 for t in labels]
    reg = np.broadcast_to(np.logspace(-3, 0, grid), (len(feats), len(splits), len(labels), grid))
    results = {}
    for engine in ("sklearn", "torch"):
        fit_predict(feats[:1], splits[:1], y, classes, reg[:1, :1], engine=engine)  # warm-up
        start = time.perf_counter()
        preds = fit_predict(feats, splits, y, classes, reg, engine=engine)
        seconds = time.perf_counter() - start
        acc = np.array([[(p == y[:, torch.as_tensor(test)].T[:, :, None]).float().mean(0).numpy()
                         for p, (_, test) in zip(per_hook, splits)] for per_hook in preds])
        results[engine] = (seconds, acc)  # acc: (layers, folds, constituents, grid)
        print(f"{engine:8s} {seconds:8.2f} s   mean accuracy {100 * acc.mean():6.2f} %")
    (t_sk, a_sk), (t_to, a_to) = results["sklearn"], results["torch"]
    n_fits = a_sk.size
    print(f"{n_fits} probes each ({len(feats)} layers x {len(splits)} folds x {len(labels)} "
          f"constituents x {grid} C values in logspace(-3, 0))")
    print(f"speed ratio sklearn / torch: {t_sk / t_to:.1f}x")
    print(f"mean accuracy difference torch - sklearn: {100 * (a_to.mean() - a_sk.mean()):+.2f} "
          f"points; largest per-probe difference {100 * np.abs(a_to - a_sk).max():.2f} points")


def pipeline(feats, constituents, seed: int, threads: int | None = None) -> None:
    """The whole ``decodability`` run with each engine: same seed, so same folds and controls."""
    model = _Planted(feats)
    reports, seconds = {}, {}
    for engine in ("sklearn", "torch"):
        start = time.perf_counter()
        reports[engine] = decodability(model, torch.arange(len(feats[0])), constituents,
                                       engine=engine, seed=seed, progress=False, threads=threads,
                                       input_baseline=False)  # the inputs are indices
        seconds[engine] = time.perf_counter() - start
    print("\nfull decodability (nested 5 x 3 CV, 7 C values, control tasks, 1000 permutations, "
          "1000 bootstraps):")
    for engine, report in reports.items():
        acc = np.mean([r["score"] for r in report.rows])
        control = np.mean([r["control_score"] for r in report.rows])
        print(f"{engine:8s} {seconds[engine]:8.1f} s   mean accuracy {100 * acc:6.2f} %   "
              f"mean control accuracy {100 * control:6.2f} %")
    diff = max(abs(a["score"] - b["score"])
               for a, b in zip(reports["torch"].rows, reports["sklearn"].rows))
    print(f"speed ratio sklearn / torch: {seconds['sklearn'] / seconds['torch']:.1f}x; largest "
          f"per-row accuracy difference {100 * diff:.2f} points")
    report = reports["torch"]
    print(report.table(["hook", "constituent", "score", "control_score", "selectivity"]))
    print("best layers:", report.best_layers(), f" decodability {report.decodability:.3f}")


def _spin() -> None:
    while True:  # a CPU-bound neighbour
        sum(i * i for i in range(10000))


@contextlib.contextmanager
def _load(n: int):
    """``n`` CPU-bound processes running for the duration of the block."""
    procs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        yield
    finally:
        for p in procs:
            p.terminate()
            p.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--layers", type=int, default=7)
    parser.add_argument("--grid", type=int, default=3, help="C values per probe")
    parser.add_argument("--threads", type=int, default=None,
                        help="pin both engines (torch and the BLAS / OpenMP pools sklearn uses) "
                             "to this many threads; default: each library's own default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pipeline", action="store_true",
                        help="also time the whole decodability() run with both engines")
    parser.add_argument("--load", type=int, default=0,
                        help="run this many CPU-bound processes alongside (contention)")
    parser.add_argument("--skip-engines", action="store_true",
                        help="skip the fixed-C engine comparison (with --pipeline)")
    parser.add_argument("--minilm", action="store_true",
                        help="real activations: the bundled MiniLM on templated sentences")
    args = parser.parse_args()
    import sklearn.linear_model  # noqa: F401  (load its thread pools so that they can be pinned)

    if args.threads:
        torch.set_num_threads(args.threads)
    limits = threadpool_limits(args.threads) if args.threads else contextlib.nullcontext()
    from modprobe.probes.linear import free_cores

    print(f"threads: {args.threads or f'free cores, now {free_cores()}'} "
          f"(torch {torch.get_num_threads()}); {args.load} CPU-bound neighbour process(es)")
    if args.minilm:
        feats, labels = minilm(args.n, args.seed)
        print(f"MiniLM: {len(feats)} layers x {args.n} sentences x {feats[0].shape[1]} dims; "
              "constituents: subject noun (8), tense (3), number (2)")
    else:
        feats, labels = synthetic(args.n, args.dim, args.layers, args.seed)
    with limits, _load(args.load):
        if not args.skip_engines:
            engines(feats, labels, args.grid, args.seed)
        if args.pipeline:
            pipeline(feats, labels, args.seed, args.threads)


if __name__ == "__main__":
    main()
