"""The textbook MeZO step, the published trainer's, kept as the reference zotune's MeZO is checked against.

``textbook_mezo_step`` is Malladi et al. 2023's ``zo_step``/``zo_update`` (four out-of-place passes
that write the weights: +ε, −2ε, +ε, then the update) and ``published_noise`` its noise (the global
RNG reseeded per pass, one ``torch.normal`` per tensor). ``zotune bench step`` times the step;
``tests/test_bench_textbook_twin.py`` runs it with the engine's noise beside ``zotune.optim.MeZO``.

``TextbookMeZO`` (``--optimizer textbook-mezo``) runs that step, with the published noise under
``noise: gaussian``, inside zotune's training loop, so a study trains the reference at exactly
MeZO's settings (same batches, same evaluation) and compares the accuracies reached (the sanity
row of ``zotune bench study``).
It is a reference, not a zotune method, and keeps the published step's weaknesses on purpose: it
writes the weights before the step's losses are known (a raising or non-finite closure leaves them
perturbed), and its steps cannot be replayed from the losses (its noise is not the engine's), so a
resumed run redoes its steps from the last checkpoint.
"""

from __future__ import annotations

import math

import torch

from zotune.engine import NonFiniteUpdateError
from zotune.optim.base import ZOOptimizer, check_closure, check_hparams
from zotune.optim.registry import register


def published_noise(seed: int):
    """MeZO's own noise (Malladi et al. 2023, ``zo_perturb_parameters``): the global RNG reseeded
    with the step seed, then one ``torch.normal`` per tensor in parameter order. Returns
    ``z(name, param)``; call it once per pass, as the original reseeds once per pass."""
    torch.manual_seed(seed)
    return lambda name, p: torch.normal(mean=0, std=1, size=p.shape, device=p.device, dtype=p.dtype)


def published_rademacher(seed: int):
    """±1 entries drawn the published way (the global RNG reseeded per pass, one draw per tensor),
    for ``--noise rademacher``: not in the paper, which draws Gaussian noise only."""
    torch.manual_seed(seed)
    return lambda name, p: torch.randint(0, 2, p.shape, device=p.device).to(p.dtype).mul_(2).sub_(1)


NOISE = {"gaussian": published_noise, "rademacher": published_rademacher}


def textbook_mezo_step(named_params, closure, lr: float, eps: float, seed: int, noise=published_noise) -> float:
    """The published MeZO step: four passes that write the weights (+ε, −2ε, +ε, then the update;
    out of place, as published), each regenerating z. Returns the projected gradient g.

    Timed by ``zotune bench`` with the published noise (which reseeds the global RNG; the caller
    restores it). Given the engine's generator as ``noise`` it is MeZO's textbook twin: the
    tests run it beside ``zotune.optim.MeZO`` and compare the weights every step.
    """
    params = [(n, p) for n, p in named_params if p.requires_grad]

    def perturb(scale):
        z = noise(seed)
        for n, p in params:
            p.data = p.data + scale * eps * z(n, p)

    with torch.no_grad():
        perturb(1)
        l1 = closure()
        perturb(-2)
        l2 = closure()
        perturb(1)
        g = ((l1 - l2) / (2 * eps)).item()
        z = noise(seed)
        for n, p in params:
            p.data = p.data - lr * g * z(n, p)
    return g


def _one_number(loss) -> torch.Tensor:
    """The closure's loss as a 0-dim fp32 tensor, or a ValueError saying what a closure returns."""
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        what = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"the closure returned {what}; a zeroth-order step needs one number, the loss: "
                         "return e.g. loss.mean()")
    return loss.detach().float().reshape(())


@register("textbook-mezo")
class TextbookMeZO(ZOOptimizer):
    """The published MeZO step, one per ``step(closure)``, seeded by zotune's step seed (so a run is
    reproducible and resumable from its checkpoints). ``noise="gaussian"`` (the default) is the
    published noise; ``"rademacher"`` draws ±1 the same way. Returns the mean of the two perturbed
    losses, as ``MeZO`` does."""

    replayable = False  # the published noise is not the engine's: a resume redoes steps, never plays them

    # Not a zotune method: it writes the weights before the step's losses are known, as published,
    # so it lacks the engine's guarantee that a raising or non-finite closure changes nothing.
    reference = True

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, seed: int = 0, noise: str = "gaussian"):
        check_hparams(lr, eps)
        if noise not in NOISE:
            raise ValueError(f"textbook-mezo draws {' or '.join(NOISE)} noise, not {noise!r}")
        super().__init__(params, dict(lr=lr, eps=eps), seed=seed, noise=noise)

    @torch.no_grad()
    def step(self, closure):
        check_closure(self, closure)
        group = self.param_groups[0]
        named = [(e.name or str(e.index), e.param) for e in self.engine.params]
        losses = []

        def checked():
            losses.append(_one_number(closure()))
            return losses[-1]

        cuda = sorted({p.device for _, p in named if p.device.type == "cuda"}, key=str)
        with torch.random.fork_rng(devices=cuda):  # the published noise reseeds the global RNG: not the caller's
            g = textbook_mezo_step(named, checked, group["lr"], group["eps"], seed=self.step_seed() & (2**64 - 1),
                                   noise=NOISE[self.noise])
        if not math.isfinite(g):
            raise NonFiniteUpdateError(f"textbook-mezo: non-finite projected gradient {g} at step {self.zo_step + 1} "
                                       "(losses " + ", ".join(f"{float(v):.4g}" for v in losses) + "); the published "
                                       "step has already written its update. Lower the lr or eps")
        self.finish_step(g)
        return (losses[0] + losses[1]) / 2
