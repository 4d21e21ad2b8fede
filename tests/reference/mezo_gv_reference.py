"""MeZO-GV twin (Jin, Cen, Tan, arXiv 2601.04710): ZO-SGD along a guiding vector built from a
scored pool of directions.

Per pool j (n = num_directions pools), with seeds s_i = mix(step seed, j, i), i < M:
    F_i = L(θ + ε z(s_i));   T = the ⌊αM⌋ lowest F (stable order), W = the rest
    v_j = mean_{i∈T} z(s_i) − mean_{i∈W} z(s_i);   g_j = (L(θ + εv_j) − L(θ − εv_j)) / 2ε
θ ← θ − lr·((1/n) Σ_j g_j v_j + λθ)
Returns the mean over pools of (L(θ + εv) + L(θ − εv))/2.
Tolerance rtol=1e-4, atol=3e-7 (on each step): with a pool of 2, v = z_best − z_worst is the
engine's v bit for bit; with larger pools the means are rounded in another order, the perturbed
weights differ in the last bit, fp32 rounds the two losses differently and g = ΔL/2ε carries
that as ~1e-7/ε ≈ 1e-4 absolute (measured 1.5e-5 relative on pool 4), and so does the step.
"""

from __future__ import annotations

import math

import torch

from reference.mezo_reference import Reference as MeZOReference
from reference.noise import mix

METHOD = "mezo-gv"
TOLERANCE = dict(rtol=1e-4, atol=3e-7)


class Reference(MeZOReference):
    def __init__(self, named_params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0,
                 pool_size: int = 2, split_ratio: float = 0.5, **common):
        super().__init__(named_params, lr=lr, eps=eps, weight_decay=weight_decay, **common)
        self.pool_size, self.split_ratio = pool_size, split_ratio

    def guiding_vector(self, closure, pool: int) -> dict[str, torch.Tensor]:
        zs = [{n: self.z(mix(self.step_seed(), pool, i), n) for n in self.params} for i in range(self.pool_size)]
        scores = [self.loss_at(closure, z, self.eps) for z in zs]
        order = sorted(range(self.pool_size), key=lambda i: scores[i])
        elite = math.floor(self.split_ratio * self.pool_size)
        top, rest = order[:elite], order[elite:]
        return {n: sum(zs[i][n] / len(top) for i in top) - sum(zs[i][n] / len(rest) for i in rest)
                for n in self.params}

    @torch.no_grad()
    def step(self, closure) -> float:
        vs = [self.guiding_vector(closure, j) for j in range(self.num_directions)]
        grad, gs, loss = self.spsa(closure, self.eps, vs)
        for name, p in self.params.items():
            p.sub_(self.lr * (grad[name] + self.weight_decay * p))
        self.finish(sum(gs) / len(gs))
        return loss
