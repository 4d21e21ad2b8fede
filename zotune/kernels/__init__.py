"""Passes over the parameters: perturbed copies and fused updates (torch path; CUDA kernels later)."""

from zotune.kernels.apply import apply_update_, perturbed_copy
from zotune.kernels.rounding import stochastic_round

__all__ = ["apply_update_", "perturbed_copy", "stochastic_round"]
