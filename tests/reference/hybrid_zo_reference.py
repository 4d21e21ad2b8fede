"""HybridZO twin (ZO-Bench's hybrid ZO-FO, arXiv 2402.11592): backprop for the parameters whose
name matches ``fo_params`` (re.search), two-point ZO for the rest.

    g = (L(θ + εz) − L(θ − εz)) / 2ε,  z on the ZO parameters only (n-SPSA: averaged)
    ∇ = ∂L(θ)/∂θ_FO  (one forward and backward at θ)
    θ_ZO ← θ_ZO − lr·(ĝ + λθ_ZO);   θ_FO ← θ_FO − fo_lr·(∇ + λθ_FO),  fo_lr = lr unless given

Returns L(θ) from the FO forward.
Tolerance rtol=1e-5, atol=1e-6: the ZO losses are bit-identical; the twin's backward runs through
the whole model where the engine stops it at the first FO parameter, which computes the same
FO gradient; updates round like MeZO's twin.
"""

from __future__ import annotations

import re

import torch

from reference.mezo_reference import Reference as MeZOReference

METHOD = "hybrid-zo"
TOLERANCE = dict(rtol=1e-5, atol=3e-7)
DEFAULT_FO = r"(^|\.)(norm|final_layer_norm|lm_head|score|classifier)\."


class Reference(MeZOReference):
    def __init__(self, named_params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0,
                 fo_params: str = DEFAULT_FO, fo_lr: float | None = None, **common):
        super().__init__(named_params, lr=lr, eps=eps, weight_decay=weight_decay, **common)
        self.fo = [n for n in self.params if re.search(fo_params, n)]
        self.zo = [n for n in self.params if n not in self.fo]
        self.fo_lr = lr if fo_lr is None else fo_lr

    def step(self, closure) -> float:
        seeds = self.direction_seeds(self.directions_now())
        grad, gs, _ = self.spsa(closure, self.eps, [{n: self.z(s, n) for n in self.zo} for s in seeds])
        with torch.enable_grad():
            loss = closure()
            fo_grad = dict(zip(self.fo, torch.autograd.grad(loss, [self.params[n] for n in self.fo])))
        with torch.no_grad():
            for n in self.zo:
                p = self.params[n]
                p.sub_(self.lr * (grad[n] + self.weight_decay * p))
            for n in self.fo:
                p = self.params[n]
                p.sub_(self.fo_lr * (fo_grad[n] + self.weight_decay * p))
        self.finish(sum(gs) / len(gs))
        return float(loss.detach())
