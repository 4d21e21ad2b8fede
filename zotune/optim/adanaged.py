"""AdaNAGED-style ZO optimizer: two-point estimate, momentum, per-tensor LMO step, parameter-free
step size and smoothing radius. Runs with no lr and no eps.

Source: Bystrov, Medyakov, Bylinkin, Beznosikov, "Zero-order Parameter-free Optimization for
LMO-based Methods: Novel Approach for Efficient Fine-tuning" (arXiv 2606.14970). Only the abstract
was available: ZO estimates + parameter-free (PF) step size and smoothing + per-block LMO geometry.
The algorithm box, the norms, the PF rules and the meaning of "NAG" were NOT available, so the rule
below is a reconstruction (docs/methods.md, section AdaNAGED; the research digest, algorithms.md §1.4) from
JAGUAR/ZO-Muon (arXiv 2506.04430), uSCG/Scion LMOs (arXiv 2502.07529) and DoG (arXiv 2302.12022);
the default subspace directions are SubZero's (Yu et al., arXiv 2410.08989), as in ZO-Muon
(OPTML-Group, arXiv 2602.17155: a subspace + Newton–Schulz method).

Per step t, with τ_t the smoothing radius and z(s) the sampler's draws (n-SPSA: n of them). A
"block" in the paper's sense is one parameter tensor here (index b below):

    ĝ_t   = (1/n) Σ_j (L(θ+τ_t z_j) − L(θ−τ_t z_j)) / (2τ_t) · z_j          # 2n forward passes
    m_t   = β m_{t−1} + (1−β) ĝ_t ;  d_t = β m_t + (1−β) ĝ_t  (Nesterov look-ahead; else d_t = m_t)
    per tensor b, in its geometry (zotune.geometry.lmo_for: spectral for hidden matrices, sign for
    vectors and embeddings):
        u_b = lmo_b(d_b),  δ_b = ‖d_b‖_{b,*} = −⟨d_b, u_b⟩
        G_b ← G_b + ‖ĝ_b‖_{b,*}² ;  γ_b = r̄_b · δ_b / √G_b               # DoG, per tensor (L-DoG)
        θ_b ← θ_b + step_scale · γ_b · u_b
        r̄_b ← max(r̄_b, ‖θ_b − θ₀_b‖_b)   (distance="exact")  or  max(r̄_b, Σ γ_b)  ("bound")
    τ_{t+1} = max(τ_min, RMS over all elements of the step just computed)

In a subspace (the default sampler, SubZero's U·Z₀·Vᵀ draws with rank r = 32 and new U, V every
100 steps), a matrix's ĝ, m and d are U·(r×r core)·Vᵀ, so the block rule runs on the cores: the
spectral LMO is −U·P·Qᵀ·Vᵀ for the core's SVD P·S·Qᵀ and δ = Σ S (exact, no Newton–Schulz), the
momentum is an r×r core (projected onto the new subspace at a refresh), and the distance is exact
within a period (an r×r displacement core Δ) and summed over periods: r̄ ← max(r̄, R + ‖Δ‖_op).

Why each choice: the LMO makes the step's shape scale-free, and γ = r̄·δ/√G is DoG's step
η‖g‖ written for a normed step (for geometry="euclidean" it is exactly DoG), so the iterates do not
change when the loss is multiplied by any constant. G sums the norms of the raw estimates, not of
the momentum: with ZO noise a momentum of random directions drifts coherently, and normalising by
its own (small) norm made r̄ and the steps run away (measured: divergence on least squares);
normalising by the raw estimates shrinks the step by the momentum's signal-to-noise ratio. τ is the
per-element size of the last step: the finite difference probes the scale at which the method
actually moves, shrinks as steps shrink, and is as loss-scale free as the step. τ_min =
2·eps(p)·RMS(θ₀), p the lower of the weights' dtype and ``forward_dtype`` (bf16 by default): a
smaller perturbation is rounded away inside a bf16-autocast forward (measured on SmolLM2: the
finite-difference slope 39 at τ = 1e-3, 635 at 1e-5, against 38 in fp32). The subspace makes the
spectral step cost an r×r SVD per matrix instead of two Newton–Schulz runs on m×n (27–35 s per
SmolLM2 step on 2 CPU cores), and the state r² numbers per matrix instead of 2·m·n. Start:
r̄_b = r_eps·(1 + ‖θ₀_b‖_b), τ_0 = r_eps·(1 + RMS(θ₀)), r_eps = 1e-3 (MeZO's ε at unit scale;
DoG's 1e-6 grows too slowly under ZO noise: an assumption, measured on the tests).

Forward passes per step: 2·num_directions. State in bytes (docs/methods.md, tested): per subspace
matrix 4r² for the momentum core (β > 0) and 4r² for Δ ("exact"); per dense tensor 4·numel for the
momentum buffer (momentum_state="buffer", β > 0) and θ₀ in the weights' dtype ("exact").
SmolLM2-135M, defaults: 2.0 MB (0.004 × the fp32 weights); dense configurations: 2 × (1 GB).
Dense variants: momentum_state="seeds" keeps no buffer (the last ``history`` (seed, g) pairs; m is
rebuilt per tensor at ``history``× the noise cost and truncated to the last K terms);
distance="bound" keeps no θ₀ (r̄ from the scalar Σγ, valid because every LMO step has norm γ in
its tensor's geometry, but it overestimates once the iterate turns around); seeds + bound = 0×.
Defaults: beta 0.9, nesterov on (assumptions: the usual Muon/Lion momentum), geometry "auto",
sampler subspace (rank 32, refresh every 100: chosen from the SST-2 measurements in
docs/methods.md). ``step_scale`` multiplies every applied step (0 = a no-op step that still updates
the statistics).
"""

