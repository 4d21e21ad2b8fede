"""LOZO: ZO-SGD with low-rank directions U Vᵀ whose right factor is kept for ν steps.

Chen et al., "Enhancing Zeroth-order Fine-tuning for Language Models with Low-rank Structures"
(arXiv 2410.07698; code: github.com/optsuite/LOZO). For every matrix parameter W ∈ R^{m×n}
(a tensor of more dimensions is viewed as shape[0] × rest):

    V ∈ R^{n×r} ~ N(0, I), redrawn every ν steps ("lazy");  U ∈ R^{m×r} drawn fresh each step
    Z = U Vᵀ;  g = (L(θ + εZ) − L(θ − εZ)) / (2ε);  W ← W − lr·(g·Z + λ·W)

Non-matrix parameters use the dense stream z, as in the reference code; so do matrices with
min(m, n) ≤ r (a deviation: the reference code would confine, e.g., a 1×n head to the r-dim
span of V for ν steps). Second moment: with
standard normal (or Rademacher) entries E‖U Vᵀ‖²_F = m·n·r, i.e. r times the dense E‖z‖² = mn.
Like the paper and its code, zotune does NOT rescale Z, so the paper's learning rates apply
as given; compared with MeZO, divide lr by r for the same step size on matrices.

The reference code stores V (Σ n·r numbers). Here V is regenerated from
``mix(seed, LAZY, step // ν)`` and the parameter key whenever it is needed: state is 0 bytes,
for an extra n·r Gaussian draw per matrix per pass. U follows the optimizer's ``noise`` kind;
V is always Gaussian, as in the paper.

Forward passes per step: 2 (2n with ``num_directions=n``). State memory: 0 × params (plus the
fp32 master copy if ``master_weights=True``).
Defaults: rank r = 2, ν = 50, ε = 1e-3, lr = 1e-6 from the paper's OPT-13B search ranges and
example script (r ∈ {1, 2}, ν ∈ {50, 100}, lr ∈ {1e-6, 1e-7}). LOZO-M (momentum in the factor
space) is not implemented.
"""

from __future__ import annotations

import torch

from zotune.optim.mezo import MeZO
from zotune.optim.subzero import low_rank_shape
from zotune.perturb import Perturbed
from zotune.rng import mix

LAZY = 0x1A2F0  # salt of the seed of the lazy factor V


class LOZO(MeZO):
    """MeZO with LOZO's low-rank directions U Vᵀ (V lazy). ``loss = opt.step(closure)``.

    Args: ``rank`` r of U Vᵀ; ``refresh_every`` ν, steps between new V; the rest as MeZO.
    """

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0,
                 rank: int = 2, refresh_every: int = 50, **engine):
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if refresh_every < 1:
            raise ValueError(f"refresh_every must be >= 1, got {refresh_every}")
        super().__init__(params, lr=lr, eps=eps, weight_decay=weight_decay, **engine)
        self.rank = int(rank)
        self.refresh_every = int(refresh_every)

    def lazy_seed(self) -> int:
        """Seed of the current V factors: changes every ``refresh_every`` steps."""
        return mix(self.seed, LAZY, self.zo_step // self.refresh_every)

    def direction(self, e: Perturbed, seed: int) -> torch.Tensor | None:
        shape = low_rank_shape(e.param, self.rank)
        if shape is None:
            return None
        (m, n), r, dev = shape, self.rank, e.param.device
        v = self._source.noise(self.lazy_seed(), e.key, 0, n * r, n * r, "gaussian", device=dev)
        u = self._source.noise(seed, e.key, 0, m * r, m * r, self.noise, device=dev)
        return (u.view(m, r) @ v.view(n, r).T).view_as(e.param)
