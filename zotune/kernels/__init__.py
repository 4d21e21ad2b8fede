"""Passes over the parameters: perturbed copies and fused updates (torch path; CUDA kernels later)."""

from zotune.kernels.apply import perturbed_copy, update_
from zotune.kernels.rounding import stochastic_round

__all__ = ["perturbed_copy", "stochastic_round", "update_"]
