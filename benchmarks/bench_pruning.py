"""Mask-training cost of modprobe.pruning against fine-tuning and against NeuroSurgeon 0.1.0.

Prints, measured side by side in one run (medians over interleaved repetitions, so drifts in the
load of a shared machine hit both sides alike):

(a) masked training step / plain fine-tuning step (forward + backward, same batch) on the bundled
    MiniLM (batch 32 x 32 tokens, all 36 encoder weight matrices masked) and on a tiny MLP
    (64-256-256-10, batch 256): against fine-tuning every parameter (the target's definition),
    against fine-tuning only the masked tensors, and as whole steps with each side's Adam update.
(b) against NeuroSurgeon 0.1.0 (its continuous-sparsification layers on the same MiniLM layers,
    batch and frozen head, driven by the papers' schedule: beta 1 -> 200 over 90 epochs, Adam lr
    0.01, its default mask init 0, the same penalty in its summed form): time per mask-training
    step, and wall time until NeuroSurgeon first holds a subnetwork at least as good as the one
    modprobe ends with (keep-only validation accuracy at most 1 point lower, density at most 10%
    higher) -- modprobe's time is its mask-training loop (default schedule, early stopping on),
    like NeuroSurgeon's, whose per-epoch evaluation is not counted; the whole call, which also
    evaluates the full and the masked model, is printed too;
(c) peak memory (RSS growth during mask training, in a fresh process per side);
(d) what the necessity search costs: the default ``necessity="peel"`` (the sufficient search,
    then more searches on what is left until the subroutine breaks) against the sufficient
    search alone (``necessity="none"``), wall time of the whole call on the same MiniLM task.
Parts (b) compare like with like: NeuroSurgeon only searches a sufficient subnetwork, so
modprobe runs with ``necessity="none"`` there.

NeuroSurgeon is a benchmark-only dependency: install it in a separate environment (recipe for a
``make bench-env`` target)::

    python3 -m venv .bench-venv
    .bench-venv/bin/pip install torch==2.13.0          # first, or pip pulls a CUDA build
    .bench-venv/bin/pip install -e '.[pretrained]' neurosurgeon==0.1.0
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .bench-venv/bin/python benchmarks/bench_pruning.py

Without it, part (a) and modprobe's side of (c) still run. ``--quick`` shrinks every part.
"""
from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import random
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import modprobe as mp
from modprobe.pruning import MaskConfig, train_subnetwork
from modprobe.pruning import train as pruning_train
from modprobe.pruning import methods
from modprobe.pruning import batched
from modprobe.pruning.layout import slots as layout
from modprobe.pruning.masks import MaskSet, select_params

torch.set_num_threads(2)

NOUNS = [("dog", "dogs"), ("cat", "cats"), ("teacher", "teachers"), ("child", "children"),
         ("doctor", "doctors"), ("farmer", "farmers"), ("bird", "birds"), ("student", "students"),
         ("pilot", "pilots"), ("singer", "singers"), ("artist", "artists"), ("baker", "bakers"),
         ("driver", "drivers"), ("lawyer", "lawyers"), ("nurse", "nurses"), ("king", "kings"),
         ("queen", "queens"), ("girl", "girls"), ("boy", "boys"), ("horse", "horses")]
VERBS = [("runs", "run"), ("sleeps", "sleep"), ("smiles", "smile"), ("waits", "wait"),
         ("works", "work"), ("sings", "sing"), ("reads", "read"), ("writes", "write"),
         ("laughs", "laugh"), ("swims", "swim")]
PLACES = ["in the park", "at home", "near the river", "in the city", "at school", "by the lake",
          "every day", "after lunch"]
