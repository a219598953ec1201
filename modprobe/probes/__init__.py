"""Linear probes of task constituents per hook point, with control tasks.

``decodability(model, inputs, {name: labels})`` -> :class:`ProbeReport`.
"""
from .activations import POOLINGS
from .decodability import MEASURES, ProbeConfig, decodability
from .erasure import Erasure, ErasureReport, erase, erased, erasure_effects
from .report import ProbeReport

__all__ = ["MEASURES", "POOLINGS", "Erasure", "ErasureReport", "ProbeConfig", "ProbeReport", "decodability", "erase",
           "erased", "erasure_effects"]
