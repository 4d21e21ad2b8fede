"""MeZO-Greedy: ZO-SGD along the best of a small pool of scored directions.

Jin, Cen, Tan, "Steering the Noise: Turning Random Perturbations into Effective Descent..."
(arXiv 2601.04710). The abstract says MeZO-Greedy "keeps the single best perturbation within a
fixed evaluation budget"; how its step size is estimated is not public, so this is our rule.
Per step, with seeds s_1..s_M drawn from the step seed:

    L₀  = L(θ)                                   # one forward pass
    F_i = L(θ + ε z(s_i))                        # M one-sided forward passes
    i*  = argmin_i F_i                           # the greedy choice (ties: first in the pool)
    g   = (F_{i*} − L₀) / ε                      # forward difference, reusing the pool's loss
    θ  ← θ − lr · (g·z(s_{i*}) + λ·θ)

Why reuse instead of a fresh two-point along z*: on the step's minibatch F_{i*} − L₀ already is
ε·z*ᵀ∇L + O(ε²), so a new ± pair would measure the same number again at two more forwards; the
forward difference costs one pass (L₀) instead of two. Its O(ε) curvature bias is the price; with
``central=True`` the step runs the fresh pair L(θ ± εz*) instead (M + 2 passes, O(ε²) bias) and
skips L₀. If every candidate is uphill, g > 0 and the step goes along −z*, still a descent
estimate.

With ``num_directions=n`` n independent pools are drawn and their estimates averaged (L₀ is shared).
Forward passes per step: 1 + n·M (3 with the defaults), or n·(M + 2) with ``central=True``.
State: none (O(1)), plus fp32 masters only with ``master_weights=True``.
Defaults: pool_size M = 2, as in the authors' code for MeZO-GV (the Greedy pool size is unknown);
ε = 1e-3 and lr as MeZO.
"""

from __future__ import annotations

import torch

from zotune.engine import Estimate, Part, check_finite
from zotune.optim.base import ZOOptimizer, check_closure, check_hparams
from zotune.optim.mezo import sgd_update
from zotune.optim.registry import register


def greedy_choice(seeds: list[int], losses: list[float]) -> int:
    """The rule's choice: the index of the lowest-loss candidate (ties: first in the pool)."""
    return min(range(len(seeds)), key=lambda i: losses[i])


@register("mezo-greedy")
class MeZOGreedy(ZOOptimizer):
    """ZO-SGD along the lowest-loss direction of a pool. ``loss = opt.step(closure)``.

    Returns L(θ) (the mean of the ± pair with ``central=True``). ``last_choice`` holds the seed
    of each pool's chosen direction in the last step.
    """

    @property
    def forward_passes(self) -> int:
        size = self.param_groups[0]["pool_size"]
        pools = self.directions_now() * len(self.engine.subsets())
        return pools * (size + 2) if self.central else 1 + pools * size

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0,
                 pool_size: int = 2, central: bool = False, **engine):
        check_hparams(lr, eps, weight_decay)
        if int(pool_size) != pool_size or pool_size < 2:
            raise ValueError(f"pool_size must be an integer >= 2, got {pool_size}")
        super().__init__(params, dict(lr=lr, eps=eps, weight_decay=weight_decay, pool_size=int(pool_size)),
                         **engine)
        self.central = bool(central)
        self.last_choice: list[int] = []

    @torch.no_grad()
    def step(self, closure):
        check_closure(self, closure)
        eps = self.shared_eps()
        size = self.param_groups[0]["pool_size"]
        if any(g["pool_size"] != size for g in self.param_groups):
            raise ValueError("MeZOGreedy uses one pool_size for all parameter groups")
        n, t = self.directions_now(), self.current_step()
        if not self.central:
            base = self.engine.loss_at(closure, t.seed, 0.0).item()
            check_finite(base, step=self.zo_step + 1)
        parts, chosen = [], []
        for subset in self.engine.subsets():  # every loss is known before any weight is written
            terms, losses = [], []
            for j in range(n):
                seeds = t.pool_seeds(j, size)
                pool = self.engine.one_sided(closure, seeds, eps, subset)
                best = greedy_choice(seeds, pool)
                seed = seeds[best]
                if self.central:
                    lp, lm = self.engine.two_point(closure, seed, eps, subset)
                    g = (lp - lm) / (2 * eps)
                    losses.append((lp + lm) / 2)
                else:
                    g = (pool[best] - base) / eps  # forward difference, reusing the pool's loss
                    losses.append(base)
                terms.append((seed, g / n))
                chosen.append(seed)
            parts.append(Part(subset, tuple(terms), 1, sum(losses) / n))  # terms already averaged
        projected = [sum(g for _, g in p.terms) for p in parts]
        est = Estimate(tuple(parts), sum(p.loss for p in parts) / len(parts), sum(projected) / len(projected))
        for group, e, part in self.estimated(est):
            self.engine.write_along(e, *sgd_update(part, group["lr"], group["weight_decay"]))
        self.last_choice = chosen
        self.finish_step(est.projected)
        return torch.tensor(est.loss)
