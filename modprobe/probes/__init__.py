"""Linear probes of task constituents per hook point, with control tasks.

``decodability(model, inputs, {name: labels})`` -> :class:`ProbeReport`; what each row reports
comes from the measures registered in :mod:`.measures`.
"""
from . import measures
from .activations import POOLINGS, RENAMED_VALUES
from .decodability import ProbeConfig, decodability
from .erasure import Erasure, ErasureReport, erase, erased, erasure_effects
from .measures import ProbeBatch, ProbeMeasure
from .report import ProbeReport

__all__ = ["POOLINGS", "RENAMED_VALUES", "Erasure", "ErasureReport", "ProbeBatch", "ProbeConfig",
           "ProbeMeasure", "ProbeReport", "decodability", "erase", "erased", "erasure_effects",
           "measures"]