from __future__ import annotations

import fnmatch
import math

import torch

from zotune.engine import Step
from zotune.geometry import (GEOMETRIES, lmo_for, lmo_spectral_core, lmo_step, norm, operator_norm_core,
                             orthogonalise_many)
from zotune.optim.base import ZOOptimizer, check_closure, check_finite_options
from zotune.optim.registry import register

MOMENTUM_STATES = ("buffer", "seeds")
DISTANCES = ("exact", "bound")
NS_DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16}
FORWARD_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The default directions: SubZero's subspaces, where the spectral LMO is an r×r SVD (see the docstring).
DEFAULT_SAMPLER = {"name": "subspace", "rank": 32, "refresh_every": 100}
PENDING_BYTES = 256 << 20  # dense spectral estimates held at once for one batched Newton–Schulz


def dog_step_size(stats: list[float], dual: float, raw: float) -> float | None:
    """DoG's step for one tensor: G ← G + raw², γ = r̄·dual/√G (``stats`` = [r̄, G, ...], G
    updated in place); None when the step is zero (dual = 0 or G = 0). ``dual`` = ‖d‖_* of the
    direction stepped along, ``raw`` = ‖ĝ‖_* of this step's raw estimate."""
    stats[1] += raw * raw
    if dual == 0.0 or stats[1] == 0.0:
        return None
    return stats[0] * dual / math.sqrt(stats[1])


def dog_lmo_step(g_hat: torch.Tensor, d: torch.Tensor, geometry: str, stats: list[float]):
    """The rule for one materialised tensor: u = lmo(d), δ = ‖d‖_*, G ← G + ‖ĝ‖_*², γ = r̄·δ/√G.
    Returns (u, γ), or None when the step is zero. G sums the raw estimates' norms, not the momentum's."""
    u, dual = lmo_step(d, geometry)
    raw = dual if d is g_hat else lmo_step(g_hat, geometry)[1]
    gamma = dog_step_size(stats, dual, raw)
    return None if gamma is None else (u, gamma)


def momentum_direction(m: torch.Tensor, g: torch.Tensor, beta: float, nesterov: bool) -> torch.Tensor:
    """m ← βm + (1−β)g (in place), and the direction to step along: βm + (1−β)g (Nesterov) or m."""
    m.mul_(beta).add_(g, alpha=1 - beta)
    return m.mul(beta).add_(g, alpha=1 - beta) if nesterov else m.clone()


def seeded_momentum(past: list, now: list[tuple[int, float]], beta: float, nesterov: bool):
    """d_t as a direction over the last estimates ``past`` (newest first, this step's included):
    m_t = Σ_k (1−β)β^k ĝ_{t−k}, with the Nesterov look-ahead β·m_t + (1−β)·ĝ_t (truncated
    momentum, regenerated from seeds)."""
    combo = [(s, (1 - beta) * beta ** k * w) for k, step in enumerate(past) for s, w in step]
    if nesterov:
        combo = [(s, beta * w) for s, w in combo] + [(s, (1 - beta) * w) for s, w in now]
    return combo


