"""MeZO-SVRG twin (Gautam et al., arXiv 2404.08080): MeZO with an anchor θ̄ and its estimate ḡ,
both kept whole (the engine keeps ḡ as seeds).

    t ≡ 0 (mod q):  θ̄ ← θ;  ḡ = ĝ(θ̄);  θ ← θ − η₁(ḡ + λθ)
    otherwise:      θ ← θ − η₂(ĝ(θ; z) − ĝ(θ̄; z) + ḡ + λθ)     the same draws z at θ and θ̄
with ĝ(x; z) the n-SPSA estimate at x (the twin writes θ̄ into its weights to evaluate there, then
copies θ back). Returns the mean of the losses at θ ± εz. State: θ̄ as ``anchor``.
Tolerance rtol=1e-5, atol=3e-7: the losses are bit-identical; ĝ(θ) − ĝ(θ̄) + ḡ is summed as
whole tensors here and as one streamed sum of 2n weighted draws there, an ulp or two apart.
"""

from __future__ import annotations

import torch

from reference.mezo_reference import Reference as MeZOReference

METHOD = "mezo-svrg"
TOLERANCE = dict(rtol=1e-5, atol=3e-7)


class Reference(MeZOReference):
    def __init__(self, named_params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0,
                 anchor_lr: float | None = None, anchor_every: int = 2, anchor_batch_size: int = 64, **common):
        super().__init__(named_params, lr=lr, eps=eps, weight_decay=weight_decay, **common)
        self.anchor_lr = lr if anchor_lr is None else anchor_lr
        self.anchor_every = anchor_every
        self.anchor_grad: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def step(self, closure) -> float:
        directions = self.directions()
        if self.t % self.anchor_every == 0:
            grad, gs, loss = self.spsa(closure, self.eps, directions)
            self.anchor_grad = grad
            for name, p in self.params.items():
                self.state[name]["anchor"] = p.detach().clone()
                p.sub_(self.anchor_lr * (grad[name] + self.weight_decay * p))
        else:
            grad, gs, loss = self.spsa(closure, self.eps, directions)
            now = {name: p.detach().clone() for name, p in self.params.items()}
            for name, p in self.params.items():
                p.copy_(self.state[name]["anchor"])
            at_anchor, _, _ = self.spsa(closure, self.eps, directions)
            for name, p in self.params.items():
                p.copy_(now[name])
                p.sub_(self.lr * (grad[name] - at_anchor[name] + self.anchor_grad[name] + self.weight_decay * p))
        self.finish(sum(gs) / len(gs))
        return loss
