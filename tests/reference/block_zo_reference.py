"""BlockZO twin (ZO-Bench's block-wise ZO, arXiv 2402.11592; MeZO-BCD, arXiv 2501.19099): a
separate two-point estimate per layer block, all at the same θ, applied together (Jacobi).

    visited blocks: all B (default); else k of them, cyclic (t·k + i mod B) or a sorted sample
                    by random.Random(mix(step seed, BLOCKS))
    per visited b:  g_b = (L(θ + ε z_b) − L(θ − ε z_b)) / 2ε   (z on block b only, same seeds
                    for every block);  θ_b ← θ_b − lr·(ĝ_b + λθ_b)

Returns the mean over blocks of each block's mean perturbed loss.
Tolerance rtol=1e-5, atol=1e-6: losses bit-identical, update rounding as MeZO's twin.
"""

from __future__ import annotations

import random

import torch

from reference.blocks import layer_blocks
from reference.mezo_reference import Reference as MeZOReference
from reference.noise import BLOCKS, mix

METHOD = "block-zo"
TOLERANCE = dict(rtol=1e-5, atol=3e-7)


class Reference(MeZOReference):
    def __init__(self, named_params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0,
                 blocks_per_step: int | None = None, order: str = "cyclic", **common):
        super().__init__(named_params, lr=lr, eps=eps, weight_decay=weight_decay, **common)
        self.blocks = layer_blocks(self.params)
        self.k = min(blocks_per_step or len(self.blocks), len(self.blocks))
        self.order = order

    def visited(self) -> list[int]:
        b, k = len(self.blocks), self.k
        if k == b:
            return list(range(b))
        if self.order == "random":
            return sorted(random.Random(mix(self.step_seed(), BLOCKS)).sample(range(b), k))
        return [(self.t * k + i) % b for i in range(k)]

    @torch.no_grad()
    def step(self, closure) -> float:
        seeds = self.direction_seeds(self.directions_now())
        estimates, all_g, losses = [], [], []
        for b in self.visited():
            names = self.blocks[b]
            grad, gs, loss = self.spsa(closure, self.eps, [{n: self.z(s, n) for n in names} for s in seeds])
            estimates.append(grad)
            all_g += gs
            losses.append(loss)
        for grad in estimates:
            for n, g in grad.items():
                p = self.params[n]
                p.sub_(self.lr * (g + self.weight_decay * p))
        self.finish(sum(all_g) / len(all_g))
        return sum(losses) / len(losses)