@register("adanaged")
class AdaNAGED(ZOOptimizer):
    """Parameter-free ZO optimizer with per-tensor LMO steps. ``loss = opt.step(closure)``.

    Args:
        beta: momentum (0 = none). nesterov: step along β m_t + (1−β) ĝ_t instead of m_t.
        geometry: "auto" (per tensor by ``lmo_for``), one of sign/spectral/colnorm/euclidean for all
            tensors, or a {fnmatch pattern on the parameter name: geometry} override. Tensors with
            subspace draws always step spectrally in their subspace.
        momentum_state: "buffer" (1× fp32) or "seeds" (momentum over the last ``history`` steps,
            regenerated from their seeds: O(history) scalars). Subspace tensors keep an r×r core.
        distance: "exact" (‖θ−θ₀‖ per tensor, keeps θ₀; in a subspace: exact within the period,
            summed over periods) or "bound" (the scalar Σγ; no θ₀).
        r_eps: relative initial radius (initial step and smoothing scale).
        step_scale: multiplier on every applied step (0 makes steps no-ops).
        ns_dtype: "auto", "float32" or "bfloat16": the dtype of Newton–Schulz's quintic iterations
            (dense spectral tensors only; "auto" = bf16 where matmuls are native and matrices large).
        forward_dtype: the lowest precision the closure computes in ("bfloat16": zotune's
            ``forward_closure`` and most GPU training use bf16 autocast; "float32" for an fp32
            forward): τ never falls below 2·eps(forward_dtype)·RMS(θ₀), where a perturbation would
            be rounded away inside the forward and the finite difference would measure rounding.
        sampler (engine option): default ``DEFAULT_SAMPLER``, SubZero's subspaces; ``sampler="dense"``
            gives the dense configurations (geometry "auto": Newton–Schulz; "sign": sign steps).
    The returned loss is the mean of the perturbed losses.
    """

    def __init__(self, params, beta: float = 0.9, nesterov: bool = True, geometry="auto",
                 momentum_state: str = "buffer", history: int = 16, distance: str = "exact",
                 r_eps: float = 1e-3, step_scale: float = 1.0, ns_dtype: str = "auto",
                 forward_dtype: str = "bfloat16", **engine):
        check_finite_options("AdaNAGED", {"r_eps": r_eps, "step_scale": step_scale})
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
        if ns_dtype not in NS_DTYPES:
            raise ValueError(f"ns_dtype must be one of {sorted(NS_DTYPES)}, got {ns_dtype!r}")
        if forward_dtype not in FORWARD_DTYPES:
            raise ValueError(f"forward_dtype must be one of {sorted(FORWARD_DTYPES)} (the lowest precision the "
                             f"closure computes in), got {forward_dtype!r}")
        engine.setdefault("sampler", dict(DEFAULT_SAMPLER))
        super().__init__(params, dict(beta=beta, nesterov=nesterov, step_scale=step_scale), **engine)
        self.momentum_state = momentum_state
        self.history = int(history)
        self.distance = distance
        self.r_eps = float(r_eps)
        self.ns_dtype = NS_DTYPES[ns_dtype]
        self.forward_dtype = FORWARD_DTYPES[forward_dtype]
        override = None if geometry == "auto" else geometry
        in_subspace = getattr(self.sampler, "in_subspace", lambda e: False)
        self.in_subspace = {id(e.param) for e in self.engine.params if in_subspace(e)}
        self.geometries = {id(e.param): "spectral" if id(e.param) in self.in_subspace
                           else lmo_for(e.name or "", e.param.shape, override) for e in self.engine.params}
        refuse_other_geometry(self.engine.params, self.in_subspace, override)
        self.stats: dict[int, list[float]] = {}  # noise key -> [r̄, G, Σγ or the distance of past periods]
        # newest first: each step's parts as (noise keys of the subset or None, [(seed, g/n)])
        self.past: list[list[tuple[list[int] | None, list[tuple[int, float]]]]] = []
        self.tau: float | None = None  # the smoothing radius of the next step
        self.tau_min = 0.0
        self.period: int | None = None  # the subspace period the cores are expressed in

    def geometry_of(self, param: torch.Tensor) -> str:
        return self.geometries[id(param)]

    def start(self) -> None:
        """Initial radii from θ₀ (and θ₀ itself for distance="exact" on dense tensors); reads weights only."""
        sq, count, tau_min = 0.0, 0, 2 * torch.finfo(self.forward_dtype).eps
        for group in self.param_groups:
            for e in self.trainable(group):
                p = e.param.detach()
                if self.distance == "exact" and id(e.param) not in self.in_subspace:
                    self.buffer(e, "theta0", first=lambda e: e.param.detach().clone())  # θ₀, the weights' dtype
                r0 = self.r_eps * (1.0 + norm(self.geometries[id(e.param)], p))
                self.stats[e.key] = [r0, 0.0, 0.0]
                sq += p.float().square().sum().item()
                count += p.numel()
                if p.dtype != torch.float32:
                    tau_min = max(tau_min, 2 * torch.finfo(p.dtype).eps)
        rms = math.sqrt(sq / count)
        self.tau = self.r_eps * (1.0 + rms)
        self.tau_min = tau_min * rms

    def search_direction(self, e, now, beta: float, nesterov: bool):
        """(ĝ, d) of one dense tensor: its raw estimate and the momentum direction to step along."""
        g = self.engine.tensor(e, now)
        if beta == 0.0:
            return g, g
        if self.momentum_state == "seeds":
            past = [[(s, w) for keys, terms in step if keys is None or e.key in keys for s, w in terms]
                    for step in self.past]  # the newest entry is this step's
            return g, self.engine.tensor(e, seeded_momentum(past, now, beta, nesterov))
        return g, momentum_direction(self.buffer(e, "momentum_buffer"), g, beta, nesterov)

    @torch.no_grad()
    def step(self, closure=None):
        check_closure(self, closure)
        if self.tau is None:
            self.start()
        est = self.estimate(closure, self.tau)  # all losses known and finite past here
        t = self.current_step()
        if self.in_subspace:
            self.follow_subspace(t)
        if self.momentum_state == "seeds":
            parts = [(None if p.subset is None else sorted(self.engine.by_id[i].key for i in p.subset), p.mean())
                     for p in est.parts]
            self.past = ([parts] + self.past)[: self.history]
        squares: list[float] = []  # per tensor, in order: the squared Frobenius norm of its step
        pending: list[tuple] = []  # dense spectral tensors awaiting one batched Newton–Schulz
        count = held = 0  # elements stepped; bytes of the pending estimates
        for group, e, part in self.estimated(est):
            count += e.param.numel()
            squares.append(0.0)
            if id(e.param) in self.in_subspace:
                squares[-1] = self.subspace_step(group, e, part.mean(), t)
                continue
            g, d = self.search_direction(e, part.mean(), group["beta"], group["nesterov"])
            if self.geometries[id(e.param)] != "spectral":
                squares[-1] = self.dense_step(group, e, dog_lmo_step(g, d, self.geometries[id(e.param)],
                                                                      self.stats[e.key]))
                continue
            pending.append((len(squares) - 1, group, e, g, d))
            held += 8 * g.numel()
            if held >= PENDING_BYTES:
                self.spectral_steps(pending, squares)
                held = 0
        self.spectral_steps(pending, squares)
        sq = sum(squares)
        if sq > 0:
            self.tau = max(self.tau_min, math.sqrt(sq / count))
        self.finish_step(est.projected)
        return torch.tensor(est.loss)

    def dense_step(self, group, e, found) -> float:
        """Apply one dense tensor's step (u, γ) from ``dog_lmo_step``; returns ‖γu‖_F²."""
        if found is None:
            return 0.0
        u, gamma = found
        sq = gamma * gamma * u.square().sum().item()
        scale = group["step_scale"]
        if scale:
            self.engine.write(e, u.mul_(gamma * scale))
        self.grow_radius(e, self.stats[e.key], gamma * scale, self.geometries[id(e.param)])
        return sq

    def spectral_steps(self, pending: list, squares: list[float]) -> None:
        """The dense spectral tensors in ``pending``: Newton–Schulz of every d and ĝ in one batched
        call (same shapes stacked), then each tensor's DoG step. Empties ``pending``."""
        if not pending:
            return
        mats = [x[4] for x in pending] + [x[3] for x in pending if x[3] is not x[4]]
        polar = orthogonalise_many(mats, dtype=self.ns_dtype)
        raw_polar = iter(polar[len(pending):])
        for j, (pos, group, e, g, d) in enumerate(pending):
            u = polar[j].neg_()
            dual = max(-torch.sum(d * u).item(), 0.0)
            raw = dual if g is d else max(torch.sum(g * next(raw_polar)).item(), 0.0)
            gamma = dog_step_size(self.stats[e.key], dual, raw)
            squares[pos] = self.dense_step(group, e, None if gamma is None else (u, gamma))
        pending.clear()

    def subspace_step(self, group, e, now, t: Step) -> float:
        """One subspace tensor: core C of ĝ (r×r), momentum core, u = U·(−PQᵀ)·Vᵀ by an r×r SVD of
        the core, DoG's γ from nuclear norms; returns ‖γu‖_F² = γ²·r."""
        c = self.sampler.core(e, now, t)
        d = c if group["beta"] == 0.0 else momentum_direction(
            self.buffer(e, "momentum_core", first=lambda e: torch.zeros_like(c)), c, group["beta"], group["nesterov"])
        u_core, dual = lmo_spectral_core(d)
        raw = dual if d is c else lmo_spectral_core(c)[1]
        stats = self.stats[e.key]
        gamma = dog_step_size(stats, dual, raw)
        if gamma is None:
            return 0.0
        moved = gamma * group["step_scale"]
        if moved:
            basis_u, basis_v = self.sampler.basis(e, t)
            self.engine.write(e, ((basis_u @ u_core).mul_(moved) @ basis_v.T).view_as(e.param))
        if self.distance == "bound":
            stats[2] += moved
            stats[0] = max(stats[0], stats[2])
        elif moved:
            shift = self.buffer(e, "displacement_core", first=lambda e: torch.zeros_like(c)).add_(u_core, alpha=moved)
            stats[0] = max(stats[0], stats[2] + operator_norm_core(shift))
        return gamma * gamma * u_core.shape[0]

    def follow_subspace(self, t: Step) -> None:
        """At a refresh of the subspaces: express each momentum core in the new bases,
        M ← (U₁ᵀU₀)·M·(V₀ᵀV₁) (its part outside the new subspace is dropped), and close the
        period's displacement core D into the distance of past periods (r̄'s triangle bound)."""
        period = self.sampler.period(t)
        if self.period is not None and period != self.period:
            before = Step(t.run_seed, self.period * self.sampler.refresh_every)
            for e in self.engine.params:
                if id(e.param) not in self.in_subspace:
                    continue
                state = self.state[e.param]  # (after the check: reading self.state adds an entry)
                if "momentum_core" in state:
                    (u0, v0), (u1, v1) = self.sampler.basis(e, before), self.sampler.basis(e, t)
                    state["momentum_core"].copy_((u1.T @ u0) @ state["momentum_core"] @ (v0.T @ v1))
                if "displacement_core" in state:
                    self.stats[e.key][2] += operator_norm_core(state["displacement_core"])
                    state["displacement_core"].zero_()
        self.period = period

    def grow_radius(self, e, stats: list[float], moved: float, geometry: str) -> None:
        """r̄ ← max(r̄, distance from θ₀): exact in the tensor's norm, or the triangle bound Σγ."""
        if self.distance == "bound":
            stats[2] += moved
            stats[0] = max(stats[0], stats[2])
        elif moved:
            theta0 = self.buffer(e, "theta0")
            stats[0] = max(stats[0], norm(geometry, e.param.float() - theta0.float()))

    def extra_state(self) -> dict:
        return {"stats": {k: list(v) for k, v in self.stats.items()},
                "past": [[(keys, list(terms)) for keys, terms in step] for step in self.past],
                "tau": self.tau, "tau_min": self.tau_min, "period": self.period}

    def load_extra_state(self, extra: dict) -> None:
        self.stats = {int(k): list(v) for k, v in extra.get("stats", {}).items()}
        self.past = [[(None if keys is None else [int(k) for k in keys], [(int(s), float(w)) for s, w in terms])
                      for keys, terms in step] for step in extra.get("past", [])]
        self.tau = extra.get("tau")
        self.tau_min = float(extra.get("tau_min", 0.0))
        self.period = extra.get("period")


def refuse_other_geometry(params, in_subspace: set[int], override) -> None:
    """A subspace tensor steps spectrally in its subspace (its draws, momentum and step live in
    U·(r×r)·Vᵀ); another geometry asked for it would be silently ignored, so refuse it."""
    if override is None:
        return
    for e in params:
        if id(e.param) not in in_subspace:
            continue
        asked = [override] if isinstance(override, str) else [
            g for pattern, g in override.items() if fnmatch.fnmatchcase(e.name or "", pattern)][:1]
        if asked and asked[0] != "spectral":
            raise ValueError(
                f"geometry {asked[0]!r} for {e.name or 'a parameter'}, which has subspace draws: there AdaNAGED steps "
                "spectrally in the subspace (an r×r SVD). Use sampler='dense' for other geometries, or leave "
                "geometry='auto'")
