"""modprobe: does a network implement each subroutine of a compositional task in its own subnetwork?

Pipeline: models -> tasks -> pruning -> ablation -> probes -> report.
"""
from . import ablation, probes, pruning, scratch, tasks, validate
from .ablation import AblationConfig
from .analysis import Analysis, AnalysisConfig, analyze
from .comparison import Comparison, compare
from .fitting import FitConfig
from .models import HookedModel, load_model, reinitialize, wrap
from .probes import ProbeConfig
from .pruning import MaskConfig
from .runs import load_run
from .subroutine import Subroutine
from .sweeps import sweep

__all__ = ["AblationConfig", "Analysis", "AnalysisConfig", "Comparison", "FitConfig", "HookedModel",
           "MaskConfig", "ProbeConfig", "Subroutine", "ablation",
           "analyze", "compare", "load_model", "load_run", "probes", "pruning", "reinitialize", "scratch",
           "sweep", "tasks", "validate", "wrap"]
__version__ = "0.1.0"
