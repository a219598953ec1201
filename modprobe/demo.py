"""``make demo``: the bundled pretrained MiniLM against its random-init twins, end to end.

Small sizes for a 2-core CPU: the language task (agreement and anaphora, 384 training
sentences), masks over the MLP weight matrices of the top three blocks with λ = 300 (pretrained
transformers need a far larger λ than small MLPs), 80 random controls per subnetwork, 3-fold
probes of every block's output, two seeds. The twins are trained from scratch for at most
``SCRATCH_EPOCHS`` epochs, a budget in which MiniLM's architecture does not learn the task
(``docs/comparison.md`` has what it takes); the comparison then reports them as not having
learned it and compares nothing, rather than set a solved task against an unsolved one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from . import tasks
from .analysis import AnalysisConfig
from .comparison import Comparison, compare
from .fitting import FitConfig
from .models import load_model


SCRATCH_EPOCHS = 10


def demo_config(seed: int = 0) -> AnalysisConfig:
    """The demo's settings (also what ``modprobe compare --quick`` would pick for MiniLM)."""
    return AnalysisConfig.quick(seed=seed, fit=FitConfig(epochs=6, seed=seed),
                                mask_params=tuple(f"blocks.{i}.mlp.*.weight" for i in (3, 4, 5)),
                                mask_epochs=10, l0_lambda=300.0,
                                scratch_fit=FitConfig.scratch(epochs=SCRATCH_EPOCHS, seed=seed),
                                probe_hooks=tuple(f"blocks.{i}.hook_out" for i in range(6)))


def run_demo(out: str | Path = "runs/demo", seeds: Sequence[int] = (0, 1)) -> Comparison:
    model = load_model("minilm")
    task = tasks.load("language", seed=0, n_train=384, n_test=96)
    print(f"model: {model}\ntask: {task.describe()}\n")
    return compare(model, task, seeds=seeds, out=out, config=demo_config())
