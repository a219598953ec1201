"""Model factories for the sweep tests (imported by name in worker processes)."""
import os
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn


def mlp(d_in: int = 8, width: int = 8, d_out: int = 4) -> nn.Module:
    """Named like ``modprobe.scratch.mlp`` (fc1, act1, fc2), so the same probe hooks apply."""
    return nn.Sequential(OrderedDict(fc1=nn.Linear(d_in, width), act1=nn.ReLU(),
                                     fc2=nn.Linear(width, d_out)))


def pretrained(d_in: int = 8, width: int = 8, d_out: int = 4) -> nn.Module:
    """Stands for a pretrained model: fixed weights that no random initialisation reproduces."""
    model = mlp(d_in, width, d_out)
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    return model


def dies_once(flag: str, d_in: int = 8, width: int = 8, d_out: int = 4) -> nn.Module:
    """Kill the calling process the first time (no exception: the process just ends)."""
    if not Path(flag).exists():
        Path(flag).write_text("died once\n")
        os._exit(17)
    return pretrained(d_in, width, d_out)
