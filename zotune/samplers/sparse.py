"""Sparse sampler: the dense draw times a random coordinate mask (ZO-Bench's gradient sparsity)."""

from __future__ import annotations

import torch

from zotune.engine import Step
from zotune.perturb import Perturbed
from zotune.rng import mix
from zotune.samplers.base import Sampler, register_sampler, whole_number

MASK = 0x3A5C  # salt of the mask seed


@register_sampler("sparse")
class SparseMask(Sampler):
    """z' = M ⊙ z, M a Bernoulli(``density``) mask per coordinate drawn from
    mix(run seed, MASK, step // k) and the parameter key, resampled every k = ``resample_every``
    steps (Zhang et al., ZO-Bench, arXiv 2402.11592). Masked-out coordinates are neither perturbed
    nor moved by the estimate. Not rescaled (E‖z'‖² = p·d), as in ZO-Bench. The mask is never
    stored: it is redrawn (one uniform per element) each time a parameter's draw is built."""

    def __init__(self, density: float = 0.8, resample_every: int = 1):
        super().__init__()
        if not 0.0 < density <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {density}")
        self.density = float(density)
        self.resample_every = whole_number("resample_every", resample_every, 1)

    def mask_seed(self, t: Step) -> int:
        """Seed of the mask at step ``t``: changes every ``resample_every`` steps."""
        return mix(t.run_seed, MASK, t.index // self.resample_every)

    def mask(self, e: Perturbed, t: Step) -> torch.Tensor:
        """The boolean mask of ``e`` at step ``t`` (True = coordinate perturbed and updated)."""
        return self.dense_draw(e, self.mask_seed(t), kind="uniform") < self.density

    def draw(self, e: Perturbed, seed: int, t: Step) -> torch.Tensor | None:
        if self.density == 1.0:
            return None  # the dense stream, streamed
        return self.dense_draw(e, seed).mul_(self.mask(e, t))

    def __repr__(self) -> str:
        return f"SparseMask(density={self.density}, resample_every={self.resample_every})"
