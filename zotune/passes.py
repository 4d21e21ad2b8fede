"""The two passes a ZO step makes over a parameter, chunk by chunk (no full-size temporaries).

``perturbed_copy`` builds the tensor a module reads during a perturbed forward (θ + c·d); θ itself
is never written, so restoring is free and exact. ``update_`` is the only in-place pass,
θ ← decay·θ + delta, with stochastic rounding (or an fp32 master copy) for half precision. Both
take the direction or delta as a function of a chunk range, so a dense direction is regenerated
chunk by chunk and never materialised. Plain torch; fused GPU kernels would replace these two
functions without changing their contract.

Stochastic rounding, why: a ZO update lr·g·z is mostly below half an ulp of a bf16/fp16 weight, so
round-to-nearest drops it and training stalls. Rounding up with probability equal to the distance
to the lower neighbour (over the gap) makes the rounded value an unbiased estimate of the exact one.
"""

from __future__ import annotations

from typing import Callable

import torch

from zotune.rng import ROUNDING, CounterRNG

class WeightOverflowError(FloatingPointError):
    """A half-precision update whose result is beyond the dtype's range (it would be written as inf)."""


def _chunks(numel: int, chunk: int):
    for start in range(0, numel, chunk):
        yield start, min(start + chunk, numel)


def perturbed_copy(
    p: torch.Tensor,
    direction: Callable[[int, int], torch.Tensor],
    scale: float,
    chunk: int,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Return a new tensor fl(p + scale·d) in ``dtype`` (default p's dtype); p is left untouched.
    ``direction(a, b)`` gives the fp32 elements [a, b) of d."""
    src = p.detach().reshape(-1)
    out = torch.empty_like(src, dtype=dtype or src.dtype)
    for a, b in _chunks(src.numel(), chunk):
        d = direction(a, b)
        if src.dtype == out.dtype == torch.float32:
            torch.add(src[a:b], d, alpha=scale, out=out[a:b])
        else:
            out[a:b].copy_(torch.add(src[a:b], d, alpha=scale))  # computed in fp32, never in place
    return out.view_as(p)


def update_(
    p: torch.Tensor,
    delta: Callable[[int, int], torch.Tensor],
    chunk: int,
    decay: float = 1.0,
    master: torch.Tensor | None = None,
    rounding: tuple[CounterRNG, int, int] | None = None,
) -> None:
    """In place, chunk by chunk: θ ← decay·θ + delta, where ``delta(a, b)`` returns the fp32 delta
    of elements [a, b) of the flattened parameter.

    fp32: plain in-place arithmetic. Half precision: computed in fp32, then written back either
    from ``master`` (an fp32 copy updated in place, rounded to nearest), or with stochastic
    rounding driven by the ROUNDING stream of ``rounding = (rng, seed, key)`` (so it is
    replayable too), or with round-to-nearest when ``rounding`` is None.
    """
    flat = p.detach().view(-1)
    numel = flat.numel()
    mflat = master.view(-1) if master is not None else None
    for a, b in _chunks(numel, chunk):
        d = delta(a, b)
        if flat.dtype == torch.float32 or mflat is not None:
            target = flat if mflat is None else mflat
            if decay != 1.0:
                target[a:b].mul_(decay)
            target[a:b].add_(d)
            if mflat is not None:
                flat[a:b].copy_(mflat[a:b])
            continue
        x = flat[a:b].float()
        if decay != 1.0:
            x.mul_(decay)
        x.add_(d)
        if not bool(torch.isfinite(x).all()) or bool((x.abs() > torch.finfo(flat.dtype).max).any()):
            raise WeightOverflowError(
                f"an update would overflow {flat.dtype} weights (|θ| > {torch.finfo(flat.dtype).max:g}) at elements "
                f"[{a}, {b}); the chunk was not written. Lower the learning rate, or train in fp32")
        if rounding is None:
            flat[a:b].copy_(x)
        else:
            rng, seed, key = rounding
            u = rng.draw(seed, key, a, b - a, numel, "uniform", ROUNDING, device=flat.device)
            flat[a:b].copy_(stochastic_round(x, flat.dtype, u))

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
