"""SparseZO: ZO-SGD along a dense direction times a random coordinate mask resampled every k steps.

The "gradient sparsity" extension of ZO-Bench: Zhang et al., "Revisiting Zeroth-Order
Optimization for Memory-Efficient LLM Fine-Tuning: A Benchmark" (arXiv 2402.11592, ICML 2024;
code: github.com/ZO-Bench/ZO-LLM, options ``gradient_sparsity`` and
``sparse_gradient_resample_steps`` with the per-layer group). Per step t:

    M = Bernoulli(p) mask per coordinate, drawn from mix(seed, MASK, t // k) and the parameter key
    z' = M ⊙ z,   z ~ N(0, I) from the step seed
    g = (L(θ + εz') − L(θ − εz')) / (2ε);   θ ← θ − lr·(g·z' + λ·θ)

Masked-out coordinates are neither perturbed nor moved by g (weight decay, if set, still shrinks
every coordinate of the parameter). The direction is not rescaled (E‖z'‖² = p·d), as in ZO-Bench.
The mask is never stored: it is redrawn (one uniform draw per element, from the counter-based
stream) each time a parameter's direction is built, i.e. three times per step. A parameter's
direction is materialised one parameter at a time.

Forward passes per step: 2 (2n with ``num_directions=n``; one mask per step for all n).
State memory: 0 × params (the mask is re-derived from its seed).
Defaults: density p = 0.8 and k = 1 follow ZO-Bench's sweep (gradient_sparsity 0.2, read here as
the fraction of coordinates zeroed, an assumption) and its default resample interval; lr 1e-6 and
ε 1e-3 follow MeZO's full-parameter setting.
"""

from __future__ import annotations

import torch

from zotune.optim.mezo import MeZO
from zotune.perturb import Perturbed
from zotune.rng import mix

MASK = 0x3A5C  # salt of the mask seed


class SparseZO(MeZO):
    """MeZO with a random sparse mask on the direction. ``loss = opt.step(closure)``.

    Args: ``density`` p ∈ (0, 1], the fraction of coordinates kept; ``resample_every`` k, steps
    between new masks; the rest as MeZO.
    """

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0,
                 density: float = 0.8, resample_every: int = 1, **engine):
        if not 0.0 < density <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {density}")
        if resample_every < 1:
            raise ValueError(f"resample_every must be >= 1, got {resample_every}")
        super().__init__(params, lr=lr, eps=eps, weight_decay=weight_decay, **engine)
        self.density = float(density)
        self.resample_every = int(resample_every)

    def mask_seed(self) -> int:
        """Seed of the current mask: changes every ``resample_every`` steps."""
        return mix(self.seed, MASK, self.zo_step // self.resample_every)

    def mask(self, e: Perturbed) -> torch.Tensor:
        """The current boolean mask of ``e`` (True = coordinate perturbed and updated)."""
        u = self.noise_tensor(e, self.mask_seed(), kind="uniform")
        return u < self.density

    def direction(self, e: Perturbed, seed: int) -> torch.Tensor | None:
        if self.density == 1.0:
            return None  # dense MeZO, streamed
        return self.noise_tensor(e, seed).mul_(self.mask(e))
