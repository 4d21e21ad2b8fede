"""MeZO-SVRG: MeZO with SVRG's control variate, an anchor point and its large-batch estimate.

Gautam et al., "Variance-reduced Zeroth-Order Methods for Fine-Tuning Language Models", ICML 2024
(arXiv 2404.08080; code amazon-science/mezo_svrg). With ĝ_B(θ; z) = (L_B(θ+εz) − L_B(θ−εz))/2ε · z
on batch B and q = ``anchor_every``:

    t ≡ 0 (mod q):  θ̄ ← θ,  ḡ = ĝ_A(θ̄; z̄)                    # anchor batch A, 2 forward passes
                    θ ← (1 − η₁λ)·θ − η₁·ḡ                    # η₁ = ``anchor_lr``
    otherwise:      θ ← (1 − η₂λ)·θ − η₂·(ĝ_B(θ; z) − ĝ_B(θ̄; z) + ḡ)   # 4 forward passes, η₂ = ``lr``

Why: ĝ_B(θ; z) − ĝ_B(θ̄; z) has a small variance while θ stays near θ̄, and ḡ, taken on a large
batch, carries the rest; the paper reports about 2× fewer GPU-hours than MeZO to MeZO's accuracy.
Our choices where the sources differ (and why): the two minibatch estimates share the batch and the
draw z, as the paper's rule ∇̂f_B(θ) − ∇̂f_B(θ̄) is written (a control variate only cancels noise it
shares; the authors' code draws a new z for the second one and evaluates it at the already updated
weights, not at θ̄); θ̄ is kept as a copy of the weights (1 × params, in their dtype); ḡ is kept as
its seeds and projected gradients (O(1), regenerated like MeZO's z), which needs draws that depend on
the seed alone, so the sampler is the dense one.

The anchor batch: ``step(closure, anchor_closure=None)`` takes ḡ on ``anchor_closure`` (the loss
of a large batch; default: ``closure``). zotune's trainer passes the mean loss of
``anchor_batch_size`` training examples, drawn afresh at each anchor, run in microbatches of the
training batch size. With q = 1, every step is an anchor step and the method is MeZO with lr η₁ on
the anchor batch (tested: bit-identical weights with the same draws).

Forward passes per step: 2n on anchor steps (of the anchor closure), 4n otherwise (n =
``num_directions``, the n draws sharing ḡ's role). State: θ̄, 1 × params in the weights' dtype.
Defaults: q = 2 (the authors' scripts); lr = anchor_lr = 1e-6 as MeZO (the authors tune η₁ ≫ η₂,
e.g. 1e-3 and 1e-6 on OPT-1.3B with a learning-rate annealing that is not part of this rule);
ε = 1e-3; anchor batch 64 examples (the authors use the whole 512-example training set).
"""

from __future__ import annotations

import torch

from zotune.engine import Part
from zotune.optim.base import ZOOptimizer, check_closure, check_hparams
from zotune.optim.mezo import sgd_update
from zotune.optim.registry import register
from zotune.samplers.base import Sampler, whole_number


def svrg_direction(now: Part, at_anchor: Part, anchor: tuple) -> tuple[tuple[int, float], ...]:
    """The rule's direction ĝ_B(θ) − ĝ_B(θ̄) + ḡ as seeded terms: (1/n)Σ_j (g_j − ḡ_j)·z_j + ḡ."""
    n = now.n
    return tuple((s, (g - ga) / n) for (s, g), (_, ga) in zip(now.terms, at_anchor.terms)) + anchor


@register("mezo-svrg")
class MeZOSVRG(ZOOptimizer):
    """MeZO with an SVRG anchor. ``loss = opt.step(closure, anchor_closure=None)`` returns the mean
    of the losses at θ ± εz (on anchor steps: of the anchor closure)."""

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0,
                 anchor_lr: float | None = None, anchor_every: int = 2, anchor_batch_size: int = 64, **engine):
        check_hparams(lr, eps, weight_decay)
        anchor_lr = lr if anchor_lr is None else anchor_lr
        check_hparams(lr=anchor_lr)
        self.anchor_every = whole_number("anchor_every", anchor_every, 1)
        self.anchor_batch_size = whole_number("anchor_batch_size", anchor_batch_size, 1)
        super().__init__(params, dict(lr=lr, eps=eps, weight_decay=weight_decay, anchor_lr=anchor_lr), **engine)
        if type(self.sampler) is not Sampler:
            raise ValueError(f"MeZOSVRG keeps its anchor estimate as seeds, which needs draws that depend on the seed "
                             f"alone; {self.sampler!r} does not: leave the sampler at its default (dense)")
        self.anchor: tuple[tuple[int, float], ...] = ()  # ḡ as ((seed, weight), ...)

    def anchor_due(self) -> bool:
        """Whether the next step takes a new anchor (zotune's trainer then builds the anchor closure)."""
        return self.zo_step % self.anchor_every == 0

    @property
    def forward_passes(self) -> int:
        return (2 if self.anchor_due() else 4) * self.directions_now()

    @torch.no_grad()
    def step(self, closure, anchor_closure=None):
        check_closure(self, closure)
        eps = self.shared_eps()
        if self.anchor_due():
            est = self.estimate(anchor_closure or closure, eps)
            (part,) = est.parts
            for e in self.engine.params:  # θ̄ ← θ, before the update
                self.buffer(e, "anchor", lambda e: torch.empty_like(e.param)).copy_(e.param.detach())
            self.anchor = tuple(part.mean())
            for group, e, _ in self.estimated(est):
                self.engine.write_along(e, *sgd_update(part, group["anchor_lr"], group["weight_decay"]))
        else:
            est = self.estimate(closure, eps)
            at_anchor = self.engine.spsa(closure, eps, self.directions_now(),
                                         origin=lambda e: self.state[e.param]["anchor"])
            direction = svrg_direction(est.parts[0], at_anchor.parts[0], self.anchor)
            for group, e, _ in self.estimated(est):
                lr = group["lr"]
                self.engine.write_along(e, direction, -lr, 1.0 - lr * group["weight_decay"])
        self.finish_step(est.projected)
        return torch.tensor(est.loss)

    def extra_state(self) -> dict:
        return {"anchor": [list(term) for term in self.anchor]}

    def load_extra_state(self, extra: dict) -> None:
        self.anchor = tuple((int(s), float(w)) for s, w in extra.get("anchor", []))
