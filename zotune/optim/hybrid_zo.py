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

from zotune.optim.base import NonFiniteLossError, ZOOptimizer, check_hparams
from zotune.perturb import Perturbed

DEFAULT_FO = r"(^|\.)(norm|final_layer_norm|lm_head|score|classifier)\."


class HybridZO(ZOOptimizer):
    """ZO-SGD on most parameters, SGD with backprop on those whose name matches ``fo_params``.
    ``loss = opt.step(closure)`` returns L(θ) from the FO forward. Needs ``named_parameters()``."""

    @property
    def forward_passes(self) -> int:
        return (2 * self.num_directions if self._has_zo else 0) + 1

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0,
                 fo_params: str = DEFAULT_FO, fo_lr: float | None = None, **engine):
        check_hparams(lr, eps, weight_decay)
        if fo_lr is not None and fo_lr < 0:
            raise ValueError(f"fo_lr must be >= 0, got {fo_lr}")
        try:
            pattern = re.compile(fo_params)
        except re.error as err:
            raise ValueError(f"fo_params is not a valid regex: {fo_params!r} ({err})") from None
        super().__init__(params, dict(lr=lr, eps=eps, weight_decay=weight_decay, fo_lr=fo_lr), **engine)
        self.fo_params = fo_params
        names = {}
        for group in self.param_groups:
            if not group.get("param_names"):
                raise ValueError("HybridZO selects FO parameters by name: pass model.named_parameters()")
            names.update({id(p): n for p, n in zip(group["params"], group["param_names"])})
        self._fo = {pid for pid in self._entries if pattern.search(names[pid])}
        if not self._fo:
            shown = ", ".join(list(names.values())[:8])
            raise ValueError(f"fo_params {fo_params!r} matches no trainable parameter; names look like: {shown}")
        self._has_zo = len(self._fo) < len(self._entries)

    def active(self, e: Perturbed) -> bool:
        """ZO perturbs and updates only the parameters outside ``fo_params``."""
        return id(e.param) not in self._fo

    def _fo_gradient(self, closure) -> tuple[float, list[tuple[dict, Perturbed, torch.Tensor]]]:
        """L(θ) and ∂L/∂θ for the FO parameters, from one forward with grad enabled only for them."""
        fo = [(g, e) for g in self.param_groups for e in self.trainable(g) if not self.active(e)]
        zo = [(e.param, e.param.requires_grad) for e in self._entries.values() if self.active(e)]
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
        if closure is None:
            raise ValueError("HybridZO.step needs a closure that runs a forward pass and returns the loss")
        eps = self.shared_eps()
        estimates = self.spsa(closure, eps)[0] if self._has_zo else []
        loss, fo = self._fo_gradient(closure)  # every loss is known before any weight is written
        n = max(len(estimates), 1)
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            if estimates:
                self.apply(group, estimates, coef=-lr / n, decay=1.0 - lr * wd)
        for group, e, grad in fo:
            lr = group["lr"] if group["fo_lr"] is None else group["fo_lr"]
            self.add_(e, grad.mul_(-lr), decay=1.0 - lr * group["weight_decay"])
        self.finish_step(sum(g for _, g in estimates) / n)
        return torch.tensor(loss)
