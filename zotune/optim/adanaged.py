"""AdaNAGED-style ZO optimizer: two-point estimate, momentum, per-block LMO step, parameter-free
step size and smoothing radius. Runs with no lr and no eps.

Source: Bystrov, Medyakov, Bylinkin, Beznosikov, "Zero-order Parameter-free Optimization for
LMO-based Methods: Novel Approach for Efficient Fine-tuning" (arXiv 2606.14970). Only the abstract
was available: ZO estimates + parameter-free (PF) step size and smoothing + per-block LMO geometry.
The algorithm box, the norms, the PF rules and the meaning of "NAG" were NOT available, so the rule
below is a reconstruction (docs/methods.md, section AdaNAGED; the research digest, algorithms.md §1.4) from
JAGUAR/ZO-Muon (arXiv 2506.04430), uSCG/Scion LMOs (arXiv 2502.07529) and DoG (arXiv 2302.12022).

Per step t, with τ_t the smoothing radius and z(s) the seeded directions (n-SPSA: n of them):

    ĝ_t   = (1/n) Σ_j (L(θ+τ_t z_j) − L(θ−τ_t z_j)) / (2τ_t) · z_j          # 2n forward passes
    m_t   = β m_{t−1} + (1−β) ĝ_t ;  d_t = β m_t + (1−β) ĝ_t  (Nesterov look-ahead; else d_t = m_t)
    per block b, in its geometry (zotune.geometry.lmo_for: spectral for hidden matrices, sign for
    vectors and embeddings):
        u_b = lmo_b(d_b),  δ_b = ‖d_b‖_{b,*} = −⟨d_b, u_b⟩
        G_b ← G_b + ‖ĝ_b‖_{b,*}² ;  γ_b = r̄_b · δ_b / √G_b               # DoG, per block (L-DoG)
        θ_b ← θ_b + step_scale · γ_b · u_b
        r̄_b ← max(r̄_b, ‖θ_b − θ₀_b‖_b)   (distance="exact")  or  max(r̄_b, Σ γ_b)  ("bound")
    τ_{t+1} = max(τ_min, RMS over all elements of the step just computed)

Why each choice: the LMO makes the step's shape scale-free, and γ = r̄·δ/√G is DoG's step
η‖g‖ written for a normed step (for geometry="euclidean" it is exactly DoG), so the iterates do not
change when the loss is multiplied by any constant. G sums the norms of the raw estimates, not of
the momentum: with ZO noise a momentum of random directions drifts coherently, and normalising by
its own (small) norm made r̄ and the steps run away (measured: divergence on least squares);
normalising by the raw estimates shrinks the step by the momentum's signal-to-noise ratio. τ is the per-element size of the last step: the
finite difference probes the scale at which the method actually moves, shrinks as steps shrink, and
is as loss-scale free as the step. τ_min = 2·eps(dtype)·RMS(θ₀) keeps the perturbation visible in
half precision. Start: r̄_b = r_eps·(1 + ‖θ₀_b‖_b), τ_0 = r_eps·(1 + RMS(θ₀)), r_eps = 1e-3 (MeZO's
ε at unit scale; DoG's 1e-6 grows too slowly under ZO noise: an assumption, measured on the tests).

Forward passes per step: 2·num_directions. State (× trainable elements, fp32 params):
    momentum_state="buffer": 1 (fp32 m, kept fp32 for half params too); "seeds": 0 (the last
    ``history`` (seed, g) pairs; m is rebuilt per block at ``history``× the noise cost; m is
    truncated to the last K terms); beta=0: 0.
    distance="exact": +1 (θ₀ in the parameter's dtype); "bound": 0 (r̄ from the scalar Σγ, valid
    because every LMO step has block norm γ, but it overestimates once the iterate turns around).
    Defaults: buffer + exact = 2×; the O(1) variant momentum_state="seeds", distance="bound" = 0×
    (plus O(blocks + K) scalars).
Defaults: beta 0.9, nesterov on (assumptions: the usual Muon/Lion momentum), geometry "auto".
``step_scale`` multiplies every applied step (0 = a no-op step that still updates the statistics).
"""

