"""MeZO-Greedy twin (Jin, Cen, Tan, arXiv 2601.04710; the step-size rule is zotune's, the paper's
is not public): ZO-SGD along the lowest-loss direction of a pool.

Per pool j, with seeds s_i = mix(step seed, j, i), i < M:
    F_i = L(θ + ε z(s_i));   i* = the first argmin;   z*_j = z(s_{i*})
    g_j = (F_{i*} − L(θ)) / ε              (default: forward difference, L(θ) shared by pools)
    g_j = (L(θ + εz*) − L(θ − εz*)) / 2ε   (central=True; no L(θ))
θ ← θ − lr·((1/n) Σ_j g_j z*_j + λθ)
Returns L(θ) (central: the mean of the ± pairs); ``last_choice`` holds the chosen seeds.
Tolerance rtol=1e-5, atol=1e-6: losses bit-identical, update rounding as MeZO's twin.
"""

from __future__ import annotations

import torch

from reference.mezo_reference import Reference as MeZOReference
from reference.noise import mix

METHOD = "mezo-greedy"
TOLERANCE = dict(rtol=1e-5, atol=3e-7)


class Reference(MeZOReference):
    def __init__(self, named_params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0,
                 pool_size: int = 2, central: bool = False, **common):
        super().__init__(named_params, lr=lr, eps=eps, weight_decay=weight_decay, **common)
        self.pool_size, self.central = pool_size, central
        self.last_choice: list[int] = []

    @torch.no_grad()
    def step(self, closure) -> float:
        n = self.num_directions
        base = None if self.central else float(closure())
        chosen, gs, losses, zs = [], [], [], []
        for j in range(n):
            seeds = [mix(self.step_seed(), j, i) for i in range(self.pool_size)]
            pool = [{name: self.z(s, name) for name in self.params} for s in seeds]
            scores = [self.loss_at(closure, z, self.eps) for z in pool]
            best = min(range(self.pool_size), key=lambda i: scores[i])
            if self.central:
                g, lp, lm = self.two_point(closure, pool[best], self.eps)
                losses.append((lp + lm) / 2)
            else:
                g = (scores[best] - base) / self.eps
                losses.append(base)
            chosen.append(seeds[best])
            gs.append(g)
            zs.append(pool[best])
        for name, p in self.params.items():
            grad = sum(g / n * z[name] for g, z in zip(gs, zs))
            p.sub_(self.lr * (grad + self.weight_decay * p))
        self.last_choice = chosen
        self.finish(sum(gs) / n)
        return sum(losses) / n
