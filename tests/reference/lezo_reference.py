"""LeZO twin (Wang et al., arXiv 2410.09823): MeZO on a random subset of layer blocks per step.

    S_t = sorted sample of k = max(1, round((1 − ρ)·L)) of the L blocks, drawn by Python's
          random.Random(mix(step seed, LAYERS))
    z' = z on the blocks of S_t, 0 elsewhere;   θ_b ← θ_b − lr·(g·z_b + λθ_b) for b ∈ S_t only

Tolerance rtol=1e-5, atol=1e-6: losses bit-identical, update rounding as MeZO's twin.
"""

from __future__ import annotations

import random

import torch

from reference.blocks import layer_blocks
from reference.mezo_reference import Reference as MeZOReference
from reference.noise import LAYERS, mix

METHOD = "lezo"
TOLERANCE = dict(rtol=1e-5, atol=3e-7)


class Reference(MeZOReference):
    def __init__(self, named_params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0,
                 sparsity: float = 0.75, **common):
        super().__init__(named_params, lr=lr, eps=eps, weight_decay=weight_decay, **common)
        self.blocks = layer_blocks(self.params)
        self.k = max(1, round((1 - sparsity) * len(self.blocks)))

    def chosen(self) -> list[str]:
        picks = random.Random(mix(self.step_seed(), LAYERS)).sample(range(len(self.blocks)), self.k)
        return [n for b in sorted(picks) for n in self.blocks[b]]

    @torch.no_grad()
    def step(self, closure) -> float:
        names = self.chosen()
        directions = [{n: self.z(s, n) for n in names} for s in self.direction_seeds(self.directions_now())]
        grad, gs, loss = self.spsa(closure, self.eps, directions)
        for n in names:
            p = self.params[n]
            p.sub_(self.lr * (grad[n] + self.weight_decay * p))
        self.finish(sum(gs) / len(gs))
        return loss
