"""SubZero twin (Yu et al., arXiv 2410.08989): MeZO with directions in random subspaces.

For a matrix W ∈ R^{m×n} with rank r < min(m, n) (vectors and other matrices: dense z):

    U = Q of QR(G_U) ∈ R^{m×r},  V = Q of QR(G_V) ∈ R^{n×r}   G Gaussian, new every F steps
    Z = √(mn)/r · U Z₀ Vᵀ,   Z₀ ∈ R^{r×r} fresh each step (the optimizer's noise kind)
    then MeZO's step along Z.

The subspace seeds are mix(seed, SUBSPACE, t // F) mixed with 1 (for U) and 2 (for V).
Tolerance rtol=1e-5, atol=1e-6: Z is formed by the same products as the engine's (the twin's
own QR is torch's, the basis the engine's docstring specifies), so losses agree bit for bit
while the update rounds like MeZO's.
"""

from __future__ import annotations

import math

import torch

from reference.low_rank import LowRankReference
from reference.noise import SUBSPACE, draw, mix

METHOD = "subzero"
TOLERANCE = dict(rtol=1e-5, atol=3e-7)


class Reference(LowRankReference):
    def __init__(self, named_params, rank: int = 24, refresh_every: int = 1000, **kwargs):
        super().__init__(named_params, rank=rank, refresh_every=refresh_every, **kwargs)

    def low_rank(self, seed: int, name: str, m: int, n: int) -> torch.Tensor:
        r = self.rank
        base = mix(self.seed, SUBSPACE, self.t // self.refresh_every)
        u = torch.linalg.qr(draw(mix(base, 1), name, (m, r))).Q
        v = torch.linalg.qr(draw(mix(base, 2), name, (n, r))).Q
        z0 = draw(seed, name, (r, r), self.noise)
        return math.sqrt(m * n) / r * u @ z0 @ v.T
