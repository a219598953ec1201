"""modprobe: does a network implement each subroutine of a compositional task in its own subnetwork?

Pipeline: models -> tasks -> pruning -> ablation -> probes -> report.
"""
from . import ablation, probes, pruning, scratch, tasks, validate
from .analysis import Analysis, AnalysisConfig, analyze
from .comparison import Comparison, compare
from .models import HookedModel, load_model, reinitialize, wrap
from .subroutine import Subroutine
from .sweeps import sweep

__all__ = ["Analysis", "AnalysisConfig", "Comparison", "HookedModel", "Subroutine", "ablation",
           "analyze", "compare", "load_model", "probes", "pruning", "reinitialize", "scratch",
           "sweep", "tasks", "validate", "wrap"]
__version__ = "0.1.0"
