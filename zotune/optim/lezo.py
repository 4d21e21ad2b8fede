"""LeZO: ZO-SGD that perturbs and updates a random subset of layers each step.

Wang et al., "Simultaneous Computation and Memory Efficient Zeroth-Order Optimizer for Fine-Tuning
Large Language Models" (arXiv 2410.09823). Per step t, with the layer blocks B_1..B_L of the
model and z ~ N(0, I) from the step seed:

    S_t = a random set of max(1, round((1 − ρ)·L)) blocks, drawn from the step seed
    z' = z on the blocks of S_t, 0 elsewhere
    g = (L(θ + εz') − L(θ − εz')) / (2ε);   θ_b ← θ_b − lr·(g·z_b + λ·θ_b) for b ∈ S_t

Blocks (``layer_blocks``): parameters whose name has an index component are grouped up to it
(``model.layers.7.mlp.up_proj.weight`` → ``model.layers.7``); other parameters are grouped by
their module (``model.embed_tokens``, ``model.norm``, ``lm_head``); without names (plain
``parameters()``) each parameter is its own block. Every block is a candidate, the non-layer
ones included (an assumption: the paper sparsifies "layers" of OPT and does not say how it
treats the embeddings and the head). Unchosen blocks are neither perturbed nor updated, so their
perturbation and update cost (over half of a MeZO step in the paper's profile) is skipped.

Forward passes per step: 2 (2n with ``num_directions=n``; one subset per step for all n).
State memory: 0 × params (the subset is re-derived from the step seed).
Defaults: ρ = ``sparsity`` = 0.75 is an assumption (the paper's value was not found); lr 1e-6 and
ε 1e-3 follow MeZO's full-parameter setting.
"""

from __future__ import annotations

import random

from zotune.optim.mezo import MeZO
from zotune.perturb import Perturbed
from zotune.rng import mix

LAYERS = 0x1E20  # salt of the seed that picks the layers of a step


def block_label(name: str) -> str:
    """Layer block of a parameter name: the prefix up to its first numeric component, else its
    module path (``model.layers.7.attn.q.weight`` → ``model.layers.7``; ``lm_head.weight`` →
    ``lm_head``)."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:-1])


def layer_blocks(opt) -> list[tuple[str, list[int]]]:
    """(label, [id(param), ...]) per layer block of a ZO optimizer's trainable parameters, in
    the order the parameters were given. Parameters without names form one block each."""
    blocks: dict[str, list[int]] = {}
    index = 0
    for group in opt.param_groups:
        names = group.get("param_names")
        for i, p in enumerate(group["params"]):
            index += 1
            if opt._entries.get(id(p)) is None:
                continue
            label = block_label(names[i]) if names else f"#{index}"
            ids = blocks.setdefault(label, [])
            if id(p) not in ids:
                ids.append(id(p))
    return list(blocks.items())


class LeZO(MeZO):
    """MeZO restricted each step to a random subset of layer blocks. ``loss = opt.step(closure)``.

    Args: ``sparsity`` ρ ∈ [0, 1), the fraction of blocks left out each step (at least one block
    is always chosen); the rest as MeZO. ``active_blocks()`` names the blocks of the next step.
    """

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0,
                 sparsity: float = 0.75, **engine):
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
        super().__init__(params, lr=lr, eps=eps, weight_decay=weight_decay, **engine)
        self.sparsity = float(sparsity)
        self.blocks = layer_blocks(self)
        self.blocks_per_step = max(1, round((1.0 - self.sparsity) * len(self.blocks)))
        self._chosen: tuple[int, int, frozenset[int]] | None = None  # (seed, step, param ids)

    def _chosen_ids(self) -> frozenset[int]:
        """Param ids of this step's blocks, memoised per step (active() is asked per parameter)."""
        tag = (self.seed, self.zo_step)
        if self._chosen is None or self._chosen[:2] != tag:
            picks = self._pick()
            ids = frozenset(pid for b in picks for pid in self.blocks[b][1])
            self._chosen = (*tag, ids)
        return self._chosen[2]

    def _pick(self) -> list[int]:
        rng = random.Random(mix(self.step_seed(), LAYERS))  # private: the global RNG is untouched
        return sorted(rng.sample(range(len(self.blocks)), self.blocks_per_step))

    def active_blocks(self) -> list[str]:
        """Labels of the blocks the next step perturbs and updates."""
        return [self.blocks[b][0] for b in self._pick()]

    def active(self, e: Perturbed) -> bool:
        return id(e.param) in self._chosen_ids()
