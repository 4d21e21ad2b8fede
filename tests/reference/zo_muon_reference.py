"""ZO-Muon twin (arXiv 2602.17155; the authors' llm/LowDimTrainer.py): one-sided queries along
P·u in a left subspace, the matrices' step orthogonalised by Newton–Schulz.

For W ∈ R^{m×n} with r < min(m, n): P = Q of QR(G), G an m×r Gaussian from
mix(seed, PROJECTED, t // K); u_j ∈ R^{r×n} from the j-th draw seed (the noise kind). Other
tensors: dense z_j.
    L₀ = L(θ),  g_j = (L(θ + ε·d_j) − L₀)/ε,  d_j = P u_j (matrices) or z_j (the rest)
    matrices:  Ĝ = (1/N) Σ g_j u_j;  W ← W − lr·(P·NS(Ĝ) + λW)
    the rest:  θ ← θ − lr_d·((1/N) Σ g_j z_j + λθ)
NS, written out: X = Ĝ/‖Ĝ‖_F (transposed if taller than wide), 5 steps of Muon's quintic
X ← aX + (bA + cA²)X with A = XXᵀ and (a, b, c) = (3.4445, −4.7750, 2.0315), then 2 cubic steps
X ← 1.5X − 0.5XXᵀX. Returns L₀.
Tolerance rtol=1e-4, atol=3e-7: the losses are bit-identical; Ĝ sums the draws in the same order,
but NS's ten matrix products round in fp32 and its polish amplifies nothing, so the step agrees to
~1e-6 relative (measured); rtol leaves room for the 20-step comparison's re-anchoring.
"""

from __future__ import annotations

import torch

from reference.noise import PROJECTED, draw, mix
from reference.twin import Twin

METHOD = "zo-muon"
TOLERANCE = dict(rtol=1e-4, atol=3e-7)
QUINTIC = (3.4445, -4.7750, 2.0315)


def newton_schulz(g: torch.Tensor) -> torch.Tensor:
    x = g.T if g.shape[0] > g.shape[1] else g
    norm = torch.linalg.norm(x)
    x = x / norm if norm > 0 else x
    a, b, c = QUINTIC
    for _ in range(5):
        s = x @ x.T
        x = a * x + (b * s + c * (s @ s)) @ x
    for _ in range(2):
        x = 1.5 * x - 0.5 * (x @ x.T) @ x
    return x.T if g.shape[0] > g.shape[1] else x


class Reference(Twin):
    def __init__(self, named_params, lr: float = 1e-2, eps: float = 1e-3, weight_decay: float = 0.0,
                 dense_lr: float = 1e-7, rank: int = 64, refresh_every: int = 100, num_directions: int = 4,
                 **common):
        super().__init__(named_params, num_directions=num_directions, **common)
        self.lr, self.eps, self.weight_decay, self.dense_lr = lr, eps, weight_decay, dense_lr
        self.rank, self.refresh_every = rank, refresh_every

    def projection(self, name: str) -> torch.Tensor | None:
        p = self.params[name]
        if p.dim() < 2:
            return None
        m, n = p.shape[0], p.numel() // p.shape[0]
        if self.rank >= min(m, n):
            return None
        seed = mix(self.seed, PROJECTED, self.t // self.refresh_every)
        return torch.linalg.qr(draw(seed, name, (m, self.rank))).Q

    @torch.no_grad()
    def step(self, closure) -> float:
        seeds = self.direction_seeds(self.directions_now())
        proj = {name: self.projection(name) for name in self.params}
        coeffs, directions = [], []
        for s in seeds:
            c = {}
            for name, p in self.params.items():
                if proj[name] is None:
                    c[name] = self.z(s, name)
                else:
                    c[name] = draw(s, name, (self.rank, p.numel() // p.shape[0]), self.noise)
            coeffs.append(c)
            directions.append({name: (c[name] if proj[name] is None else (proj[name] @ c[name]).view_as(p))
                               for name, p in self.params.items()})
        l0 = float(closure())
        gs = [(self.loss_at(closure, d, self.eps) - l0) / self.eps for d in directions]
        n = len(gs)
        for name, p in self.params.items():
            mean = sum(g / n * c[name] for g, c in zip(gs, coeffs))
            if proj[name] is None:
                p.sub_(self.dense_lr * (mean + self.weight_decay * p))
            else:
                p.sub_(self.lr * ((proj[name] @ newton_schulz(mean)).view_as(p) + self.weight_decay * p))
        self.finish(sum(gs) / n)
        return l0
