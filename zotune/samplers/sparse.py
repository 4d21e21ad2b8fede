"""Sparse samplers: the dense draw times a coordinate mask, random (ZO-Bench's gradient sparsity) or of
the smallest-magnitude weights (Sparse-MeZO)."""

from __future__ import annotations

import math

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


@register_sampler("magnitude")
class MagnitudeMask(Sampler):
    """Sparse-MeZO's draws (Liu et al., "Sparse MeZO: Less Parameters for Better Performance in
    Zeroth-Order LLM Fine-Tuning", NeurIPS 2025, arXiv 2402.15751): z' = m(θ) ⊙ z with

        m(θ) = 1[|θ| ≤ h],   h = the k-th smallest |θ₀| of the tensor, k = ⌈(1 − sparsity)·numel⌉

    so only the smallest-magnitude weights are perturbed and moved. The threshold h of each tensor
    is fixed from the weights the first time the tensor is drawn (the start of training; the paper
    fixes its per-layer thresholds from a percentile before training); the mask is recomputed from
    the current weights at every draw (the paper's dynamic mask), never stored. Within a step the
    weights do not change until the update, so both perturbed forwards and the update share one
    mask. State: one number per tensor (``state()``, saved with the optimizer). Not rescaled.
    A tensor whose k-th smallest |θ₀| is 0 (initialised to zeros, as LoRA's B) would leave the mask
    after its first step and freeze; its magnitudes say nothing, so it takes the whole draw (h = ∞)."""

    def __init__(self, sparsity: float = 0.8):
        super().__init__()
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1) (the fraction of weights left out), got {sparsity}")
        self.sparsity = float(sparsity)
        self.thresholds: dict[int, float] = {}

    def threshold(self, e: Perturbed) -> float:
        """h of ``e``, computed from its weights on first use."""
        if e.key not in self.thresholds:
            mags = e.param.detach().reshape(-1).abs()
            k = max(1, math.ceil((1.0 - self.sparsity) * mags.numel()))
            h = float(mags.float().kthvalue(k).values) if k < mags.numel() else math.inf
            self.thresholds[e.key] = h if h > 0 else math.inf  # magnitudes that say nothing: dense
        return self.thresholds[e.key]

    def mask(self, e: Perturbed) -> torch.Tensor:
        """The boolean mask of ``e`` now (True = perturbed and updated): |θ| ≤ h."""
        return e.param.detach().abs() <= self.threshold(e)

    def draw(self, e: Perturbed, seed: int, t: Step) -> torch.Tensor | None:
        return self.dense_draw(e, seed).mul_(self.mask(e))

    def state(self) -> dict:
        return {"thresholds": dict(self.thresholds)}

    def load_state(self, state: dict) -> None:
        self.thresholds = {int(k): float(v) for k, v in state.get("thresholds", {}).items()}

    def __repr__(self) -> str:
        return f"MagnitudeMask(sparsity={self.sparsity})"
