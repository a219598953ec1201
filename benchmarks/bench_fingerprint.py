"""Cost of the resume fingerprint (sha256 of every parameter's and buffer's bytes) on MiniLM.

Times, interleaved in one run, the content hash that ``analyze`` computes once per call against a
plain sum over the same parameters (the arithmetic floor of reading every weight once), and
against one MiniLM forward pass of a 32 x 32-token batch for scale.
Run: python benchmarks/bench_fingerprint.py [--repeats 7]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

import modprobe as mp  # noqa: E402
from modprobe.analysis import fingerprint  # noqa: E402


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    hm = mp.load_model("minilm")
    task = mp.tasks.load("language", seed=0, n_train=32, n_test=32)
    config = mp.AnalysisConfig()
    mask = mp.pruning.MaskConfig()
    inputs = dict(hm.tokenizer(["the cat near the dogs sees itself"] * 32, padding="max_length",
                               max_length=32, return_tensors="pt"))
    n = sum(p.numel() for p in hm.module.parameters())

    def summed():
        with torch.no_grad():
            return sum(float(p.double().sum()) for p in hm.module.parameters())

    def forward():
        with torch.no_grad():
            hm(inputs)

    runs = {"sha256 fingerprint": lambda: fingerprint(hm, task, "model"),
            "sum of parameters": summed, "forward 32x32": forward}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for fn in runs.values():
        fn()  # warm up
    for _ in range(args.repeats):
        for name, fn in runs.items():
            times[name].append(_timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"MiniLM: {n:,} parameters, {args.repeats} interleaved repetitions, medians")
    for name, t in med.items():
        print(f"  {name:20s} {t * 1000:8.1f} ms")
    print(f"fingerprint / sum:     {med['sha256 fingerprint'] / med['sum of parameters']:.2f}x")
    print(f"fingerprint / forward: {med['sha256 fingerprint'] / med['forward 32x32']:.2f}x")


if __name__ == "__main__":
    main()