ENCODER = [f"blocks.{i}.{p}.weight" for i in range(6)
           for p in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.in", "mlp.out")]
HF_ENCODER = [f"encoder.layer.{i}.{p}" for i in range(6)
              for p in ("attention.self.query", "attention.self.key", "attention.self.value",
                        "attention.output.dense", "intermediate.dense", "output.dense")]
NS_EPOCHS, NS_LR, BETA_MAX = 90, 0.01, 200.0


# --------------------------------------------------------------------- the MiniLM task
def agreement_task(tokenizer, n: int, seed: int, length: int = 32
                   ) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Template sentences labelled by subject number (plural?) and by negation."""
    rng = random.Random(seed)
    texts, plural, negated = [], [], []
    for _ in range(n):
        (single, plurals), (verb_s, verb_p) = rng.choice(NOUNS), rng.choice(VERBS)
        is_plural, is_negated = rng.random() < 0.5, rng.random() < 0.5
        verb = (("do not " if is_plural else "does not ") + verb_p if is_negated
                else verb_p if is_plural else verb_s)
        texts.append(f"the {plurals if is_plural else single} {verb} {rng.choice(PLACES)}")
        plural.append(int(is_plural))
        negated.append(int(is_negated))
    enc = tokenizer(texts, padding="max_length", max_length=length, truncation=True,
                    return_tensors="pt")
    inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    return inputs, torch.tensor(plural), torch.tensor(negated)


def fit_head(features: torch.Tensor, plural: torch.Tensor, negated: torch.Tensor,
             seed: int = 0) -> nn.Linear:
    """A frozen linear head (2 logits per label) on the full model's CLS vectors: the composite
    task's trained readout. The subroutine benchmarked is subject number (the first 2 logits)."""
    torch.manual_seed(seed)
    head = nn.Linear(features.shape[1], 4)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(300):
        out = head(features)
        loss = (nn.functional.cross_entropy(out[:, :2], plural)
                + nn.functional.cross_entropy(out[:, 2:], negated))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head.requires_grad_(False)


class MiniLMSetup:
    """The bundled MiniLM, a fitted head, train/validation data: shared by every MiniLM part."""

    def __init__(self, n_train: int, n_val: int):
        self.hm = mp.load_model("minilm")
        inputs, labels, negated = agreement_task(self.hm.tokenizer, n_train + n_val, seed=0)
        with torch.no_grad():
            cls = torch.cat([self.hm({k: v[i:min(i + 64, n_train)] for k, v in inputs.items()})
                             [:, 0] for i in range(0, n_train, 64)])
        self.head = fit_head(cls, labels[:n_train], negated[:n_train])
        split = lambda a, b: ({k: v[a:b] for k, v in inputs.items()}, labels[a:b])  # noqa: E731
        self.train = mp.Subroutine(split(0, n_train), readout=self.read, batch_size=32)
        self.val = mp.Subroutine(split(n_train, n_train + n_val), readout=self.read, batch_size=32)
        self.batch = next(iter(self.train.batches()))

    def read(self, out) -> torch.Tensor:
        hidden = out if isinstance(out, torch.Tensor) else out.last_hidden_state
        return self.head(hidden[:, 0])[:, :2]


# --------------------------------------------------------------------- timing helpers
def interleaved(fns: dict[str, Callable[[], object]], reps: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved round-robin."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def masked_stepper(hm: mp.HookedModel, sub: mp.Subroutine, names: list[str], batch,
                   l0_lambda: float = 1.0, update: bool = True) -> Callable[[], object]:
    """modprobe's real training step (masked forward, backward, and with ``update`` its Adam
    step on the logits) on a fixed batch."""
    default = MaskConfig()
    masks = MaskSet(layout(hm, names, "weight"), hm.params(names), methods.get("continuous"), default.init,
                    margin=default.margin)
    optimizer = batched.adam(masks.logits, 0.01)
    inputs, targets = batch
    if update:
        return lambda: batched.step(hm, sub, masks, optimizer, inputs, targets, 10.0, l0_lambda)
    return lambda: batched.gradient(hm, sub, masks, inputs, targets, 10.0, l0_lambda)


def plain_stepper(params: list[nn.Parameter], loss_fn: Callable[[], torch.Tensor],
                  update: bool = False) -> Callable[[], object]:
    """Fine-tuning forward + backward with respect to ``params`` (with ``update``: and a fused
    Adam step, applied to copies so that the model stays as it is)."""
    if not update:
        return lambda: torch.autograd.grad(loss_fn(), params, allow_unused=True)
    copies = [p.detach().clone().requires_grad_(True) for p in params]
    optimizer = torch.optim.Adam(copies, lr=1e-5, fused=True)

    def step() -> None:
        grads = torch.autograd.grad(loss_fn(), params, allow_unused=True)
        for copy, grad in zip(copies, grads):
            copy.grad = grad
        optimizer.step()
    return step


def overhead(label: str, hm: mp.HookedModel, loss_fn: Callable[[], torch.Tensor],
             sub: mp.Subroutine, names: list[str], batch, reps: int, target: float) -> None:
    """Masked / plain ratios of one model: fwd+bwd against fine-tuning every parameter (the
    target's definition) and against fine-tuning only the masked tensors; whole steps with each
    side's Adam update."""
    every = list(hm.module.parameters())
    keys = {(w.data_ptr(), w.shape) for w in hm.params(names).values()}
    same = [p for p in every if (p.data_ptr(), p.shape) in keys]
    t = interleaved({
        "plain": plain_stepper(every, loss_fn),
        "plain_same": plain_stepper(same, loss_fn),
        "masked": masked_stepper(hm, sub, names, batch, update=False),
        "plain_adam": plain_stepper(every, loss_fn, update=True),
        "masked_adam": masked_stepper(hm, sub, names, batch)}, reps)
    print(f"  {label}: fwd+bwd plain {t['plain'] * 1e3:.2f} ms, masked "
          f"{t['masked'] * 1e3:.2f} ms: ratio {t['masked'] / t['plain']:.3f} "
          f"(target <= {target}); against fine-tuning only the {len(same)} masked tensors "
          f"{t['masked'] / t['plain_same']:.3f}; whole steps with Adam "
          f"{t['masked_adam'] / t['plain_adam']:.3f}")


# --------------------------------------------------------------------- (a) overhead
def part_a(setup: MiniLMSetup, reps: int) -> None:
    print("(a) masked training step / plain fine-tuning step (fwd+bwd, same batch)")
    hm, sub = setup.hm, setup.train
    inputs, targets = setup.batch
    names = select_params(hm, MaskConfig(params=ENCODER))
    n = sum(w.numel() for w in hm.params(names).values())
    with hm.evaluating():
        overhead(f"MiniLM, {len(names)} matrices ({n / 1e6:.1f} M weights), batch 32 x 32", hm,
                 lambda: sub.compute_loss(sub.read(hm(inputs)), targets), sub, names,
                 setup.batch, reps, 1.05)
    mlp = mp.scratch.mlp([64, 256, 256, 10], seed=0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 64, generator=g), torch.randint(0, 10, (256,), generator=g)
    mlp_sub = mp.Subroutine((x, y), batch_size=256)
    overhead("tiny MLP 64-256-256-10, batch 256", mlp, lambda: mlp_sub.compute_loss(mlp(x), y),
             mlp_sub, mlp.param_names("*.weight"), (x, y), reps * 20, 1.3)


# --------------------------------------------------------------------- (b) NeuroSurgeon
def neurosurgeon_available() -> bool:
    try:
        import NeuroSurgeon  # noqa: F401
    except ImportError:
        return False
    return True


class NeuroSurgeonRun:
    """NeuroSurgeon's CircuitModel over a fresh HF BertModel of the same MiniLM weights."""

    def __init__(self, setup: MiniLMSetup, l0_lambda_sum: float, init: float = 0.0):
        from NeuroSurgeon.Models.circuit_model import CircuitModel
        from NeuroSurgeon.Models.model_configs import CircuitConfig
        from transformers import AutoModel

        config = CircuitConfig(
            mask_method="continuous_sparsification", target_layers=HF_ENCODER, freeze_base=True,
            add_l0=False, l0_lambda=l0_lambda_sum,
            mask_hparams={"ablation": "none", "mask_unit": "weight", "mask_bias": False,
                          "mask_init_value": init})
        bert = AutoModel.from_pretrained(str(mp.models.minilm_path()))
        self.model = CircuitModel(config, bert)
        self.setup, self.l0_lambda = setup, l0_lambda_sum
        self.mask_params = [p for n, p in self.model.named_parameters() if "mask_params" in n]
        self.optimizer = torch.optim.Adam(self.mask_params, lr=NS_LR)

    def step(self, inputs, targets) -> None:
        self.model.train(True)
        logits = self.setup.read(self.model(**inputs))
        loss = (nn.functional.cross_entropy(logits, targets)
                + self.l0_lambda * self.model._compute_l0_loss())
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()

    @torch.no_grad()
    def quality(self) -> tuple[float, float]:
        """(density, keep-only validation accuracy) of its current hard mask."""
        self.model.train(False)
        stats = self.model.compute_l0_statistics()
        correct = total = 0
        for inputs, targets in self.setup.val.batches():
            pred = self.setup.read(self.model(**inputs)).argmax(-1)
            correct, total = correct + int((pred == targets).sum()), total + len(targets)
        return float(stats["total_l0"] / stats["max_l0"]), correct / total


def part_b_step(setup: MiniLMSetup, config: MaskConfig, reps: int) -> None:
    print("(b) modprobe vs NeuroSurgeon 0.1.0, continuous sparsification on the same 36 MiniLM "
          "matrices")
    hm, sub = setup.hm, setup.train
    names = select_params(hm, config)
    n = sum(w.numel() for w in hm.params(names).values())
    ns = NeuroSurgeonRun(setup, config.l0_lambda / n)
    inputs, targets = setup.batch
    with hm.evaluating():
        t = interleaved({"neurosurgeon": lambda: ns.step(inputs, targets),
                         "modprobe": masked_stepper(hm, sub, names, setup.batch, config.l0_lambda)},
                        reps)
    print(f"  time per mask-training step: modprobe {t['modprobe'] * 1e3:.0f} ms, NeuroSurgeon "
          f"{t['neurosurgeon'] * 1e3:.0f} ms, ratio {t['neurosurgeon'] / t['modprobe']:.2f}x")


def part_b_converge(setup: MiniLMSetup, config: MaskConfig, ns_epochs: int) -> None:
    hm, sub = setup.hm, setup.train
    n = sum(w.numel() for w in hm.params(select_params(hm, config)).values())
    fit_time = []

    def timed_fit(*args, **kwargs):  # the mask-training loop alone, like NeuroSurgeon's side
        start = time.perf_counter()
        result = fit(*args, **kwargs)
        fit_time.append(time.perf_counter() - start)
        return result
    fit, pruning_train._fit = pruning_train._fit, timed_fit
    try:
        start = time.perf_counter()
        ours = train_subnetwork(hm, sub, config, validation=setup.val, progress=False)
        ours_time = time.perf_counter() - start
    finally:
        pruning_train._fit = fit
    ours_acc = ours.metrics["val_accuracy"]
    print(f"  modprobe: {len(ours.history)} epochs, {fit_time[0]:.0f} s of mask training "
          f"({ours_time:.0f} s for the whole call, which also evaluates the full and the masked "
          f"model), density {ours.density:.3%}, keep-only val acc {ours_acc:.3f} "
          f"(full {ours.metrics['val_full_accuracy']:.3f})")

    ns = NeuroSurgeonRun(setup, config.l0_lambda / n)
    train_time, reached = 0.0, None
    for epoch in range(ns_epochs):  # the whole schedule: it has no stopping rule of its own
        ns.model.temperature = BETA_MAX ** (epoch / NS_EPOCHS)
        start = time.perf_counter()
        for batch_inputs, batch_targets in sub.batches(shuffle_seed=epoch):
            ns.step(batch_inputs, batch_targets)
        train_time += time.perf_counter() - start  # its evaluation below is not counted
        density, acc = ns.quality()
        # at least equal quality: accuracy no more than 1 point lower, density at most 10% higher
        if reached is None and acc >= ours_acc - 0.01 and density <= 1.1 * ours.density:
            reached = (epoch + 1, train_time, density, acc)
    if reached:
        print(f"  NeuroSurgeon first held a subnetwork at least as good after {reached[0]} epochs, "
              f"{reached[1]:.0f} s of mask training (density {reached[2]:.3%}, acc "
              f"{reached[3]:.3f}): modprobe {reached[1] / fit_time[0]:.1f}x faster in mask "
              f"training, {reached[1] / ours_time:.1f}x counting its whole call")
    else:
        print(f"  NeuroSurgeon never held a subnetwork as good in {ns_epochs} epochs: modprobe "
              f">= {train_time / fit_time[0]:.1f}x faster in mask training, "
              f">= {train_time / ours_time:.1f}x counting its whole call")
    print(f"  NeuroSurgeon's whole schedule: {ns_epochs} epochs, {train_time:.0f} s, density "
          f"{density:.3%}, keep-only val acc {acc:.3f}")


# --------------------------------------------------------------------- (d) necessity
def part_d(setup: MiniLMSetup, config: MaskConfig) -> None:
    """The default necessity search against the sufficient search alone, one call each."""
    print("(d) necessity search: whole train_subnetwork call, MiniLM, all 36 encoder matrices")
    times = {}
    for necessity in ("none", "peel"):
        start = time.perf_counter()
        found = train_subnetwork(setup.hm, setup.train, dataclasses.replace(
            config, necessity=necessity), validation=setup.val, progress=False)
        times[necessity] = time.perf_counter() - start
        rounds = found.necessity.get("rounds") or []
        print(f"  necessity={necessity!r}: {times[necessity]:.0f} s, S1 density "
              f"{found.density:.3%}, keep-only val acc {found.metrics['val_accuracy']:.3f}"
              + (f", {len(rounds)} peeled rounds, necessary set {found.necessary_density:.3%}, "
                 f"subroutine broken: {found.necessity['broken']}" if rounds else ""))
    print(f"  the default (peel) costs {times['peel'] / times['none']:.1f}x the sufficient search")


# --------------------------------------------------------------------- (c) memory
def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _peak_child(side: str, steps: int, queue) -> None:
    torch.set_num_threads(2)
    setup = MiniLMSetup(n_train=32, n_val=32)
    inputs, targets = setup.batch
    if side == "modprobe":
        names = select_params(setup.hm, MaskConfig(params=ENCODER))
        step = masked_stepper(setup.hm, setup.train, names, setup.batch)
    else:
        step = lambda run=NeuroSurgeonRun(setup, 1e-8): run.step(inputs, targets)  # noqa: E731
    base = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (Linux >= 4.0)
    with setup.hm.evaluating():
        for _ in range(steps):
            step()
    queue.put((base, _rss_kib("VmHWM")))


def part_c(sides: list[str], steps: int) -> None:
    print("(c) peak memory of mask training (fresh process per side, RSS)")
    ctx = multiprocessing.get_context("spawn")
    for side in sides:
        queue = ctx.Queue()
        child = ctx.Process(target=_peak_child, args=(side, steps, queue))
        child.start()
        base, peak = queue.get()
        child.join()
        print(f"  {side}: peak {peak / 1024:.0f} MiB, {(peak - base) / 1024:+.0f} MiB over the "
              "loaded model and data")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and epochs")
    parser.add_argument("--reps", type=int, default=None, help="timing repetitions (default 11)")
    parser.add_argument("--parts", default="a,b,c,converge,d",
                        help="comma-separated subset of a, b, c, converge, d (default: all)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    reps = args.reps or (5 if args.quick else 11)
    setup = MiniLMSetup(n_train=64 if args.quick else 128, n_val=128)
    if "a" in parts:
        part_a(setup, reps)
    config = MaskConfig(params=ENCODER, l0_lambda=300.0, necessity="none",
                        **({"epochs": 10} if args.quick else {}))
    have_ns = neurosurgeon_available()
    if have_ns and "b" in parts:
        part_b_step(setup, config, reps)
    elif not have_ns:
        print("(b) skipped: NeuroSurgeon is not installed here; see this script's docstring for "
              "the benchmark environment (pip install neurosurgeon==0.1.0 in a separate venv)")
    if "c" in parts:
        part_c(["modprobe", "neurosurgeon"] if have_ns else ["modprobe"], steps=3 if args.quick else 5)
    if have_ns and "converge" in parts:
        print("(b, continued) wall time to a converged subnetwork of equal quality")
        part_b_converge(setup, config, ns_epochs=10 if args.quick else NS_EPOCHS)
    if "d" in parts:
        part_d(setup, config)


if __name__ == "__main__":
    main()
