"""Low-rank samplers: SubZero's random subspaces, ZO-Muon's projections and LOZO's lazy factors.

Each views a parameter with two or more dimensions as a matrix W ∈ R^{m×n} (shape[0] × rest) and
gives it a rank-r draw. Vectors, and matrices with min(m, n) ≤ r, take the dense stream
(``low_rank_shape``): there a rank-r factor cannot lower the rank and would only pin the matrix to
an r-dimensional subspace for a whole refresh period (a 1×n head would move along one fixed line).
The factors are *regenerated* from their seeds whenever needed: 0 bytes of state, for a few extra
draws (and, for SubZero and ZO-Muon, thin QRs) per matrix per pass; the orthonormal bases may be
cached for two periods instead (``cache_bases``), with the same numbers.
"""

from __future__ import annotations

import math

import torch

from zotune.engine import Step
from zotune.perturb import Perturbed
from zotune.rng import mix
from zotune.samplers.base import Sampler, register_sampler, whole_number

SUBSPACE = 0x5B2E0  # salt of SubZero's refresh seed: subspaces are independent of the step's draws
LAZY = 0x1A2F0  # salt of the seed of LOZO's lazy factor V
PROJECTED = 0x9E37  # salt of ZO-Muon's projection P


def low_rank_shape(p: torch.Tensor, rank: int) -> tuple[int, int] | None:
    """(m, n) a parameter is viewed as for a rank-``rank`` draw, or None for the dense stream."""
    if p.dim() < 2 or p.numel() == 0:
        return None
    m, n = p.shape[0], p.numel() // p.shape[0]
    return (m, n) if rank < min(m, n) else None


