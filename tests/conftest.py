"""Test setup: nothing may reach the network; heavy shared models are built once per session."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # tiny test models: one thread avoids contention stalls


@pytest.fixture(scope="session")
def minilm():
    import modprobe as mp

    return mp.load_model("minilm")


@pytest.fixture
def cli_log(caplog, monkeypatch):
    """``caplog`` with the ``modprobe`` loggers' warnings in it, whatever an earlier
    ``cli.main`` left set (it stops propagation and may raise the level)."""
    import logging

    monkeypatch.setattr(logging.getLogger("modprobe"), "propagate", True)
    caplog.set_level(logging.WARNING, logger="modprobe")
    return caplog
