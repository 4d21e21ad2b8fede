"""ZO-SGD-MMT: heavy-ball momentum on the two-point estimate.

Zhang et al., "Revisiting Zeroth-Order Optimization for Memory-Efficient LLM Fine-Tuning: A
Benchmark" (ZO-Bench), ICML 2024 (arXiv 2402.11592); the benchmark's code hands ĝ to
``torch.optim.SGD(momentum=0.9)``, whose rule (no dampening, coupled L2 decay) is kept here:

    ĝ = g·z,  g = (L(θ + εz) − L(θ − εz)) / (2ε)     # two forward passes
    m ← μ·m + ĝ + λ·θ
    θ ← θ − lr·m

Why: averaging the one-direction estimates over ~1/(1−μ) steps lowers their variance; the
price is the buffer, which cannot be regenerated from seeds. Note the effective step is about
lr/(1−μ), so lr must be ~10× smaller than MeZO's for μ = 0.9.
With ``num_directions=n``, ĝ = (1/n) Σ g_j z_j (2n forward passes).
Forward passes per step: 2 (2n). State: 1× params (the fp32 momentum buffer, 4 bytes/element,
also for half-precision weights so small ZO estimates are not rounded away).
Defaults: μ = 0.9 (ZO-Bench's code); lr = 1e-6 and ε = 1e-3 follow MeZO's full-parameter setting
(an assumption: we found no ZO-SGD-MMT sweep in the notes); weight decay 0.
"""

from __future__ import annotations

import torch

from zotune.optim.base import ZOOptimizer, check_hparams


def keep_fp32_state(state_dict: dict, keys: tuple[str, ...]) -> dict:
    """Pick the fp32 tensors ``keys`` out of a state_dict before torch's load casts them to each
    parameter's dtype (bf16 would round the small ZO moments away); ``restore_fp32_state`` puts
    them back after the load."""
    return {(int(i), k): st[k] for i, st in state_dict["state"].items() for k in keys if k in st}


def restore_fp32_state(opt: ZOOptimizer, saved: dict) -> None:
    params = [p for g in opt.param_groups for p in g["params"]]
    for (i, k), t in saved.items():
        opt.state[params[i]][k] = t.to(params[i].device, torch.float32).clone()


class ZOSGDMomentum(ZOOptimizer):
    """ZO-SGD with heavy-ball momentum. ``loss = opt.step(closure)``.

    The returned loss is the mean of the perturbed losses, an O(ε²) estimate of L(θ).
    """

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, momentum: float = 0.9,
                 weight_decay: float = 0.0, **engine):
        check_hparams(lr, eps, weight_decay)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        super().__init__(params, dict(lr=lr, eps=eps, momentum=momentum, weight_decay=weight_decay), **engine)

    @torch.no_grad()
    def step(self, closure):
        if closure is None:
            raise ValueError("ZOSGDMomentum.step needs a closure that runs a forward pass and returns the loss")
        estimates, loss = self.spsa(closure, self.shared_eps())
        n = len(estimates)
        grad = [(seed, g / n) for seed, g in estimates]
        for group in self.param_groups:
            for e in self.trainable(group):
                if not self.active(e):
                    continue
                state = self.state[e.param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros(e.param.shape, dtype=torch.float32, device=e.param.device)
                m = state["momentum_buffer"]
                m.mul_(group["momentum"]).add_(self.direction_tensor(e, grad))
                if group["weight_decay"]:
                    m.add_(state.get("master", e.param).float(), alpha=group["weight_decay"])
                self.add_(e, m * -group["lr"])
        self.finish_step(sum(g for _, g in estimates) / n)
        return torch.tensor(loss)

    def load_state_dict(self, state_dict):
        saved = keep_fp32_state(state_dict, ("momentum_buffer",))
        super().load_state_dict(state_dict)
        restore_fp32_state(self, saved)
