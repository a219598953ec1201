"""``make demo``: pretrained models against their random-init twins, end to end, in two parts.

- **language**: the bundled pretrained MiniLM on agreement x anaphora (384 training sentences),
  masks over the MLP weight matrices of the top three blocks with λ = 300 (pretrained
  transformers need a far larger λ than small MLPs), 80 random controls per subnetwork, 3-fold
  probes of every block's output. The twins are trained from scratch for at most
  ``SCRATCH_EPOCHS`` epochs, a budget in which MiniLM's architecture does not learn the task
  (``docs/comparison.md`` has what it takes); the comparison reports them as not having learned
  it, stops their analysis after the fit and compares nothing, rather than set a solved task
  against an unsolved one.
- **vision**: a small CNN pretrained here (:func:`pretrained_shape_cnn`, naming both shapes of a
  scene) against twins of it, both trained on inside x contact with one recipe (up to 30 epochs,
  stopping at 0.95 on held-out training images), a budget in which both arms learn the task, so
  the seeds give intervals.

Both parts use two seeds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from . import tasks
from .analysis import AnalysisConfig
from .comparison import Comparison, compare
from .fitting import FitConfig
from .models import load_model

SCRATCH_EPOCHS = 10
IMAGE_SIZE = 32


def demo_config(seed: int = 0) -> AnalysisConfig:
    """The language part's settings (also what ``modprobe compare --quick`` would pick for
    MiniLM)."""
    return AnalysisConfig.quick(seed=seed, fit=FitConfig(epochs=6, seed=seed),
                                mask_params=tuple(f"blocks.{i}.mlp.*.weight" for i in (3, 4, 5)),
                                mask_epochs=10, l0_lambda=300.0,
                                scratch_fit=FitConfig.scratch(epochs=SCRATCH_EPOCHS, seed=seed),
                                probe_hooks=tuple(f"blocks.{i}.hook_out" for i in range(6)))


def vision_config(seed: int = 0, epochs: int = 60, mask_epochs: int = 20, n_random: int = 80,
                  probe_cv: int = 3, twin_check: bool = True, max_rounds: int = 8
                  ) -> AnalysisConfig:
    """The vision comparison's settings. Both arms train with one recipe, so that they differ
    only in where they start: the whole network at learning rate 3e-3 (10% warm-up, cosine
    decay, gradients clipped to norm 1) for at most ``epochs``, stopping once 10% of the
    training images held out score 0.95. Masks over every weight with λ in (1, 10)."""
    recipe = FitConfig.scratch(lr=3e-3, backbone_lr=3e-3, epochs=epochs, stop_at=0.95,
                               batch_size=64, seed=seed)
    return AnalysisConfig(
        seed=seed, fit=recipe, scratch_fit=recipe, mask_params=("*.weight",),
        mask_epochs=mask_epochs, l0_lambda=(1.0, 10.0), n_random=n_random, complement=False,
        probe_cv=probe_cv, twin_check=twin_check, max_rounds=max_rounds)


def pretrained_shape_cnn(image_size: int = IMAGE_SIZE, n_images: int = 3072, epochs: int = 25,
                         seed: int = 0, verbose: bool = True) -> nn.Module:
    """A CNN pretrained to name both shapes of a scene (outer x inner shape, 9 classes) on vision
    images of another task seed (1000) than any comparison uses; its classifier is dropped, so a
    fitted head reads its pooled 32 features. Stands in for pretrained vision weights, which
    nothing here downloads."""
    source = tasks.load("vision", seed=1000, n_train=8, n_test=n_images, image_size=image_size)
    x = source.constituents.inputs
    labels = source.constituents.labels
    y = labels["outer_shape"] * 3 + labels["inner_shape"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 9))
        opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
        for epoch in range(epochs):
            order = torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch))
            for i in range(0, len(y), 64):
                idx = order[i:i + 64]
                loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    with torch.no_grad():
        accuracy = float((net.eval()(x).argmax(-1) == y).float().mean())
    if verbose:
        print(f"vision pretraining (outer x inner shape, 9 classes): train accuracy "
              f"{accuracy:.3f}")
    net[-1] = nn.Identity()
    return net.eval()


def run_demo(out: str | Path = "runs/demo", seeds: Sequence[int] = (0, 1),
             parts: Sequence[str] = ("language", "vision")) -> dict[str, Comparison]:
    """Each part's comparison under ``out/<part>``."""
    out = Path(out)
    found = {}
    if "language" in parts:
        model = load_model("minilm")
        task = tasks.load("language", seed=0, n_train=384, n_test=96)
        print(f"model: {model}\ntask: {task.describe()}\n")
        found["language"] = compare(model, task, seeds=seeds, out=out / "language",
                                    config=demo_config())
    if "vision" in parts:
        task = tasks.load("vision", seed=0, image_size=IMAGE_SIZE, n_train=1024, n_test=256)
        print(f"task: {task.describe()}\n")
        config = vision_config(epochs=30, mask_epochs=10, n_random=40, probe_cv=2,
                               twin_check=False, max_rounds=4)
        found["vision"] = compare(pretrained_shape_cnn(), task, seeds=seeds, out=out / "vision",
                                  config=config)
    return found
