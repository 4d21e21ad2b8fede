"""Layer samplers: a random subset of layer blocks per step (LeZO), or one estimate per block
(BlockZO).

A *block* is the parameters of one layer (``layer_blocks``): parameters whose name has an index
component are grouped up to it (``model.layers.7.mlp.up_proj.weight`` → ``model.layers.7``);
others by their module (``model.embed_tokens``, ``model.norm``, ``lm_head``); without names (plain
``parameters()``) each parameter is its own block. Draws are dense (the noise kind).
"""

from __future__ import annotations

import random

from zotune.engine import Step
from zotune.perturb import Perturbed
from zotune.rng import mix
from zotune.samplers.base import Sampler, register_sampler, whole_number

LAYERS = 0x1E20  # salt of the seed that picks LeZO's layers of a step
BLOCKS = 0xB10C  # salt of the seed that picks BlockZO's blocks of a step (order="random")
ORDERS = ("cyclic", "random")


def block_label(name: str) -> str:
    """Layer block of a parameter name: the prefix up to its first numeric component, else its
    module path (``model.layers.7.attn.q.weight`` → ``model.layers.7``; ``lm_head.weight`` →
    ``lm_head``)."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:-1])


def layer_blocks(params: list[Perturbed]) -> list[tuple[str, frozenset[int]]]:
    """(label, {id(param)}) per layer block, in the order the parameters were given."""
    blocks: dict[str, list[int]] = {}
    for e in params:
        label = block_label(e.name) if e.name is not None else f"#{e.index}"
        blocks.setdefault(label, []).append(id(e.param))
    return [(label, frozenset(ids)) for label, ids in blocks.items()]


class _LayerSampler(Sampler):
    def bind(self, params, kind):
        super().bind(params, kind)
        self.blocks = layer_blocks(self.params)
        return self

    def labels(self, t: Step) -> list[str]:
        """Labels of the blocks step ``t`` perturbs and updates."""
        return [self.blocks[b][0] for b in self.chosen(t)]

    def chosen(self, t: Step) -> list[int]:
        raise NotImplementedError


@register_sampler("layers")
class LayerSubset(_LayerSampler):
    """LeZO (Wang et al., arXiv 2410.09823): each step perturbs and updates a random set of
    max(1, round((1 − ρ)·L)) of the L blocks, drawn from the step seed; ρ = ``sparsity``. Every
    block is a candidate, the non-layer ones included (an assumption: the paper sparsifies the
    layers of OPT and does not say how it treats the embeddings and the head)."""

    def __init__(self, sparsity: float = 0.75):
        super().__init__()
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
        self.sparsity = float(sparsity)
        self._memo: tuple[Step, frozenset[int]] | None = None

    def bind(self, params, kind):
        super().bind(params, kind)
        self.blocks_per_step = max(1, round((1.0 - self.sparsity) * len(self.blocks)))
        return self

    def chosen(self, t: Step) -> list[int]:
        rng = random.Random(mix(t.seed, LAYERS))  # private: the global RNG is untouched
        return sorted(rng.sample(range(len(self.blocks)), self.blocks_per_step))

    def subsets(self, t: Step) -> list[frozenset[int]]:
        if self._memo is None or self._memo[0] != t:  # asked once per perturbation and update
            self._memo = (t, frozenset().union(*(self.blocks[b][1] for b in self.chosen(t))))
        return [self._memo[1]]

    def __repr__(self) -> str:
        return f"LayerSubset(sparsity={self.sparsity})"


@register_sampler("blocks")
class Blocks(_LayerSampler):
    """Block-wise estimates (ZO-Bench's ``module_wise_perturbation``, arXiv 2402.11592; with one
    block per step, MeZO-BCD, arXiv 2501.19099): each visited block is its own subset, so it gets
    its own two-point estimate with only that block perturbed.

    ``blocks_per_step=None`` visits all B blocks every step; an integer k visits k blocks,
    ``order="cyclic"`` (blocks tk, …, tk+k−1 mod B) or ``order="random"`` (k distinct blocks drawn
    from the step seed)."""

    def __init__(self, blocks_per_step: int | None = None, order: str = "cyclic"):
        super().__init__()
        if blocks_per_step is not None:
            blocks_per_step = whole_number("blocks_per_step", blocks_per_step, 1)
        if order not in ORDERS:
            raise ValueError(f"unknown order {order!r}; choose one of {ORDERS}")
        self.order = order
        self.requested = blocks_per_step

    def bind(self, params, kind):
        super().bind(params, kind)
        if self.requested is not None and self.requested > len(self.blocks):
            raise ValueError(f"blocks_per_step {self.requested} is more than the {len(self.blocks)} blocks of the "
                             f"trainable parameters; use at most {len(self.blocks)}, or leave it unset to visit all")
        self.blocks_per_step = self.requested or len(self.blocks)
        return self

    def chosen(self, t: Step) -> list[int]:
        n, k = len(self.blocks), self.blocks_per_step
        if k == n:
            return list(range(n))
        if self.order == "random":
            return sorted(random.Random(mix(t.seed, BLOCKS)).sample(range(n), k))
        return [(t.index * k + i) % n for i in range(k)]

    def subsets(self, t: Step) -> list[frozenset[int]]:
        return [self.blocks[b][1] for b in self.chosen(t)]

    def __repr__(self) -> str:
        return f"Blocks(blocks_per_step={self.requested}, order={self.order!r})"
