"""LOZO twin (Chen et al., arXiv 2410.07698): MeZO with low-rank directions U Vᵀ, V kept ν steps.

For a matrix W ∈ R^{m×n} with rank r < min(m, n) (vectors and other matrices: dense z):

    V ∈ R^{n×r} Gaussian from mix(seed, LAZY, t // ν);  U ∈ R^{m×r} fresh each step (noise kind)
    Z = U Vᵀ (not rescaled), then MeZO's step along Z.

Tolerance rtol=1e-5, atol=1e-6: Z is the same product as the engine's, so losses agree bit for
bit while the update rounds like MeZO's.
"""

from __future__ import annotations

import torch

from reference.low_rank import LowRankReference
from reference.noise import LAZY, draw, mix

METHOD = "lozo"
TOLERANCE = dict(rtol=1e-5, atol=3e-7)


class Reference(LowRankReference):
    def __init__(self, named_params, rank: int = 2, refresh_every: int = 50, **kwargs):
        super().__init__(named_params, rank=rank, refresh_every=refresh_every, **kwargs)

    def low_rank(self, seed: int, name: str, m: int, n: int) -> torch.Tensor:
        v = draw(mix(self.seed, LAZY, self.t // self.refresh_every), name, (n, self.rank))
        u = draw(seed, name, (m, self.rank), self.noise)
        return u @ v.T
