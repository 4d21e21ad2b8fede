"""SubZero: ZO-SGD with low-rank directions in random subspaces that change every F steps.

Yu et al., "SubZero: Random Subspace Zeroth-Order Optimization for Memory-Efficient LLM
Fine-Tuning" (arXiv 2410.08989; code: github.com/zimingyy/SubZero). For every matrix parameter
W ∈ R^{m×n} (a tensor of more dimensions is viewed as shape[0] × rest):

    U = QR(G_U).Q ∈ R^{m×r},  V = QR(G_V).Q ∈ R^{n×r}   # G Gaussian, refreshed every F steps
    Z = √(mn)/r · U Z₀ Vᵀ,      Z₀ ∈ R^{r×r} drawn fresh each step
    g = (L(θ + εZ) − L(θ − εZ)) / (2ε);   W ← W − lr·(g·Z + λ·W)

Non-matrix parameters (biases, norms) use the dense stream z, as in the paper's code; so do
matrices with min(m, n) ≤ r (the paper's code does not handle them): there a rank-r factor cannot
lower the rank and would only pin the matrix to an r-dimensional subspace for F steps. The scale
keeps the dense second moment: E‖Z‖²_F = (mn/r²)·E‖Z₀‖²_F = mn, so learning rates tuned for MeZO
carry over.

U and V are *regenerated* from a refresh seed ``mix(seed, SUBSPACE, step // F)`` and the
parameter key each time they are needed, not stored: state is 0 bytes (the reference code keeps
them, Σ r(m+n) numbers). The price is two thin QRs (O((m+n)r²)) per parameter per pass, small
next to the O(mnr) product that forms Z. Z₀ follows the optimizer's ``noise`` (Gaussian or
Rademacher: same second moment); G_U, G_V are always Gaussian, so U, V are Haar-distributed.

Forward passes per step: 2 (2n with ``num_directions=n``). State memory: 0 × params (plus the
fp32 master copy if ``master_weights=True``). Per step, each matrix's Z is materialised once per
pass (one parameter at a time).
Defaults: rank 24 and F = 1000 from the README example (OPT-1.3B, prompt tuning; lr 1e-3,
ε 1e-2 there); lr 1e-6 and ε 1e-3 follow MeZO's full-parameter setting; the paper's full-FT
values were not found (assumption).
"""

from __future__ import annotations

import math

import torch

from zotune.optim.mezo import MeZO
from zotune.perturb import Perturbed
from zotune.rng import mix

SUBSPACE = 0x5B2E0  # salt of the refresh seed: subspaces are independent of the step directions


def low_rank_shape(p: torch.Tensor, rank: int) -> tuple[int, int] | None:
    """(m, n) a parameter is viewed as for a rank-``rank`` direction, or None for the dense one:
    vectors, and matrices with min(m, n) <= rank, where a rank-r factor cannot lower the rank and
    would only confine the matrix to an r-dimensional subspace for a whole refresh period (a
    1×n head would move along one fixed line)."""
    if p.dim() < 2 or p.numel() == 0:
        return None
    m, n = p.shape[0], p.numel() // p.shape[0]
    return (m, n) if rank < min(m, n) else None


def orthonormal(source, seed: int, key: int, rows: int, cols: int, device) -> torch.Tensor:
    """Q of the QR of a seeded rows×cols Gaussian: a Haar-random orthonormal basis (fp32)."""
    g = source.noise(seed, key, 0, rows * cols, rows * cols, "gaussian", device=device)
    return torch.linalg.qr(g.view(rows, cols), mode="reduced").Q


class SubZero(MeZO):
    """MeZO with SubZero's low-rank subspace directions. ``loss = opt.step(closure)``.

    Args: ``rank`` r of the subspace per matrix; ``refresh_every`` F, steps between new U, V;
    the rest as MeZO (lr, eps, weight_decay, engine options).
    """

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0,
                 rank: int = 24, refresh_every: int = 1000, **engine):
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if refresh_every < 1:
            raise ValueError(f"refresh_every must be >= 1, got {refresh_every}")
        super().__init__(params, lr=lr, eps=eps, weight_decay=weight_decay, **engine)
        self.rank = int(rank)
        self.refresh_every = int(refresh_every)

    def refresh_seed(self) -> int:
        """Seed of the current subspaces: changes every ``refresh_every`` steps."""
        return mix(self.seed, SUBSPACE, self.zo_step // self.refresh_every)

    def direction(self, e: Perturbed, seed: int) -> torch.Tensor | None:
        shape = low_rank_shape(e.param, self.rank)
        if shape is None:
            return None
        (m, n), r = shape, self.rank
        dev = e.param.device
        base = self.refresh_seed()
        u = orthonormal(self._source, mix(base, 1), e.key, m, r, dev)
        v = orthonormal(self._source, mix(base, 2), e.key, n, r, dev)
        z0 = self._source.noise(seed, e.key, 0, r * r, r * r, self.noise, device=dev).view(r, r)
        z = (u * (math.sqrt(m * n) / r)) @ z0 @ v.T
        return z.view_as(e.param)
