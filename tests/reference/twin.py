"""What every textbook twin shares: fp32 weights written in place, and the seeded directions.

A twin holds the parameters of its own copy of the model (name → tensor) and follows one method's
rule as a paper would write it: directions are materialised whole, the perturbed point is written
into the weights and restored afterwards, and the update is one line of tensor algebra. Nothing is
streamed, fused or chunked, and nothing but ``noise.py`` comes from the engine.
"""

from __future__ import annotations

import math

import torch

from reference.noise import draw, mix, step_seed


class Twin:
    """Base of the twins. ``step(closure)`` returns the loss the engine's ``step`` returns and
    sets ``last_projected_grad``; ``state[name]`` holds per-parameter buffers under the engine's
    key names, so the test can compare them with ``optimizer.state[param]``."""

    def __init__(self, named_params, seed: int = 0, noise: str = "gaussian", num_directions: int = 1,
                 query_schedule: tuple[float, float, int] | None = None):
        self.params: dict[str, torch.Tensor] = {n: p for n, p in named_params if p.requires_grad}
        self.seed = seed
        self.noise = noise
        self.num_directions = num_directions
        self.query_schedule = query_schedule
        self.t = 0  # completed steps
        self.state: dict[str, dict[str, torch.Tensor]] = {n: {} for n in self.params}
        self.last_projected_grad = math.nan

    # ------------------------------------------------------------------ directions
    def step_seed(self) -> int:
        return step_seed(self.seed, self.t)

    def directions_now(self) -> int:
        """n of n-SPSA; with AdaZeta's schedule n_t = min(⌈α(t+1)^β⌉, q_max)."""
        if self.query_schedule is None:
            return self.num_directions
        alpha, beta, q_max = self.query_schedule
        return max(1, min(math.ceil(alpha * (self.t + 1) ** beta), q_max))

    def direction_seeds(self, n: int) -> list[int]:
        """Seeds of the n directions of this step: the step seed, then mix(step seed, j)."""
        base = self.step_seed()
        return [base if j == 0 else mix(base, j) for j in range(n)]

    def z(self, seed: int, name: str, kind: str | None = None) -> torch.Tensor:
        """The dense direction of parameter ``name`` for ``seed``."""
        return draw(seed, name, self.params[name].shape, kind or self.noise)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def loss_at(self, closure, direction: dict[str, torch.Tensor], scale: float) -> float:
        """L(θ + scale·d): written into the weights, evaluated, and the old weights copied back
        (a copy, not a subtraction, so θ comes back exactly). Parameters missing from
        ``direction`` are not perturbed."""
        saved = {n: self.params[n].clone() for n in direction}
        try:
            for n, d in direction.items():
                self.params[n].add_(d, alpha=scale)
            return float(closure())
        finally:
            for n, old in saved.items():
                self.params[n].copy_(old)

    def two_point(self, closure, direction: dict[str, torch.Tensor], eps: float) -> tuple[float, float, float]:
        """(g, L(θ+εd), L(θ−εd)) with g = (L(θ+εd) − L(θ−εd)) / 2ε."""
        lp = self.loss_at(closure, direction, eps)
        lm = self.loss_at(closure, direction, -eps)
        return (lp - lm) / (2 * eps), lp, lm

    def spsa(self, closure, eps: float, directions) -> tuple[dict[str, torch.Tensor], list[float], float]:
        """n-SPSA over the given directions (a list of {name: z}): (ĝ = (1/n) Σ g_j z_j, [g_j],
        mean of the 2n losses)."""
        n = len(directions)
        gs, losses = [], []
        for z in directions:
            g, lp, lm = self.two_point(closure, z, eps)
            gs.append(g)
            losses += [lp, lm]
        grad = {name: sum(g / n * z[name] for g, z in zip(gs, directions)) for name in directions[0]}
        return grad, gs, sum(losses) / len(losses)

    def finish(self, projected_grad: float) -> None:
        self.last_projected_grad = projected_grad
        self.t += 1
