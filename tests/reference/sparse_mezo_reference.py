"""Sparse-MeZO twin (arXiv 2402.15751): MeZO along z ⊙ m, m = 1[|θ| ≤ h] from the current weights.

    h = the k-th smallest |θ₀| of the tensor (its weights at the first step), k = ⌈(1 − s)·numel⌉;
        h = ∞ when k = numel (nothing left out) or when that value is 0 (a zero-initialised tensor)
    z' = m ⊙ z;  g = (L(θ + εz') − L(θ − εz')) / 2ε;  θ ← θ − lr·(g·z' + λθ)
Tolerance rtol=1e-5, atol=3e-7: the masks and losses are bit-identical, the update rounds as MeZO's.
"""

from __future__ import annotations

import math

import torch

from reference.mezo_reference import Reference as MeZOReference

METHOD = "sparse-mezo"
TOLERANCE = dict(rtol=1e-5, atol=3e-7)


class Reference(MeZOReference):
    def __init__(self, named_params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0,
                 sparsity: float = 0.8, **common):
        super().__init__(named_params, lr=lr, eps=eps, weight_decay=weight_decay, **common)
        self.sparsity = sparsity
        self.h: dict[str, float] = {}
        for name, p in self.params.items():
            k = math.ceil((1 - sparsity) * p.numel())
            h = sorted(p.detach().abs().flatten().tolist())[k - 1] if k < p.numel() else math.inf
            self.h[name] = h if h > 0 else math.inf

    def directions(self):
        masks = {n: (p.detach().abs() <= self.h[n]).float() for n, p in self.params.items()}
        return [{n: self.z(s, n) * masks[n] for n in self.params} for s in self.direction_seeds(self.directions_now())]
