"""Stochastic rounding of fp32 values to a half-precision dtype.

Why: a ZO update lr·g·z is mostly below half an ulp of a bf16/fp16 weight, so round-to-nearest
drops it and training stalls. Rounding up with probability equal to the distance to the lower
neighbour (over the gap) makes the rounded value an unbiased estimate of the exact one.
"""

from __future__ import annotations

import torch


def stochastic_round(x: torch.Tensor, dtype: torch.dtype, u: torch.Tensor) -> torch.Tensor:
    """Round fp32 ``x`` to ``dtype``, choosing between the two neighbours of ``x`` so that
    E[result] = x. ``u`` holds uniform [0, 1) draws, one per element (same shape as ``x``)."""
    near = x.to(dtype)
    near_f = near.float()
    toward = torch.where(near_f > x, -torch.inf, torch.inf).to(dtype)
    other = torch.nextafter(near, toward)
    gap = (other.float() - near_f).abs()
    p_other = (x - near_f).abs() / gap  # 0 when x is representable; nan/inf only at overflow
    return torch.where(u < p_other, other, near)
