"""AdaNAGED twin, in the form zotune's docstring reconstructs (Bystrov et al., arXiv 2606.14970;
only the abstract was available): two-point estimate, (Nesterov) momentum, a per-block LMO step
whose length is DoG's parameter-free rule, and a smoothing radius that follows the step size.

Start: r̄_b = r_eps·(1 + ‖θ₀_b‖_b),  τ₀ = r_eps·(1 + RMS(θ₀)),  τ_min = 2·eps(forward_dtype)·RMS(θ₀).
Per step, with ĝ the n-SPSA estimate at radius τ:
    m ← βm + (1 − β)ĝ;  d = βm + (1 − β)ĝ (nesterov) or m;  β = 0: d = ĝ
      ("seeds" momentum: m = Σ_{k<K} (1 − β)β^k ĝ_{t−k} over the last K = history estimates)
    per block b: u = lmo_b(d),  δ = −⟨d, u⟩;  G_b += (−⟨ĝ, lmo_b(ĝ)⟩)²
                 γ = r̄_b·δ/√G_b;  θ_b ← θ_b + step_scale·γ·u
                 r̄_b ← max(r̄_b, ‖θ_b − θ₀_b‖_b)  (exact)  or  max(r̄_b, Σ step_scale·γ)  (bound)
    τ ← max(τ_min, √(Σ_b γ²‖u‖² / #elements))
Geometries ("auto"): spectral for matrices with both sides > 1 whose name has no embedding/head
hint, sign (ℓ∞) otherwise. lmo_sign(d) = −sign(d) with 0 → −1; lmo_spectral(d) = −UVᵀ by
Newton–Schulz (5 steps of Muon's quintic, then 2 of the cubic, on d/‖d‖_F); lmo_euclidean(d) =
−d/‖d‖₂; colnorm: each column → −d_j/‖d_j‖₂. Primal norms: max |x| (sign), the exact operator
norm (spectral: the engine estimates it by 12 power iterations), max column norm, ‖x‖₂.

Tolerance rtol=1e-4, atol=3e-7 (on each step): γ is a ratio of norms and Newton–Schulz is a chain of matrix
products, so one-ulp differences reach ~1e-6 relative per step. State compared:
``momentum_buffer`` (buffer momentum), ``theta0`` (exact distance), and τ from state_dict().
"""

from __future__ import annotations

import math

import torch

from reference.noise import SUBSPACE, draw, mix
from reference.twin import Twin

METHOD = "adanaged"
TOLERANCE = dict(rtol=1e-4, atol=3e-7)
EMBEDDING_HINTS = ("embed", "wte", "wpe", "lm_head", "shared", "tok_")
QUINTIC = (3.4445, -4.7750, 2.0315)


def as_matrix(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1) if x.dim() >= 2 else x.reshape(1, -1)


def newton_schulz(d: torch.Tensor) -> torch.Tensor:
    x = as_matrix(d)
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    if torch.linalg.vector_norm(x) == 0:
        return torch.zeros_like(d)
    x = x / torch.linalg.vector_norm(x)
    a, b, c = QUINTIC
    for _ in range(5):
        s = x @ x.T
        x = a * x + b * s @ x + c * s @ s @ x
    for _ in range(2):
        x = 1.5 * x - 0.5 * x @ x.T @ x
    return (x.T if tall else x).reshape(d.shape)


def lmo(geometry: str, d: torch.Tensor) -> torch.Tensor:
    if geometry == "sign":
        return torch.where(d >= 0, -1.0, 1.0)
    if geometry == "spectral":
        return -newton_schulz(d)
    if geometry == "euclidean":
        n = torch.linalg.vector_norm(d)
        return -d / n if n > 0 else torch.zeros_like(d)
    cols = torch.linalg.vector_norm(as_matrix(d), dim=0, keepdim=True)
    unit = torch.where(cols > 0, -as_matrix(d) / cols, -1.0 / as_matrix(d).shape[0] ** 0.5)
    return unit.reshape(d.shape)


def power_iteration_norm(x: torch.Tensor, iters: int = 12) -> float:
    """‖x‖_op as the engine estimates it (zotune.geometry's docstring): ``iters`` power
    iterations of xᵀx from the fixed start v = (1, −0.5, 1, −0.5, …), a lower bound."""
    m = as_matrix(x)
    v = torch.tensor([1.0 if i % 2 == 0 else -0.5 for i in range(m.shape[1])])
    s = 0.0
    for _ in range(iters):
        w = m.T @ (m @ v)
        if torch.linalg.vector_norm(w) == 0:
            return 0.0
        v = w / torch.linalg.vector_norm(w)
        s = float(torch.linalg.vector_norm(m @ v))
    return s


