"""Forward-Grad: SGD along a random direction with the exact directional derivative (a JVP).

Baydin et al., "Gradients without Backpropagation" (arXiv 2202.08587), as benchmarked by
Zhang et al., "Revisiting Zeroth-Order Optimization for Memory-Efficient LLM Fine-Tuning: A
Benchmark" (ZO-Bench), ICML 2024 (arXiv 2402.11592). Per step, with v drawn from the step seed:

    (L, j) = (L(θ), ∇L(θ)·v)             # one forward pass in forward-mode AD (a JVP)
    θ ← (1 − lr·λ)·θ − lr · j·v

Why: j·v is an unbiased gradient estimate like the two-point ĝ, but j is exact (no smoothing
radius, no finite-difference error) and it costs one forward pass carrying tangents (about 1–2×
a plain forward in time, plus one tangent per activation) instead of two.
How: inside ``torch.autograd.forward_ad.dual_level()`` every trainable parameter is swapped, for
its module's forward only, for the dual tensor (θ, v) by the engine's functional perturbation, so
θ is never written and v exists one module at a time; the closure's loss comes back dual and its
tangent is j. The update regenerates v from the seed (one streamed pass, as in MeZO).
Limits: a parameter read outside its owning module's forward (or never read) gets no tangent;
such parameters are found on the first step, left untrained, and named in a warning. Every
operation of the model must support forward-mode AD; attention runs on torch's math SDPA backend
during the JVP, since the fused kernels have no forward derivative (slower and more memory on long
sequences).
With ``num_directions=n``, j·v is averaged over n seeded directions (n JVPs).
Forward passes per step: 1 JVP (n). State: none beyond the step counter (O(1)); the stored-v
implementation of ZO-Bench keeps 1× params.
Defaults: lr = 1e-6 as MeZO's full-parameter setting (an assumption: we found no Forward-Grad
sweep in the notes); weight decay 0. There is no ``eps`` (no finite difference): passing one is an
error rather than a silently ignored setting.
"""

from __future__ import annotations

import warnings

import torch
import torch.autograd.forward_ad as fwAD
from torch.nn.attention import SDPBackend, sdpa_kernel

from zotune.engine import Estimate, Part, check_finite
from zotune.optim.base import ZOOptimizer, check_closure, check_hparams
from zotune.optim.mezo import sgd_update
from zotune.optim.registry import register
from zotune.perturb import Perturbed


@register("forward-grad")
class ForwardGrad(ZOOptimizer):
    """Forward-gradient descent. ``loss = opt.step(closure)`` returns L(θ) (unperturbed);
    ``last_projected_grad`` is the mean directional derivative j of the step."""

    scalar_closure = False  # j is the tangent the closure's value carries

    @property
    def forward_passes(self) -> int:
        return super().forward_passes // 2  # one JVP per draw

    def __init__(self, params, lr: float = 1e-6, weight_decay: float = 0.0, **engine):
        check_hparams(lr=lr, weight_decay=weight_decay)
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay), **engine)

    def jvp(self, closure, seed: int, subset=None) -> tuple[float, float]:
        """(L(θ), ∇L(θ)·v(seed)) from one call of the closure, v on ``subset`` (None: every
        parameter); weights are not written. On replay both come from the engine's tape."""
        engine = self.engine
        if engine.tape.playing:
            return engine.tape.next().item(), engine.tape.next().item()

        def make(e: Perturbed, dtype: torch.dtype | None) -> torch.Tensor:
            p = e.param.detach()
            if id(e.param) in engine.outside or (subset is not None and id(e.param) not in subset):
                return p if dtype is None else p.to(dtype)
            v = engine.tensor(e, seed)
            dtype = dtype or p.dtype
            return fwAD.make_dual(p.to(dtype), v.to(dtype))

        # never swap through .data (that drops the tangent)
        pert = engine.perturbation(make, swap_outside=False)
        # fused attention kernels (CPU flash, CUDA flash/efficient) have no forward-mode derivative;
        # the math backend is built from differentiable ops
        with fwAD.dual_level(), sdpa_kernel(SDPBackend.MATH):
            with pert:
                loss = closure()
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                got = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
                raise ValueError(f"the closure returned {got}; ForwardGrad needs the loss as a one-element tensor "
                                 "(its forward-mode derivative is read from it): return e.g. loss.mean()")
            primal, tangent = fwAD.unpack_dual(loss)
            j = torch.zeros(()) if tangent is None else tangent.detach().float()
            values = torch.stack([primal.detach().float().reshape(()), j.reshape(())]).tolist()
        if not engine.layout_known and engine.learn_layout(pert.visits):
            shapes = [tuple(e.param.shape) for e in engine.params if id(e.param) in engine.outside]
            warnings.warn(f"ForwardGrad: {len(shapes)} trainable parameter(s) of shapes {shapes} are not read "
                          "inside their module's forward; they get no tangent and are not trained", stacklevel=3)
        check_finite(*values, step=self.zo_step + 1)
        for v in values:
            engine.tape.record(v)
        return values[0], values[1]

    @torch.no_grad()
    def step(self, closure):
        check_closure(self, closure)
        n, t = self.directions_now(), self.current_step()
        parts, all_j = [], []
        for subset in self.engine.subsets():
            terms, loss = [], None
            for k in range(n):
                seed = t.draw_seed(k)  # the seeds n-SPSA would use
                lk, j = self.jvp(closure, seed, subset)
                loss = lk if loss is None else loss
                terms.append((seed, j))
            parts.append(Part(subset, tuple(terms), n, loss))
            all_j += [j for _, j in terms]
        est = Estimate(tuple(parts), sum(p.loss for p in parts) / len(parts), sum(all_j) / len(all_j))
        for group, e, part in self.estimated(est):
            if id(e.param) not in self.engine.outside:  # no tangent reached it: not trained
                self.engine.write_along(e, *sgd_update(part, group["lr"], group["weight_decay"]))
        self.finish_step(est.projected)
        return torch.tensor(est.loss)