class _LowRankSampler(Sampler):
    """Rank-r draws with factors redrawn every ``refresh_every`` steps."""

    def __init__(self, rank: int, refresh_every: int):
        super().__init__()
        self.rank = whole_number("rank", rank, 1)
        self.refresh_every = whole_number("refresh_every", refresh_every, 1)

    def check_rank_fits(self) -> None:
        """Refuse a rank that no bound trainable matrix is larger than: every parameter would take the
        dense stream (MeZO's draws) while the run claims to be low-rank. Called for a rank the user
        chose (``build_optimizer``); a default rank on a small model keeps the documented fallback."""
        sides = [(min(e.param.shape[0], e.param.numel() // e.param.shape[0]), e.name) for e in self.params
                 if e.param.dim() >= 2 and e.param.numel() > 0]
        if sides and all(low_rank_shape(e.param, self.rank) is None for e in self.params):
            side, name = max(sides, key=lambda s: s[0])
            raise ValueError(
                f"rank {self.rank} is not smaller than any trainable matrix (the largest has {side} as its smaller "
                f"side: {name or 'a parameter'}), so every parameter would take dense draws, as in MeZO; "
                f"use a rank below {side} (LOZO's default is 2, SubZero's 24)")

    def draw(self, e: Perturbed, seed: int, t: Step) -> torch.Tensor | None:
        """A·Bᵀ from ``factors``, materialised; None (the dense stream) where there are none."""
        f = self.factors(e, seed, t)
        return None if f is None else (f[0] @ f[1].T).view_as(e.param)

    def period(self, t: Step) -> int:
        """Index of the refresh period of step ``t``: the factors change when it does."""
        return t.index // self.refresh_every

    def period_seed(self, t: Step, salt: int) -> int:
        """Seed of the factors at step ``t``: changes every ``refresh_every`` steps."""
        return mix(t.run_seed, salt, self.period(t))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, refresh_every={self.refresh_every})"


class _BasisSampler(_LowRankSampler):
    """A low-rank sampler whose draws lie in seeded orthonormal bases, redrawn every period;
    ``cache_bases`` keeps the bases of this period and the one before instead of regenerating them
    (a Gaussian draw and a QR per matrix) in every forward pass; the numbers are the same either way."""

    salt = 0

    def __init__(self, rank: int, refresh_every: int, cache_bases: bool = True):
        super().__init__(rank, refresh_every)
        self.cache_bases = bool(cache_bases)
        self.cached: dict[int, dict[int, tuple[torch.Tensor, ...]]] = {}  # period -> key -> bases

    def orthonormal(self, seed: int, key: int, rows: int, cols: int, device) -> torch.Tensor:
        """Q of the QR of a seeded rows×cols Gaussian: a Haar-random orthonormal basis (fp32)."""
        g = self.rng.draw(seed, key, 0, rows * cols, rows * cols, "gaussian", device=device)
        return torch.linalg.qr(g.view(rows, cols), mode="reduced").Q

    def bases(self, e: Perturbed, t: Step) -> tuple[torch.Tensor, ...] | None:
        """The orthonormal bases of ``e``'s draws in the period of step ``t`` (``make_bases``), or
        None where ``e`` takes dense draws."""
        shape = low_rank_shape(e.param, self.rank)
        if shape is None:
            return None
        period = self.period(t)
        found = self.cached.get(period, {}).get(e.key)
        if found is not None:
            return found
        made = self.make_bases(e, self.period_seed(t, self.salt), *shape)
        if self.cache_bases:
            if period not in self.cached and len(self.cached) >= 2:  # keep this period and the one before
                del self.cached[min(self.cached)]
            self.cached.setdefault(period, {})[e.key] = made
        return made

    def make_bases(self, e: Perturbed, seed: int, m: int, n: int) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def cache_bytes(self) -> int:
        """Bytes of the cached bases (fp32), for at most two periods."""
        return sum(b.numel() * 4 for period in self.cached.values() for bases in period.values() for b in bases)


@register_sampler("subspace")
class Subspace(_BasisSampler):
    """SubZero's draws (Yu et al., arXiv 2410.08989): for a matrix W ∈ R^{m×n},

        U = QR(G_U).Q ∈ R^{m×r},  V = QR(G_V).Q ∈ R^{n×r}   # G Gaussian, refreshed every F steps
        Z = √(mn)/r · U Z₀ Vᵀ,      Z₀ ∈ R^{r×r} of the noise kind, fresh for every seed

    The scale keeps the dense second moment, E‖Z‖²_F = (mn/r²)·E‖Z₀‖²_F = mn, so learning rates
    tuned for dense draws carry over. U, V are Haar-distributed (G always Gaussian).
    ``cache_bases`` (default on): keep each period's U, V (Σ r·(m+n) fp32 numbers per matrix, for
    at most two periods: 45 MB, 8% of the weights, on SmolLM2-135M at rank 32) instead of
    regenerating them; ``cache_bases=False`` regenerates them and keeps nothing.
    """

    salt = SUBSPACE

    def __init__(self, rank: int = 24, refresh_every: int = 1000, cache_bases: bool = True):
        super().__init__(rank, refresh_every, cache_bases)

    def in_subspace(self, e: Perturbed) -> bool:
        """Whether ``e`` gets subspace draws (False: it takes the dense stream)."""
        return low_rank_shape(e.param, self.rank) is not None

    def make_bases(self, e: Perturbed, seed: int, m: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        r, dev = self.rank, e.param.device
        return self.orthonormal(mix(seed, 1), e.key, m, r, dev), self.orthonormal(mix(seed, 2), e.key, n, r, dev)

    def basis(self, e: Perturbed, t: Step) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(U, V), the orthonormal bases (m×r, n×r) of ``e``'s subspace at step ``t``, or None where
        ``e`` takes dense draws. Every draw of the period is U·C·Vᵀ for an r×r core C (``core``), so
        a rule can keep its state and take its LMO on the core (AdaNAGED's subspace spectral step)."""
        return self.bases(e, t)

    def core(self, e: Perturbed, direction, t: Step) -> torch.Tensor:
        """The r×r core of ``direction`` (((seed, weight), ...)) on ``e``: Σ w·√(mn)/r·Z₀(seed), so
        that the direction materialised is U·core·Vᵀ; 2 r² numbers per draw, no m×n product."""
        m = e.param.shape[0]
        n, r = e.param.numel() // m, self.rank
        total = torch.zeros(r, r, dtype=torch.float32, device=e.param.device)
        for seed, w in direction:
            z0 = self.rng.draw(seed, e.key, 0, r * r, r * r, self.kind, device=e.param.device).view(r, r)
            total.add_(z0, alpha=w)
        return total.mul_(math.sqrt(m * n) / r)

    def factors(self, e: Perturbed, seed: int, t: Step) -> tuple[torch.Tensor, torch.Tensor] | None:
        bases = self.basis(e, t)
        if bases is None:
            return None
        (u, v), r = bases, self.rank
        z0 = self.rng.draw(seed, e.key, 0, r * r, r * r, self.kind, device=e.param.device).view(r, r)
        m, n = u.shape[0], v.shape[0]
        return (u * (math.sqrt(m * n) / r)) @ z0, v


@register_sampler("projected")
class Projected(_BasisSampler):
    """ZO-Muon's draws (OPTML-Group, arXiv 2602.17155): for a matrix W ∈ R^{m×n},

        P = QR(G).Q ∈ R^{m×r}     # G Gaussian, refreshed every K steps (the left side only)
        Z = P·u,  u ∈ R^{r×n} of the noise kind, fresh for every seed

    Not rescaled, as in ZO-Muon's code: E‖P u‖²_F = r·n, r/m of the dense second moment, so the
    same ε perturbs less. Every draw of a period lies in the column space of P, and an estimate is
    P·Ĝ for an r×n core Ĝ (``core``), on which ZO-Muon takes its Newton–Schulz step.
    ``cache_bases``: keep P per matrix for at most two periods (Σ m·r fp32 numbers each).
    """

    salt = PROJECTED

    def __init__(self, rank: int = 64, refresh_every: int = 100, cache_bases: bool = True):
        super().__init__(rank, refresh_every, cache_bases)

    def make_bases(self, e: Perturbed, seed: int, m: int, n: int) -> tuple[torch.Tensor]:
        return (self.orthonormal(seed, e.key, m, self.rank, e.param.device),)

    def basis(self, e: Perturbed, t: Step) -> torch.Tensor | None:
        """P, the orthonormal m×r basis of ``e``'s draws at step ``t``, or None where ``e`` takes
        dense draws."""
        found = self.bases(e, t)
        return None if found is None else found[0]

    def coefficients(self, e: Perturbed, seed: int) -> torch.Tensor:
        """u(seed), the r×n coefficients of one draw P·u."""
        m = e.param.shape[0]
        n, r = e.param.numel() // m, self.rank
        return self.rng.draw(seed, e.key, 0, r * n, r * n, self.kind, device=e.param.device).view(r, n)

    def core(self, e: Perturbed, direction, t: Step) -> torch.Tensor:
        """Σ w·u(seed) over ``direction`` (((seed, weight), ...)): the r×n core whose P·core is the
        direction materialised on ``e``."""
        total = None
        for seed, w in direction:
            u = self.coefficients(e, seed).mul_(w)
            total = u if total is None else total.add_(u)
        return total

    def factors(self, e: Perturbed, seed: int, t: Step) -> tuple[torch.Tensor, torch.Tensor] | None:
        p = self.basis(e, t)
        return None if p is None else (p, self.coefficients(e, seed).T)


@register_sampler("lowrank")
class LowRank(_LowRankSampler):
    """LOZO's draws (Chen et al., arXiv 2410.07698): for a matrix W ∈ R^{m×n},

        V ∈ R^{n×r} ~ N(0, I), redrawn every ν steps ("lazy");  U ∈ R^{m×r} of the noise kind,
        fresh for every seed;  Z = U Vᵀ

    Not rescaled, as in the paper: E‖U Vᵀ‖²_F = m·n·r, r times the dense E‖z‖² = mn, so a learning
    rate tuned for dense draws should be divided by r.
    """

    def __init__(self, rank: int = 2, refresh_every: int = 50):
        super().__init__(rank, refresh_every)

    def factors(self, e: Perturbed, seed: int, t: Step) -> tuple[torch.Tensor, torch.Tensor] | None:
        shape = low_rank_shape(e.param, self.rank)
        if shape is None:
            return None
        (m, n), r, dev = shape, self.rank, e.param.device
        v = self.rng.draw(self.period_seed(t, LAZY), e.key, 0, n * r, n * r, "gaussian", device=dev)
        u = self.rng.draw(seed, e.key, 0, m * r, m * r, self.kind, device=dev)
        return u.view(m, r), v.view(n, r)
