"""Hybrid ZO-FO: backprop for a few named parameters (the output side), two-point ZO for the rest.

Zhang et al., "Revisiting Zeroth-Order Optimization for Memory-Efficient LLM Fine-Tuning: A
Benchmark" (ZO-Bench, arXiv 2402.11592, ICML 2024) proposes hybrid ZO-FO training: backprop
through the layers nearest the loss, whose gradients are cheap (the backward stops there, so only
their activations are kept), and ZO on the rest. The exact split the paper uses is unknown; here
it is the ``fo_params`` regex, searched in each parameter's name. Per step:

    g  = (L(θ + εz) − L(θ − εz)) / 2ε           z on the ZO parameters only    # 2 forward passes
    ∇  = ∂L(θ)/∂θ_FO                             forward with grad for θ_FO     # 1 forward + backward
    θ_ZO ← θ_ZO − lr·(g·z + λ·θ_ZO)
    θ_FO ← θ_FO − fo_lr·(∇ + λ·θ_FO)             plain SGD

The closure stays forward-only: the optimizer runs the extra forward itself under
``torch.enable_grad()`` with requires_grad temporarily off on the ZO parameters, so autograd keeps
activations only from the first FO parameter onwards; it takes the gradient with
``torch.autograd.grad`` (the parameters' ``.grad`` are never touched). No weight is written before
the three losses and the gradient are known and finite. Caveat: a FO parameter read early in the
network (a tied input/output embedding) makes autograd record the whole forward, i.e. full backprop
memory; keep tied embeddings on the ZO side.

Forward passes per step: 3 (2n + 1 with ``num_directions=n``; 1 if ``fo_params`` matches every
parameter, which degenerates to SGD). State: none (SGD), plus fp32 masters with ``master_weights``.
Defaults: lr, ε as MeZO; fo_lr = lr unless given (FO usually tolerates a much larger step, e.g.
1e-4); ``fo_params`` matches the final norm and the output head of Hugging Face models
(``model.norm``, ``final_layer_norm``, ``lm_head``, ``score``, ``classifier``).
"""

from __future__ import annotations

import math
import re

import torch

from zotune.engine import NonFiniteLossError
from zotune.optim.base import ZOOptimizer, check_closure, check_finite_options, check_hparams
from zotune.optim.mezo import sgd_update
from zotune.optim.registry import register
from zotune.perturb import Perturbed

DEFAULT_FO = r"(^|\.)(norm|final_layer_norm|lm_head|score|classifier)\."


@register("hybrid-zo")
class HybridZO(ZOOptimizer):
    """ZO-SGD on most parameters, SGD with backprop on those whose name matches ``fo_params``.
    ``loss = opt.step(closure)`` returns L(θ) from the FO forward. Needs ``named_parameters()``."""

    replayable = False  # its first-order half needs gradient tensors, not scalars
    scalar_closure = False  # ... from a backward pass through the closure's value

    @property
    def forward_passes(self) -> int:
        zo = 2 * self.directions_now() * len(self.engine.subsets(self.zo_side)) if self.zo_side else 0
        return zo + 1

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0,
                 fo_params: str = DEFAULT_FO, fo_lr: float | None = None, **engine):
        check_hparams(lr, eps, weight_decay)
        check_finite_options("HybridZO", {"fo_lr": fo_lr} if fo_lr is not None else {})
        if fo_lr is not None and fo_lr < 0:
            raise ValueError(f"fo_lr must be >= 0, got {fo_lr}")
        try:
            pattern = re.compile(fo_params)
        except re.error as err:
            raise ValueError(f"fo_params is not a valid regex: {fo_params!r} ({err})") from None
        super().__init__(params, dict(lr=lr, eps=eps, weight_decay=weight_decay, fo_lr=fo_lr), **engine)
        self.fo_params = fo_params
        trainable = self.engine.params
        if any(e.name is None for e in trainable):
            raise ValueError("HybridZO selects FO parameters by name: pass model.named_parameters()")
        self.fo_side = frozenset(id(e.param) for e in trainable if pattern.search(e.name))
        if not self.fo_side:
            shown = ", ".join(e.name for e in trainable[:8])
            raise ValueError(f"fo_params {fo_params!r} matches no trainable parameter; names look like: {shown}")
        # the parameters the ZO estimate covers (empty: every parameter is FO, plain SGD)
        self.zo_side = frozenset(id(e.param) for e in trainable) - self.fo_side

    def fo_gradient(self, closure) -> tuple[float, list[tuple[dict, Perturbed, torch.Tensor]]]:
        """L(θ) and ∂L/∂θ for the FO parameters, from one forward with grad enabled only for them."""
        fo = [(g, e) for g in self.param_groups for e in self.trainable(g) if id(e.param) in self.fo_side]
        zo = [(e.param, e.param.requires_grad) for e in self.engine.params if id(e.param) in self.zo_side]
        try:
            for p, _ in zo:
                p.requires_grad_(False)
            with torch.enable_grad():
                loss = closure()
                if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
                    raise ValueError("HybridZO: the closure's loss has no graph to the FO parameters; "
                                     "it must return a tensor and not disable grad itself")
                grads = torch.autograd.grad(loss, [e.param for _, e in fo], allow_unused=True)
        finally:
            for p, flag in zo:
                p.requires_grad_(flag)
        value = loss.detach().float().item()
        grads = [torch.zeros_like(e.param, dtype=torch.float32) if gr is None else gr.float()
                 for (_, e), gr in zip(fo, grads)]
        if not math.isfinite(value) or not all(torch.isfinite(gr).all() for gr in grads):
            raise NonFiniteLossError(f"non-finite FO loss or gradient ({value}) at step {self.zo_step}: "
                                     "no weight was changed. Lower fo_lr or check the data.")
        return value, [(g, e, gr) for (g, e), gr in zip(fo, grads)]

    @torch.no_grad()
    def step(self, closure):
        check_closure(self, closure)
        eps = self.shared_eps()
        est = self.estimate(closure, eps, within=self.zo_side) if self.zo_side else None
        loss, fo = self.fo_gradient(closure)  # every loss is known before any weight is written
        if est is not None:
            for group, e, part in self.estimated(est):
                self.engine.write_along(e, *sgd_update(part, group["lr"], group["weight_decay"]))
        for group, e, grad in fo:
            lr = group["lr"] if group["fo_lr"] is None else group["fo_lr"]
            self.engine.write(e, grad.mul_(-lr), decay=1.0 - lr * group["weight_decay"])
        self.finish_step(est.projected if est is not None else 0.0)
        return torch.tensor(loss)