def primal_norm(geometry: str, x: torch.Tensor, operator_norm=None) -> float:
    x = x.detach()
    if geometry == "spectral" and operator_norm is not None:
        return operator_norm(x)
    if geometry == "sign":
        return float(x.abs().max())
    if geometry == "spectral":
        return float(torch.linalg.matrix_norm(as_matrix(x), ord=2))
    if geometry == "colnorm":
        return float(torch.linalg.vector_norm(as_matrix(x), dim=0).max())
    return float(torch.linalg.vector_norm(x))


def auto_geometry(name: str, shape) -> str:
    matrix = len(shape) >= 2 and min(shape[0], math.prod(shape[1:])) > 1
    return "spectral" if matrix and not any(h in name.lower() for h in EMBEDDING_HINTS) else "sign"


DEFAULT_SAMPLER = {"name": "subspace", "rank": 32, "refresh_every": 100}


def polar(d: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(polar factor U_d·V_dᵀ of the matrix d, its nuclear norm), by a float64 SVD keeping only the
    singular values above 1e-4 of the largest (d has rank r here; fp32 rounding leaves ~1e-7 elsewhere)."""
    p, s, qh = torch.linalg.svd(as_matrix(d).double(), full_matrices=False)
    keep = s > 1e-4 * s[0]
    return (p[:, keep] @ qh[keep]).float().reshape(d.shape), float(s.sum())


class Reference(Twin):
    """Subspace configuration (the default sampler), written densely: a matrix W (m×n, r < min(m, n))
    moves along Z = √(mn)/r·U·Z₀·Vᵀ (SubZero's draws, U, V new every F steps); ĝ and the momentum m
    are m×n matrices; u = −polar(d) and δ = ‖d‖_S1 by a dense SVD; G += ‖ĝ‖_S1²; at a refresh
    m ← U₁U₁ᵀ·m·V₁V₁ᵀ (the part in the new subspace) and the distance of the finished period,
    ‖θ − θ_start‖_op, is added to the past; r̄ ← max(r̄, past + ‖θ − θ_start‖_op). The engine keeps
    m and θ − θ_start as r×r cores, compared here as Uᵀ·m·V and Uᵀ·(θ − θ_start)·V."""

    operator_norm = None  # the exact operator norm (textbook)

    def __init__(self, named_params, beta: float = 0.9, nesterov: bool = True, geometry: str = "auto",
                 momentum_state: str = "buffer", history: int = 16, distance: str = "exact",
                 r_eps: float = 1e-3, step_scale: float = 1.0, sampler=DEFAULT_SAMPLER,
                 forward_dtype: str = "bfloat16", **common):
        super().__init__(named_params, **common)
        self.beta, self.nesterov, self.momentum_state, self.history = beta, nesterov, momentum_state, history
        self.distance, self.r_eps, self.step_scale = distance, r_eps, step_scale
        subspace = isinstance(sampler, dict) and sampler.get("name") == "subspace"
        self.rank = sampler.get("rank", 24) if subspace else 0
        self.refresh_every = sampler.get("refresh_every", 1000) if subspace else 1
        self.sub = {n for n, p in self.params.items()
                    if subspace and p.dim() >= 2 and self.rank < min(p.shape[0], p.numel() // p.shape[0])}
        self.geometry = {n: "spectral" if n in self.sub else auto_geometry(n, p.shape) if geometry == "auto"
                         else geometry for n, p in self.params.items()}
        # θ − θ_start of each subspace matrix, as the sum of this period's steps (equal in exact
        # arithmetic; read off the fp32 weights it would carry their rounding, ~1e-7 here)
        self.shift = {n: torch.zeros_like(p) for n, p in self.params.items() if n in self.sub}
        self.past_distance = {n: 0.0 for n in self.sub}
        self.dense_momentum: dict[str, torch.Tensor] = {}  # of the subspace matrices, m×n
        self.period = 0
        self.radius = {n: r_eps * (1 + self.norm(n, p)) for n, p in self.params.items()}
        self.G = {n: 0.0 for n in self.params}
        self.travelled = {n: 0.0 for n in self.params}
        if distance == "exact":
            for n, p in self.params.items():
                if n not in self.sub:
                    self.state[n]["theta0"] = p.detach().clone()
        flat = torch.cat([p.detach().reshape(-1) for p in self.params.values()])
        rms = float(flat.square().mean().sqrt())
        self.tau = r_eps * (1 + rms)
        # τ's floor: 2 ulps of an RMS-sized weight in the forward's precision (bf16 autocast by default)
        self.tau_min = 2 * torch.finfo(getattr(torch, forward_dtype)).eps * rms
        self.past: list[dict[str, torch.Tensor]] = []

    def basis(self, name: str, period: int) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.params[name]
        m, n = p.shape[0], p.numel() // p.shape[0]
        base = mix(self.seed, SUBSPACE, period)
        return (torch.linalg.qr(draw(mix(base, 1), name, (m, self.rank))).Q,
                torch.linalg.qr(draw(mix(base, 2), name, (n, self.rank))).Q)

    def direction(self, seed: int, name: str) -> torch.Tensor:
        if name not in self.sub:
            return self.z(seed, name)
        p, r = self.params[name], self.rank
        u, v = self.basis(name, self.t // self.refresh_every)
        z0 = draw(seed, name, (r, r), self.noise)
        return (math.sqrt(p.shape[0] * (p.numel() // p.shape[0])) / r * u @ z0 @ v.T).view_as(p)

    def refresh(self) -> None:
        """A new period: momentum projected onto the new subspaces, the finished period's distance kept."""
        period = self.t // self.refresh_every
        if period == self.period:
            return
        for name in self.sub:
            u, v = self.basis(name, period)
            if name in self.dense_momentum:
                m = as_matrix(self.dense_momentum[name])
                self.dense_momentum[name] = (u @ u.T @ m @ v @ v.T).view_as(self.params[name])
            self.past_distance[name] += float(torch.linalg.matrix_norm(as_matrix(self.shift[name]).double(), 2))
            self.shift[name].zero_()
        self.period = period

    def norm(self, name: str, x: torch.Tensor) -> float:
        """The primal norm of block ``name`` (its geometry's ball)."""
        return primal_norm(self.geometry[name], x, self.operator_norm)

    def extra_state(self) -> dict:
        return {"tau": self.tau}

    def load_extra_state(self, extra: dict) -> None:
        """Adopt the engine's τ (the test does this after comparing it): g = ΔL/2τ with τ ≈ 2e-4
        turns a one-ulp difference in τ into ~1e-4 in g through fp32's rounding of L."""
        self.tau = extra["tau"]

    def search_direction(self, name: str, g: torch.Tensor) -> torch.Tensor:
        b = self.beta
        if b == 0:
            return g
        if self.momentum_state == "seeds" and name not in self.sub:
            m = sum((1 - b) * b ** k * past[name] for k, past in enumerate(self.past))
        else:  # a subspace matrix always keeps its momentum (the engine: as an r×r core)
            store = self.dense_momentum if name in self.sub else self.state[name]
            m = store.setdefault("momentum_buffer" if name not in self.sub else name, torch.zeros_like(g))
            m.copy_(b * m + (1 - b) * g)
        return b * m + (1 - b) * g if self.nesterov else m.clone()

    @torch.no_grad()
    def step(self, closure) -> float:
        directions = [{n: self.direction(s, n) for n in self.params}
                      for s in self.direction_seeds(self.directions_now())]
        grad, gs, loss = self.spsa(closure, self.tau, directions)
        self.refresh()
        self.past = ([grad] + self.past)[: self.history]
        sq, count = 0.0, 0
        for name, p in self.params.items():
            geometry, g = self.geometry[name], grad[name]
            count += p.numel()
            d = self.search_direction(name, g)
            if name in self.sub:  # the exact polar factor and nuclear norms, by SVD
                (u, dual), raw = polar(d), polar(g)[1]
                u = -u
            else:
                u = lmo(geometry, d)
                dual = max(-float((d * u).sum()), 0.0)
                raw = max(-float((g * lmo(geometry, g)).sum()), 0.0)
            self.G[name] += raw ** 2
            if dual == 0 or self.G[name] == 0:
                continue
            gamma = self.radius[name] * dual / math.sqrt(self.G[name])
            sq += gamma ** 2 * float(u.square().sum())
            p.add_(self.step_scale * gamma * u)
            if name in self.sub and self.distance == "exact":
                self.shift[name] += self.step_scale * gamma * u
                self.radius[name] = max(self.radius[name], self.past_distance[name]
                                        + float(torch.linalg.matrix_norm(as_matrix(self.shift[name]).double(), 2)))
            elif self.distance == "bound":
                self.travelled[name] += self.step_scale * gamma
                self.radius[name] = max(self.radius[name], self.travelled[name])
            elif self.step_scale:
                self.radius[name] = max(self.radius[name], self.norm(name, p - self.state[name]["theta0"]))
        if sq > 0:
            self.tau = max(self.tau_min, math.sqrt(sq / count))
        self.finish(sum(gs) / len(gs))
        self.cores()
        return loss

    def cores(self) -> None:
        """The engine's r×r state of each subspace matrix, from the dense twin: Uᵀ·m·V and
        Uᵀ·(θ − θ_start)·V. The test compares them after every step."""
        for name in self.sub:
            u, v = self.basis(name, self.period)
            if name in self.dense_momentum:
                self.state[name]["momentum_core"] = u.T @ as_matrix(self.dense_momentum[name]) @ v
            if self.distance == "exact" and self.step_scale:
                self.state[name]["displacement_core"] = u.T @ as_matrix(self.shift[name]) @ v


class PowerIterationReference(Reference):
    """The same rule with the engine's documented estimate of the operator norm, to check the rest
    of the rule while the exact-norm twin disagrees (tests/reference/README.md, findings)."""

    operator_norm = staticmethod(power_iteration_norm)
