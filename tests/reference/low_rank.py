"""What SubZero's and LOZO's twins share: which parameters get a low-rank direction, and the
constructor arguments (rank r, refresh period)."""

from __future__ import annotations

import torch

from reference.mezo_reference import Reference as MeZOReference


class LowRankReference(MeZOReference):
    """MeZO whose matrices W ∈ R^{m×n} (shape[0] × rest) with r < min(m, n) move along
    ``low_rank(seed, name, m, n)``; vectors and other matrices keep the dense z."""

    def __init__(self, named_params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0,
                 rank: int = 2, refresh_every: int = 50, **common):
        super().__init__(named_params, lr=lr, eps=eps, weight_decay=weight_decay, **common)
        self.rank, self.refresh_every = rank, refresh_every

    def low_rank(self, seed: int, name: str, m: int, n: int) -> torch.Tensor:
        raise NotImplementedError

    def direction(self, seed: int, name: str) -> torch.Tensor:
        p = self.params[name]
        if p.dim() < 2:
            return self.z(seed, name)
        m, n = p.shape[0], p.numel() // p.shape[0]
        if self.rank >= min(m, n):
            return self.z(seed, name)
        return self.low_rank(seed, name, m, n).view_as(p)
