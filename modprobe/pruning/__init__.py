"""Subnetwork discovery: one learned binary weight mask per subroutine.

``train_subnetworks(model, {"A": data_a, "B": data_b}, MaskConfig())`` returns one
:class:`Subnetwork` per subroutine. Methods: continuous sparsification (default), hard-concrete
L0 gates, and magnitude pruning as a no-training baseline; more register with
:func:`methods.register`. :mod:`.layout` says how a mask is made of units (weights, neurons,
heads), for pruning and ablation alike.
"""
from . import layout, methods
from .config import NECESSITY, MaskConfig
from .subnetwork import Subnetwork
from .train import train_subnetwork, train_subnetworks

__all__ = ["NECESSITY", "MaskConfig", "Subnetwork", "layout", "methods", "train_subnetwork",
           "train_subnetworks"]
