"""BlockZO: block-wise ZO-SGD, a separate two-point estimate for each layer block.

Block-wise ZO of ZO-Bench: Zhang et al., "Revisiting Zeroth-Order Optimization for
Memory-Efficient LLM Fine-Tuning: A Benchmark" (arXiv 2402.11592, ICML 2024; option
``module_wise_perturbation``), and with one block per step, MeZO-BCD (block-coordinate descent,
arXiv 2501.19099). Per step t, for each block b of the step (blocks as in LeZO: one per layer
index, embeddings / norm / head by module), with z ~ N(0, I) from the step seed:

    g_b = (L(θ + ε z_b) − L(θ − ε z_b)) / (2ε)      # only block b perturbed: 2 forward passes
    θ_b ← θ_b − lr·(g_b·z_b + λ·θ_b)                 # every block with its own scalar

Which blocks a step visits: ``blocks_per_step=None`` (default, ZO-Bench) visits all B blocks;
an integer k visits k blocks, ``order="cyclic"`` (blocks tk, …, tk+k−1 mod B: a full sweep every
⌈B/k⌉ steps) or ``order="random"`` (k distinct blocks drawn from the step seed). k = 1 is
MeZO-BCD's one-block-per-step scheme.

Difference from ZO-Bench's code: it updates block b right after g_b is known (Gauss-Seidel), so
later blocks are estimated at the partly updated point. Here no weight is written before every
loss of the step is known and finite (exception safety), so all blocks are estimated at the same
θ and updated together (Jacobi). For small lr the two agree to first order.

Forward passes per step: 2 × (blocks visited) × n (``num_directions=n`` per block).
State memory: 0 × params (per step only one (seed, g) pair per block and direction).
Defaults: all blocks, lr 1e-6 and ε 1e-3 (MeZO's full-parameter setting; ZO-Bench's README
example uses lr 1e-8 with block-wise ZO-SGD on OPT-1.3B in fp16).
"""

from __future__ import annotations

import random

import torch

from zotune.optim.lezo import layer_blocks
from zotune.optim.mezo import MeZO
from zotune.perturb import Perturbed
from zotune.rng import mix

ORDERS = ("cyclic", "random")
BLOCKS = 0xB10C  # salt of the seed that picks the blocks of a step (order="random")


class BlockZO(MeZO):
    """Block-wise ZO-SGD. ``loss = opt.step(closure)`` returns the mean of all perturbed losses.

    Args: ``blocks_per_step`` (None = every block each step), ``order`` ("cyclic" or "random");
    the rest as MeZO. ``step_blocks()`` names the blocks the next step visits.
    """

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0,
                 blocks_per_step: int | None = None, order: str = "cyclic", **engine):
        if blocks_per_step is not None and blocks_per_step < 1:
            raise ValueError(f"blocks_per_step must be >= 1 or None, got {blocks_per_step}")
        if order not in ORDERS:
            raise ValueError(f"unknown order {order!r}; choose one of {ORDERS}")
        super().__init__(params, lr=lr, eps=eps, weight_decay=weight_decay, **engine)
        self.blocks = layer_blocks(self)
        self.order = order
        self.blocks_per_step = min(blocks_per_step or len(self.blocks), len(self.blocks))
        self._current: frozenset[int] | None = None  # param ids of the block being handled

    @property
    def forward_passes(self) -> int:
        return super().forward_passes * self.blocks_per_step  # 2 per direction, per block

    def _visit(self) -> list[int]:
        """Indices of the blocks of the current step."""
        n, k = len(self.blocks), self.blocks_per_step
        if k == n:
            return list(range(n))
        if self.order == "random":
            return sorted(random.Random(mix(self.step_seed(), BLOCKS)).sample(range(n), k))
        return [(self.zo_step * k + i) % n for i in range(k)]

    def step_blocks(self) -> list[str]:
        """Labels of the blocks the next step visits."""
        return [self.blocks[b][0] for b in self._visit()]

    def active(self, e: Perturbed) -> bool:
        return self._current is None or id(e.param) in self._current

    @torch.no_grad()
    def step(self, closure):
        if closure is None:
            raise ValueError("BlockZO.step needs a closure that runs a forward pass and returns the loss")
        eps = self.shared_eps()
        estimates, losses = [], []
        try:
            for b in self._visit():  # all losses first: nothing is written until they are known
                self._current = frozenset(self.blocks[b][1])
                est, loss = self.spsa(closure, eps)  # [(seed_j, g_j)] for this block
                estimates.append((self._current, est))
                losses.append(loss)
            for ids, est in estimates:
                self._current = ids
                n = len(est)
                for group in self.param_groups:
                    lr, wd = group["lr"], group["weight_decay"]
                    self.apply(group, est, coef=-lr / n, decay=1.0 - lr * wd)
        finally:
            self._current = None
        gs = [g for _, est in estimates for _, g in est]
        self.finish_step(sum(gs) / len(gs))
        return torch.tensor(sum(losses) / len(losses))