from __future__ import annotations

import math

import torch

from zotune.geometry import GEOMETRIES, lmo_for, lmo_step, norm
from zotune.optim.base import ZOOptimizer

MOMENTUM_STATES = ("buffer", "seeds")
DISTANCES = ("exact", "bound")


class AdaNAGED(ZOOptimizer):
    """Parameter-free ZO optimizer with per-block LMO steps. ``loss = opt.step(closure)``.

    Args:
        beta: momentum (0 = none). nesterov: step along β m_t + (1−β) ĝ_t instead of m_t.
        geometry: "auto" (per block by ``lmo_for``), one of sign/spectral/colnorm/euclidean for all
            blocks, or a {fnmatch pattern on the parameter name: geometry} override.
        momentum_state: "buffer" (1× fp32) or "seeds" (momentum over the last ``history`` steps,
            regenerated from their seeds: O(history) scalars).
        distance: "exact" (‖θ−θ₀‖ per block, keeps θ₀) or "bound" (the scalar Σγ; no θ₀).
        r_eps: relative initial radius (initial step and smoothing scale).
        step_scale: multiplier on every applied step (0 makes steps no-ops).
    The returned loss is the mean of the perturbed losses.
    """

    def __init__(self, params, beta: float = 0.9, nesterov: bool = True, geometry="auto",
                 momentum_state: str = "buffer", history: int = 16, distance: str = "exact",
                 r_eps: float = 1e-3, step_scale: float = 1.0, **engine):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        if momentum_state not in MOMENTUM_STATES:
            raise ValueError(f"momentum_state must be one of {MOMENTUM_STATES}, got {momentum_state!r}")
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        if r_eps <= 0:
            raise ValueError(f"r_eps must be > 0, got {r_eps}")
        if step_scale < 0:
            raise ValueError(f"step_scale must be >= 0, got {step_scale}")
        if isinstance(geometry, str) and geometry != "auto" and geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be 'auto', one of {GEOMETRIES} or a pattern mapping, got {geometry!r}")
        super().__init__(params, dict(beta=beta, nesterov=nesterov, step_scale=step_scale), **engine)
        self.momentum_state = momentum_state
        self.history = int(history)
        self.distance = distance
        self.r_eps = float(r_eps)
        override = None if geometry == "auto" else geometry
        self._geometry: dict[int, str] = {}
        for group in self.param_groups:
            names = group.get("param_names")
            for i, p in enumerate(group["params"]):
                if id(p) in self._entries:
                    self._geometry[id(p)] = lmo_for(names[i] if names else "", p.shape, override)
        self._blocks: dict[int, list[float]] = {}  # key -> [r̄, G, Σγ]
        self._past: list[list[tuple[int, float]]] = []  # newest first: each step's [(seed, g/n)]
        self._tau: float | None = None
        self._tau_min = 0.0

    def geometry_of(self, param: torch.Tensor) -> str:
        return self._geometry[id(param)]

    # ----------------------------------------------------------------- initial scales
    def _start(self) -> None:
        """Initial radii from θ₀ (and θ₀ itself for distance="exact"); reads weights only."""
        sq, count, tau_min = 0.0, 0, 0.0
        for group in self.param_groups:
            for e in self.trainable(group):
                p = e.param.detach()
                if self.distance == "exact":
                    self.state[e.param]["theta0"] = p.clone()
                r0 = self.r_eps * (1.0 + norm(self._geometry[id(e.param)], p))
                self._blocks[e.key] = [r0, 0.0, 0.0]
                sq += p.float().square().sum().item()
                count += p.numel()
                if p.dtype != torch.float32:
                    tau_min = max(tau_min, 2 * torch.finfo(p.dtype).eps)
        rms = math.sqrt(sq / count)
        self._tau = self.r_eps * (1.0 + rms)
        self._tau_min = tau_min * rms

    # ----------------------------------------------------------------- momentum
    def _seed_momentum(self, now, beta: float, nesterov: bool) -> list[tuple[int, float]]:
        """d_t as a seeded sum over the last ``history`` estimates (truncated momentum)."""
        combo = [(s, (1 - beta) * beta ** k * w) for k, step in enumerate(self._past) for s, w in step]
        if nesterov:
            combo = [(s, beta * w) for s, w in combo] + [(s, (1 - beta) * w) for s, w in now]
        return combo

    def _search_direction(self, e, now, beta: float, nesterov: bool, seeded):
        """(ĝ_b, d_b): the block's raw estimate and the momentum direction to step along."""
        g = self.direction_tensor(e, now)
        if beta == 0.0:
            return g, g
        if seeded is not None:
            return g, self.direction_tensor(e, seeded)
        state = self.state[e.param]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(g)
        m = state["momentum_buffer"].mul_(beta).add_(g, alpha=1 - beta)
        return g, (m.mul(beta).add_(g, alpha=1 - beta) if nesterov else m.clone())

    # ----------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, closure=None):
        if closure is None:
            raise ValueError("AdaNAGED.step needs a closure that runs a forward pass and returns the loss")
        if self._tau is None:
            self._start()
        estimates, loss = self.spsa(closure, self._tau)  # all losses known and finite past here
        n = len(estimates)
        now = [(s, g / n) for s, g in estimates]
        if self.momentum_state == "seeds":
            self._past = ([now] + self._past)[: self.history]
        sq, count = 0.0, 0
        for group in self.param_groups:
            beta, nesterov, scale = group["beta"], group["nesterov"], group["step_scale"]
            seeded = self._seed_momentum(now, beta, nesterov) if self.momentum_state == "seeds" and beta else None
            for e in self.trainable(group):
                if not self.active(e):
                    continue
                count += e.param.numel()
                geometry = self._geometry[id(e.param)]
                g, d = self._search_direction(e, now, beta, nesterov, seeded)
                u, dual = lmo_step(d, geometry)
                raw = dual if d is g else lmo_step(g, geometry)[1]  # ‖ĝ‖_*: G sums the raw estimates
                block = self._blocks[e.key]
                block[1] += raw * raw
                if dual == 0.0 or block[1] == 0.0:
                    continue
                gamma = block[0] * dual / math.sqrt(block[1])
                sq += gamma * gamma * u.square().sum().item()
                if scale:
                    self.add_(e, u.mul_(gamma * scale))
                self._grow_radius(e, block, gamma * scale, geometry)
        if sq > 0:
            self._tau = max(self._tau_min, math.sqrt(sq / count))
        self.finish_step(sum(g for _, g in estimates) / n)
        return torch.tensor(loss)

    def _grow_radius(self, e, block: list[float], moved: float, geometry: str) -> None:
        """r̄ ← max(r̄, distance from θ₀): exact in the block norm, or the triangle bound Σγ."""
        if self.distance == "bound":
            block[2] += moved
            block[0] = max(block[0], block[2])
        elif moved:
            theta0 = self.state[e.param]["theta0"]
            block[0] = max(block[0], norm(geometry, e.param.float() - theta0.float()))

    # ----------------------------------------------------------------- state
    def extra_state(self) -> dict:
        return {"blocks": {k: list(v) for k, v in self._blocks.items()}, "past": [list(s) for s in self._past],
                "tau": self._tau, "tau_min": self._tau_min}

    def load_extra_state(self, extra: dict) -> None:
        self._blocks = {int(k): list(v) for k, v in extra.get("blocks", {}).items()}
        self._past = [[(int(s), float(w)) for s, w in step] for step in extra.get("past", [])]
        self._tau = extra.get("tau")
        self._tau_min = float(extra.get("tau_min", 0.0))

    def load_state_dict(self, state_dict):
        # torch casts floating state to the parameter's dtype; the fp32 momentum must stay fp32
        buffers = {i: st["momentum_buffer"] for i, st in state_dict["state"].items() if "momentum_buffer" in st}
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for i, m in buffers.items():
            p = params[int(i)]
            self.state[p]["momentum_buffer"] = m.to(p.device, torch.float32).clone()
