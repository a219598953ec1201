"""Subnetwork discovery: one learned binary weight mask per subroutine.

``train_subnetworks(model, {"A": data_a, "B": data_b}, MaskConfig())`` returns one
:class:`Subnetwork` per subroutine. Methods: continuous sparsification (default), hard-concrete
L0 gates, and magnitude pruning as a no-training baseline.
"""
from .config import NECESSITY, MaskConfig
from .subnetwork import Subnetwork
from .train import train_subnetwork, train_subnetworks

__all__ = ["NECESSITY", "MaskConfig", "Subnetwork", "train_subnetwork", "train_subnetworks"]
