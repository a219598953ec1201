"""Functional isolation of subnetworks: ablate each one, keep only it, and compare with
size-matched random ablations, with bootstrap CIs, empirical p-values and Holm's correction.

A mask alone proves nothing: a subroutine's subnetwork is *isolated* when removing it hurts that
subroutine more than removing random weights of the same size per tensor does, and hurts the
other subroutines no more than such random removals (Lepori et al. 2023, "Break It Down").
"""
from ._report import AblationReport
from ._run import STRATEGIES, AblationConfig, run
from ._scores import PUBLISHED, break_it_down_scores, mean_score
from ._verdict import VERDICTS, VerdictRules

__all__ = ["AblationConfig", "AblationReport", "PUBLISHED", "STRATEGIES", "VERDICTS",
           "VerdictRules", "break_it_down_scores", "mean_score", "run"]
