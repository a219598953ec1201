"""Time for random ablation controls: modprobe's evaluator vs a naive loop, same masks and scores.

The naive loop is what one writes by hand: for each mask, build the masked weights, re-read the
subroutine's batches and run them one by one. modprobe caches the inputs on the device once, in
batches of at least 256 examples, and evaluates masks in chunks (vmap over stacked masks by
default on a GPU only; shown here on the CPU too).
Run: python benchmarks/bench_ablation.py [--n-random 50] [--repeats 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from functools import partial

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

import modprobe as mp  # noqa: E402
from modprobe.ablation._evaluate import Evaluator  # noqa: E402
from modprobe.ablation._masks import build_specs, control_masks  # noqa: E402


def naive_scores(hm, sub, masks):
    base = hm.params(list(masks[0]))
    out = []
    for removed in masks:
        params = {p: w.masked_fill(removed[p], 0) for p, w in base.items()}
        readouts = torch.cat([sub.read(hm.forward_with(params, x)) for x, _ in sub.batches()])
        out.append(sub.score(readouts, sub.targets()))
    return out


def modprobe_scores(hm, sub, masks, **options):
    """What ablation.run does for one batch of controls (inputs cached once per call)."""
    return Evaluator(hm, {"T": sub}, list(masks[0]), "zero", **options).scores(masks)["T"]


def mlp_case(n=2048):
    hm = mp.scratch.mlp([64, 256, 256, 10], seed=0)
    x = torch.randn(n, 64, generator=torch.Generator().manual_seed(0))
    y = hm(x).argmax(-1)  # the model is right everywhere: ablations can only hurt
    return "MLP 64-256-256-10, 2048 examples", hm, mp.Subroutine((x, y), batch_size=64), "*.weight"


def mlp_dataset_case():
    _, hm, sub, pattern = mlp_case()
    data = torch.utils.data.TensorDataset(*sub.data)  # read item by item, as a DataLoader does
    return ("same MLP, data as a torch Dataset", hm, mp.Subroutine(data, batch_size=64), pattern)


def bert_case(n=512):
    hm = mp.scratch.transformer("bert", n_layers=2, d_model=64, n_heads=4, d_mlp=128,
                                vocab_size=64, max_len=32, seed=0)
    ids = torch.randint(0, 64, (n, 16), generator=torch.Generator().manual_seed(0))

    def cls_logits(out):
        return out[:, 0, :2]

    y = cls_logits(hm(ids)).argmax(-1)
    return ("BERT bridge 2x64, 512 x 16 tokens", hm,
            mp.Subroutine((ids, y), readout=cls_logits, batch_size=64), "blocks.*.weight")


def timed(fns, repeats):
    """Median seconds of each function, the runs interleaved so machine load hits all alike."""
    times = {name: [] for name in fns}
    results = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-random", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 gives steadier numbers on a shared machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"device {'cuda' if torch.cuda.is_available() else 'cpu'}; "
          f"{args.n_random} random controls, median of {args.repeats}")
    for case in (mlp_case, mlp_dataset_case, bert_case):
        name, hm, sub, pattern = case()
        if torch.cuda.is_available():
            hm.module.cuda()
        masks_in = {p: torch.rand(w.shape, generator=torch.Generator().manual_seed(1)) < 0.1
                    for p, w in hm.params(pattern).items()}
        spec = build_specs(hm, {"S": masks_in})["S"]
        masks = [{p: r.to(hm.device) for p, r in m.items()}
                 for m in control_masks(spec, args.n_random, 0, "random_ablate")]
        variants = {"modprobe, batch_size=64 (the subroutine's)": {"batch_size": 64},
                    "modprobe, default (batches of 256)": {},
                    "modprobe, default + vmap over 8 masks": {"vectorize": True},
                    "modprobe, batch_size=1024": {"batch_size": 1024}}
        naive = "naive loop (re-read data, one mask at a time)"
        fns = {naive: partial(naive_scores, hm, sub, masks),
               **{label: partial(modprobe_scores, hm, sub, masks, **opts)
                  for label, opts in variants.items()}}
        with hm.evaluating(), torch.no_grad():
            times, results = timed(fns, args.repeats)
        print(f"\n{name}: {len(masks_in)} masked tensors")
        print(f"  {naive:<44}: {times[naive]:8.3f} s")
        for label in variants:
            diff = max(abs(a - b) for a, b in zip(results[label], results[naive]))
            assert diff < 1e-3, f"{label}: scores differ from the naive loop by {diff}"
            print(f"  {label:<44}: {times[label]:8.3f} s   naive / this = "
                  f"{times[naive] / times[label]:5.2f}x   (max score difference {diff:.1e})")


if __name__ == "__main__":
    main()
