"""The two passes a ZO step makes over a parameter, chunk by chunk (no full-size temporaries).

``perturbed_copy`` builds the tensor a module reads during a perturbed forward (θ + c·z); θ itself
is never written, so restoring is free and exact. ``apply_update_`` is the only in-place pass:
θ ← θ·(1 − lr·wd) − lr·g·z, with stochastic rounding (or an fp32 master copy) for half precision.
"""

from __future__ import annotations

import torch

from zotune.kernels.rounding import stochastic_round
from zotune.rng import DIRECTION, ROUNDING, NoiseSource

HALF = (torch.float16, torch.bfloat16)


def _chunks(numel: int, chunk: int):
    for start in range(0, numel, chunk):
        yield start, min(start + chunk, numel)


def perturbed_copy(
    p: torch.Tensor,
    noise: NoiseSource,
    seed: int,
    key: int,
    scale: float,
    kind: str,
    chunk: int,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Return a new tensor fl(p + scale·z) in ``dtype`` (default p's dtype); p is left untouched."""
    src = p.detach().reshape(-1)
    out = torch.empty_like(src, dtype=dtype or src.dtype)
    numel = src.numel()
    z = torch.empty(min(chunk, numel), dtype=torch.float32, device=src.device)
    for a, b in _chunks(numel, chunk):
        zc = noise.fill(z[: b - a], seed, key, a, numel, kind, DIRECTION)
        if src.dtype == out.dtype == torch.float32:
            torch.add(src[a:b], zc, alpha=scale, out=out[a:b])
        else:
            out[a:b].copy_(src[a:b].float().add_(zc, alpha=scale))
    return out.view_as(p)


def apply_update_(
    p: torch.Tensor,
    noise: NoiseSource,
    seed: int,
    key: int,
    coef: float,
    kind: str,
    chunk: int,
    decay: float = 1.0,
    master: torch.Tensor | None = None,
    stochastic: bool = True,
) -> None:
    """In place: θ ← decay·θ + coef·z(seed, key), where coef = −lr·g and decay = 1 − lr·wd.

    fp32: plain in-place arithmetic. Half precision: computed in fp32, then written back either
    from ``master`` (an fp32 copy updated in place, rounded to nearest), or with stochastic
    rounding driven by the ROUNDING stream of the same step seed (so it is replayable too), or
    with round-to-nearest when ``stochastic`` is False.
    """
    flat = p.detach().view(-1)
    numel = flat.numel()
    z = torch.empty(min(chunk, numel), dtype=torch.float32, device=flat.device)
    u = torch.empty_like(z) if (flat.dtype in HALF and master is None and stochastic) else None
    mflat = master.view(-1) if master is not None else None
    for a, b in _chunks(numel, chunk):
        zc = noise.fill(z[: b - a], seed, key, a, numel, kind, DIRECTION)
        if flat.dtype == torch.float32:
            if decay != 1.0:
                flat[a:b].mul_(decay)
            flat[a:b].add_(zc, alpha=coef)
            continue
        if mflat is not None:
            if decay != 1.0:
                mflat[a:b].mul_(decay)
            mflat[a:b].add_(zc, alpha=coef)
            flat[a:b].copy_(mflat[a:b])
            continue
        x = flat[a:b].float()
        if decay != 1.0:
            x.mul_(decay)
        x.add_(zc, alpha=coef)
        if u is None:
            flat[a:b].copy_(x)
        else:
            uc = noise.fill(u[: b - a], seed, key, a, numel, "uniform", ROUNDING)
            flat[a:b].copy_(stochastic_round(x, flat.dtype, uc))

