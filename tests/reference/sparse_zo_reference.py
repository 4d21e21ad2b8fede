"""SparseZO twin (ZO-Bench's gradient sparsity, arXiv 2402.11592): MeZO along z ⊙ M.

    M = (u < p) per coordinate, u uniform from mix(seed, MASK, t // k) and the parameter
    z' = M ⊙ z;   g = (L(θ + εz') − L(θ − εz')) / 2ε;   θ ← θ − lr·(g·z' + λθ)

Weight decay shrinks every coordinate, masked or not.
Tolerance rtol=1e-5, atol=1e-6: losses bit-identical, update rounding as MeZO's twin.
"""

from __future__ import annotations

from reference.mezo_reference import Reference as MeZOReference
from reference.noise import MASK, mix

METHOD = "sparse-zo"
TOLERANCE = dict(rtol=1e-5, atol=3e-7)


class Reference(MeZOReference):
    def __init__(self, named_params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0,
                 density: float = 0.8, resample_every: int = 1, **common):
        super().__init__(named_params, lr=lr, eps=eps, weight_decay=weight_decay, **common)
        self.density, self.resample_every = density, resample_every

    def directions(self):
        mask_seed = mix(self.seed, MASK, self.t // self.resample_every)
        masks = {n: self.z(mask_seed, n, "uniform") < self.density for n in self.params}
        return [{n: self.z(s, n) * masks[n] for n in self.params}
                for s in self.direction_seeds(self.directions_now())]
