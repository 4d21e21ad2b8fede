"""MeZO-GV: ZO-SGD along a "guiding vector" built from a small pool of scored directions.

Jin, Cen, Tan, "Steering the Noise: Turning Random Perturbations into Effective Descent..."
(arXiv 2601.04710); rule as in the authors' memory-efficient trainer (stan-anony/MeZO-GV,
``trainer_fwa_mem_eff.py``). Per step, with seeds s_1..s_M drawn from the step seed:

    F_i = L(θ + ε z(s_i))                           # M one-sided forward passes (the "fitness")
    T   = the ⌊αM⌋ lowest-loss seeds, W = the rest  # elite and the others
    v   = mean_{i∈T} z(s_i) − mean_{j∈W} z(s_j)     # guiding vector, a seeded sum: never stored
    g   = (L(θ + εv) − L(θ − εv)) / (2ε)            # two forward passes
    θ  ← θ − lr · (g·v + λ·θ)

Why: low-loss candidates are more likely to point downhill, so v is better aligned with −∇L than
a single random z, at the price of M extra forward passes. v is kept as (seed, ±1/|group|) pairs,
so it is regenerated chunk by chunk like MeZO's z and costs no memory. Its scale is the authors'
(unnormalised: with M = 2, v = z_best − z_worst has E‖v‖² ≈ 2d), so a learning rate tuned for
MeZO should be about halved.

With ``num_directions=n`` the whole procedure runs for n independent pools and the n estimates
g_j·v_j are averaged. Forward passes per step: n·(M + 2) (4 with the defaults). State: none
(O(1)), plus fp32 masters only with ``master_weights=True``.
Defaults: pool_size M = 2 and split_ratio α = 0.5 from the authors' code (``base_fw_size``,
``split_ratio``; the paper's tables' values are unknown); ε = 1e-3 and lr as MeZO (the authors'
OPT-13B script uses lr 2e-7). The authors exclude biases and LayerNorm from weight decay; here
weight decay is per parameter group, so pass such groups to reproduce that.
"""

from __future__ import annotations

import math

import torch

from zotune.engine import Estimate, Part
from zotune.optim.base import ZOOptimizer, check_closure, check_hparams
from zotune.optim.mezo import sgd_update
from zotune.optim.registry import register


def guiding_vector(seeds: list[int], losses: list[float], split_ratio: float) -> list[tuple[int, float]]:
    """The rule's direction: v = mean of the elite's draws − mean of the rest's, as (seed, weight)
    pairs; the elite is the ⌊αM⌋ lowest-loss candidates (stable: ties keep pool order)."""
    elite = math.floor(split_ratio * len(seeds))
    order = sorted(range(len(seeds)), key=lambda i: losses[i])
    top, rest = order[:elite], order[elite:]
    return [(seeds[i], 1.0 / len(top)) for i in top] + [(seeds[i], -1.0 / len(rest)) for i in rest]


@register("mezo-gv")
class MeZOGV(ZOOptimizer):
    """ZO-SGD along the guiding vector of a scored pool. ``loss = opt.step(closure)``.

    The returned loss is the mean of the two losses along v, an O(ε²) estimate of L(θ).
    """

    @property
    def forward_passes(self) -> int:
        pools = self.directions_now() * len(self.engine.subsets())
        return pools * (self.param_groups[0]["pool_size"] + 2)

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0,
                 pool_size: int = 2, split_ratio: float = 0.5, **engine):
        check_hparams(lr, eps, weight_decay)
        if int(pool_size) != pool_size or pool_size < 2:
            raise ValueError(f"pool_size must be an integer >= 2, got {pool_size}")
        elite = math.floor(split_ratio * pool_size)
        if not 1 <= elite < pool_size:
            raise ValueError(f"split_ratio·pool_size must leave both groups non-empty: floor({split_ratio}"
                             f"·{pool_size}) = {elite}, wanted 1..{pool_size - 1}")
        super().__init__(params, dict(lr=lr, eps=eps, weight_decay=weight_decay, pool_size=int(pool_size),
                                      split_ratio=split_ratio), **engine)

    @torch.no_grad()
    def step(self, closure):
        check_closure(self, closure)
        eps = self.shared_eps()
        first = self.param_groups[0]
        size, ratio = first["pool_size"], first["split_ratio"]
        if any(g["pool_size"] != size or g["split_ratio"] != ratio for g in self.param_groups):
            raise ValueError("MeZOGV uses one pool_size and split_ratio for all parameter groups")
        n, t = self.directions_now(), self.current_step()
        parts, projected = [], []
        for subset in self.engine.subsets():  # every loss is known before any weight is written
            terms, g_mean, total = [], 0.0, 0.0
            for j in range(n):
                seeds = t.pool_seeds(j, size)
                v = guiding_vector(seeds, self.engine.one_sided(closure, seeds, eps, subset), ratio)
                lp, lm = self.engine.two_point(closure, v, eps, subset)
                g = (lp - lm) / (2 * eps)
                terms += [(s, w * g / n) for s, w in v]
                g_mean += g / n
                total += (lp + lm) / (2 * n)
            parts.append(Part(subset, tuple(terms), 1, total))  # terms already averaged: n = 1
            projected.append(g_mean)
        est = Estimate(tuple(parts), sum(p.loss for p in parts) / len(parts), sum(projected) / len(projected))
        for group, e, part in self.estimated(est):
            self.engine.write_along(e, *sgd_update(part, group["lr"], group["weight_decay"]))
        self.finish_step(est.projected)
        return torch.tensor(est.loss)
