"""The shared engine every zeroth-order optimizer in zotune is built on.

A ZO optimizer is a ``torch.optim.Optimizer`` whose ``step(closure)`` calls the closure (a forward
pass that returns the loss; no backward) at perturbed points and updates the parameters from the
scalar losses. This base class provides, for every method:

- counter-based directions ``z(step seed, parameter key)`` (``zotune.rng``): the global RNG is never
  touched, and the noise does not depend on chunking, devices or the order of parameters when the
  optimizer is given ``named_parameters()`` (keys come from names; otherwise from positions);
- functional perturbations (``zotune.perturb``): weights are never written during evaluation, so
  a no-op step is bit-exact and a closure that raises leaves the model exactly as it was;
- one fused in-place update pass per step (``zotune.kernels``), with stochastic rounding or an fp32
  master copy for half-precision parameters;
- a non-finite loss raises ``NonFiniteLossError`` before any weight is written;
- ``state_dict()`` carries the step counter and seed, so a resumed run draws the same directions.
"""

from __future__ import annotations

import functools
import math
import signal
import threading
from typing import Callable

import torch
from torch.optim import Optimizer

from zotune.kernels import update_
from zotune.kernels.apply import perturbed_copy
from zotune.perturb import FunctionalPerturbation, Perturbed
from zotune.rng import DIRECTION, NOISE_KINDS, NoiseSource, mix, name_key

# A direction is a weighted sum of seeded directions: ((seed, weight), ...). A bare int seed means
# ((seed, 1.0),). Pools, guided vectors and n-SPSA updates are all such sums.
Direction = int | tuple[tuple[int, float], ...] | list[tuple[int, float]]


class NonFiniteLossError(FloatingPointError):
    """A loss evaluated inside a ZO step was NaN or infinite; no weight was changed."""


class _SigintHold:
    """Holds Ctrl-C from a step's first weight write until the step returns, so an interrupt can
    stop a step during its forward passes but never leave its update half-applied."""

    def __init__(self):
        self.previous = None
        self.caught = False

    def hold(self) -> None:
        if self.previous is not None or threading.current_thread() is not threading.main_thread():
            return
        self.caught = False
        self.previous = signal.signal(signal.SIGINT, self._catch)

    def _catch(self, *args) -> None:
        self.caught = True

    def release(self) -> None:
        if self.previous is None:
            return
        signal.signal(signal.SIGINT, self.previous)
        self.previous = None
        if self.caught:
            raise KeyboardInterrupt


def _releasing_sigint(step):
    @functools.wraps(step)
    def wrapper(self, *args, **kwargs):
        try:
            return step(self, *args, **kwargs)
        finally:
            self._sigint.release()

    return wrapper


class ZOOptimizer(Optimizer):
    """Base of the zeroth-order optimizers. Subclasses implement ``step(closure)``.

    Args beyond the method's own hyperparameters:
        seed: base seed; the direction of step t is drawn from ``mix(seed, t)``.
        noise: "gaussian" (N(0, I)) or "rademacher" (±1 entries).
        chunk_size: elements processed per pass chunk; bounds temporaries, never changes results.
        stochastic_rounding: unbiased rounding of half-precision updates (default on).
        master_weights: keep an fp32 copy of half-precision parameters (4 bytes/element of state)
            and round it to nearest into the parameter after each update.
        num_directions: n of n-SPSA: average the two-point estimate over n directions (2n
            forward passes per step).
        query_schedule: AdaZeta's adaptive number of queries (Yang et al., "AdaZeta: Adaptive
            Zeroth-Order Tensor-Train Adaption for Memory-Efficient LLM Fine-Tuning", EMNLP 2024,
            arXiv 2406.18060): ``(alpha, beta, q_max)`` makes step t use
            n_t = min(ceil(alpha·(t+1)^beta), q_max) directions instead of ``num_directions``.
            Growing n_t shrinks the estimator's variance as training converges, which the paper
            shows prevents the late divergence of fixed-query ZO. The schedule's form is the
            paper's sublinear growth; its constants are the user's (no published defaults).

    Subclasses change the directions by overriding ``direction`` (a materialised direction for a
    parameter, e.g. low-rank) and ``active`` (which parameters a step perturbs and updates).
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "step" in cls.__dict__:  # every method's step releases the Ctrl-C hold on exit
            cls.step = _releasing_sigint(cls.__dict__["step"])

    @property
    def forward_passes(self) -> int:
        """Closure calls of the next step (two-point methods: 2 per direction); subclasses override."""
        return 2 * self.directions_now()

    def directions_now(self) -> int:
        """Directions the next step averages: ``num_directions``, or AdaZeta's schedule."""
        if self.query_schedule is None:
            return self.num_directions
        alpha, beta, q_max = self.query_schedule
        return max(1, min(math.ceil(alpha * (self.zo_step + 1) ** beta), int(q_max)))

    def __init__(
        self,
        params,
        defaults: dict,
        *,
        seed: int = 0,
        noise: str = "gaussian",
        chunk_size: int = 1 << 20,
        stochastic_rounding: bool = True,
        master_weights: bool = False,
        num_directions: int = 1,
        query_schedule: tuple[float, float, int] | None = None,
    ):
        if num_directions < 1:
            raise ValueError(f"num_directions must be >= 1, got {num_directions}")
        if query_schedule is not None:
            if len(query_schedule) != 3 or query_schedule[0] <= 0 or query_schedule[1] < 0 or query_schedule[2] < 1:
                raise ValueError("query_schedule must be (alpha > 0, beta >= 0, q_max >= 1), "
                                 f"got {query_schedule!r}")
            query_schedule = (float(query_schedule[0]), float(query_schedule[1]), int(query_schedule[2]))
        if noise not in NOISE_KINDS:
            raise ValueError(f"unknown noise {noise!r}; choose one of {NOISE_KINDS}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        super().__init__(params, defaults)
        self.seed = int(seed)
        self.noise = noise
        self.chunk_size = int(chunk_size)
        self.stochastic_rounding = stochastic_rounding
        self.master_weights = master_weights
        self.num_directions = int(num_directions)
        self.query_schedule = query_schedule
        self.zo_step = 0  # number of completed steps
        self.last_projected_grad = float("nan")
        self._source = NoiseSource()
        self._sigint = _SigintHold()
        self._entries = self._collect_entries()
        self._shared: set[int] = set()
        self._outside: set[int] = set()
        self._calibrated = False

    # ----------------------------------------------------------------- parameters and keys
    def _collect_entries(self) -> dict[int, Perturbed]:
        entries: dict[int, Perturbed] = {}
        index = 0
        for group in self.param_groups:
            names = group.get("param_names")
            for i, p in enumerate(group["params"]):
                index += 1
                if not p.requires_grad:
                    continue
                if not p.is_contiguous():
                    raise ValueError("zotune needs contiguous parameters; call .contiguous() on the model")
                if id(p) in entries:
                    continue
                key = name_key(names[i]) if names else mix(0xC0FFEE, index)
                entries[id(p)] = Perturbed(p, key)
        if not entries:
            raise ValueError("no parameter with requires_grad=True was given to the optimizer")
        return entries

    def trainable(self, group: dict):
        """The parameters of ``group`` this optimizer touches, with their noise keys."""
        for p in group["params"]:
            e = self._entries.get(id(p))
            if e is not None:
                yield e

    def step_seed(self, step: int | None = None) -> int:
        """Seed of the direction(s) of step ``step`` (default: the step about to run)."""
        return mix(self.seed, self.zo_step if step is None else step)

    # ----------------------------------------------------------------- directions
    def direction(self, e: Perturbed, seed: int) -> torch.Tensor | None:
        """Materialised direction of ``e`` for ``seed`` (fp32, e's shape), or None for the
        default: the dense counter-based stream, which the engine streams chunk by chunk and
        never materialises. Low-rank or masked samplers override this."""
        return None

    def active(self, e: Perturbed) -> bool:
        """Whether the current step perturbs and updates ``e`` (layer-subset methods override)."""
        return True

    def noise_tensor(self, e: Perturbed, seed: int, kind: str | None = None, stream: int = DIRECTION):
        """The dense stream of ``e`` at ``seed`` as an fp32 tensor of e's shape."""
        n = e.param.numel()
        z = self._source.noise(seed, e.key, 0, n, n, kind or self.noise, stream, device=e.param.device)
        return z.view_as(e.param)

    def direction_tensor(self, e: Perturbed, direction: Direction) -> torch.Tensor:
        """Σ weight·direction(seed) for ``e``, materialised (one tensor of e's size)."""
        n = e.param.numel()
        return self._chunks_of(e, direction)(0, n).view_as(e.param)

    def _chunks_of(self, e: Perturbed, direction: Direction):
        """(a, b) -> fp32 elements [a, b) of Σ weight·direction(seed) for ``e``.

        Dense terms are drawn chunk by chunk into one reused buffer: the returned chunk is only
        valid until the next call, and callers may modify it in place.
        """
        combo = as_combo(direction)
        n = e.param.numel()
        terms = [(seed, w, self.direction(e, seed)) for seed, w in combo]
        dev = e.param.device
        bufs: list[torch.Tensor] = []

        def term(seed, w, mat, a, b, i):
            if mat is not None:
                return mat.reshape(-1)[a:b] * w
            if len(bufs) <= i or bufs[i].numel() < b - a:
                bufs[i:i + 1] = [torch.empty(b - a, dtype=torch.float32, device=dev)]
            z = self._source.fill(bufs[i][: b - a], seed, e.key, a, n, self.noise, DIRECTION)
            return z if w == 1.0 else z.mul_(w)

        def chunk(a, b):
            out = term(*terms[0], a, b, 0)
            for seed, w, mat in terms[1:]:
                out.add_(term(seed, w, mat, a, b, 1))
            return out

        return chunk

    # ----------------------------------------------------------------- evaluation
    def perturbation(self, direction: Direction, scale: float) -> FunctionalPerturbation:
        """A context in which every forward sees θ + scale·d for the active parameters."""

        def make(e: Perturbed, dtype: torch.dtype | None) -> torch.Tensor:
            if not self.active(e):
                return e.param if dtype is None else e.param.to(dtype)
            return perturbed_copy(e.param, self._chunks_of(e, direction), scale, self.chunk_size, dtype)

        return FunctionalPerturbation(self._entries, make, self._shared, self._outside)

    def evaluate(self, closure: Callable, direction: Direction, scale: float) -> torch.Tensor:
        """Loss of the closure at θ + scale·d, under no_grad; weights are not written.
        ``scale=0`` evaluates θ itself, with no perturbed copies built."""
        with torch.no_grad():
            if scale == 0:
                return _as_loss(closure())
            pert = self.perturbation(direction, scale)
            with pert:
                loss = closure()
            if not self._calibrated:
                self._calibrate(pert.visits)
                if self._outside:  # some parameters were read outside their owner's forward
                    with self.perturbation(direction, scale):
                        loss = closure()
        return _as_loss(loss)

    def _calibrate(self, visits: dict[int, int]) -> None:
        """Learn from the first perturbed forward which parameters are tied or read elsewhere."""
        self._shared = {pid for pid, n in visits.items() if n > 1}
        self._outside = {pid for pid in self._entries if pid not in visits}
        self._calibrated = True

    def two_point(self, closure: Callable, direction: Direction, eps: float) -> tuple[float, float]:
        """L(θ+εd) and L(θ−εd) as floats (one host synchronisation). Raises on NaN/inf."""
        lp = self.evaluate(closure, direction, eps)
        lm = self.evaluate(closure, direction, -eps)
        lp_f, lm_f = torch.stack([lp, lm]).tolist()
        check_finite(lp_f, lm_f, step=self.zo_step)
        return lp_f, lm_f

    def shared_eps(self) -> float:
        """The perturbation radius: one direction spans every group, so all groups share one eps."""
        eps = self.param_groups[0]["eps"]
        if any(g["eps"] != eps for g in self.param_groups):
            raise ValueError(f"{type(self).__name__} uses one eps for all parameter groups; set eps on the optimizer")
        return eps

    def spsa(self, closure: Callable, eps: float, n: int | None = None) -> tuple[list[tuple[int, float]], float]:
        """n-SPSA: ``n`` (default ``directions_now()``) two-point estimates along seeded directions.

        Returns ``[(seed_j, g_j)]`` with g_j = (L(θ+εz_j) − L(θ−εz_j)) / 2ε, and the mean of all
        2n losses. The estimate is ĝ = (1/n) Σ g_j z_j, i.e. the direction ``[(seed_j, g_j / n)]``.
        """
        n = self.directions_now() if n is None else n
        base = self.step_seed()
        estimates, total = [], 0.0
        for j in range(n):
            seed = base if j == 0 else mix(base, j)
            lp, lm = self.two_point(closure, seed, eps)
            estimates.append((seed, (lp - lm) / (2 * eps)))
            total += lp + lm
        return estimates, total / (2 * n)

    # ----------------------------------------------------------------- update
    def apply(self, group: dict, direction: Direction, coef: float, decay: float = 1.0) -> None:
        """θ ← decay·θ + coef·d for every active trainable parameter of ``group``; d is streamed
        chunk by chunk, never materialised."""
        for e in self.trainable(group):
            if not self.active(e):
                continue
            chunks = self._chunks_of(e, direction)
            self._write(e, lambda a, b: chunks(a, b).mul_(coef), decay)

    def add_(self, e: Perturbed, delta: torch.Tensor, decay: float = 1.0) -> None:
        """θ ← decay·θ + delta for one parameter, with a materialised fp32 ``delta``."""
        flat = delta.reshape(-1)
        self._write(e, lambda a, b: flat[a:b], decay)

    def _write(self, e: Perturbed, delta, decay: float) -> None:
        self._sigint.hold()  # from the first write to the end of the step
        rounding = (self._source, self.step_seed(), e.key) if self.stochastic_rounding else None
        update_(e.param, delta, self.chunk_size, decay, self._master(e.param), rounding)

    def _master(self, p: torch.Tensor) -> torch.Tensor | None:
        if not self.master_weights or p.dtype == torch.float32:
            return None
        state = self.state[p]
        if "master" not in state:
            state["master"] = p.detach().float().clone()
        return state["master"]

    def finish_step(self, projected_grad: float) -> None:
        self.last_projected_grad = projected_grad
        self.zo_step += 1

    # ----------------------------------------------------------------- bookkeeping
    def state_bytes(self) -> int:
        """Bytes of optimizer state kept between steps (tensors in ``self.state``)."""
        total = 0
        for st in self.state.values():
            for v in st.values():
                if isinstance(v, torch.Tensor):
                    total += v.numel() * v.element_size()
        return total

    def state_dict(self):
        sd = super().state_dict()
        sd["zo"] = {"step": self.zo_step, "seed": self.seed, "noise": self.noise,
                    "last_projected_grad": self.last_projected_grad, "extra": self.extra_state()}
        return sd

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        zo = state_dict.pop("zo", None)
        if zo is None:
            raise ValueError("not a zotune ZO optimizer state_dict (no 'zo' entry)")
        # torch casts floating state to the parameter's dtype on load; fp32 masters must stay fp32
        masters = {i: st["master"] for i, st in state_dict["state"].items() if "master" in st}
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for i, m in masters.items():
            self.state[params[int(i)]]["master"] = m.to(params[int(i)].device, torch.float32).clone()
        self.zo_step = int(zo["step"])
        self.seed = int(zo["seed"])
        self.noise = zo["noise"]
        self.last_projected_grad = float(zo["last_projected_grad"])
        self.load_extra_state(zo.get("extra") or {})

    def extra_state(self) -> dict:
        """Method state that is not per-parameter (scalars, seeds); saved in ``state_dict()``."""
        return {}

    def load_extra_state(self, extra: dict) -> None:
        """Restore what ``extra_state`` returned."""


def check_hparams(lr: float | None = None, eps: float | None = None, weight_decay: float | None = None) -> None:
    """The hyperparameter checks the methods share (None: the method does not take it)."""
    if lr is not None and lr < 0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    if eps is not None and eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if weight_decay is not None and weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")


def _as_loss(loss) -> torch.Tensor:
    return loss.detach().float() if isinstance(loss, torch.Tensor) else torch.tensor(float(loss))


def as_combo(direction: Direction) -> tuple[tuple[int, float], ...]:
    """Normalise a direction to ((seed, weight), ...)."""
    if isinstance(direction, int):
        return ((direction, 1.0),)
    return tuple((int(s), float(w)) for s, w in direction)


def check_finite(*losses: float, step: int) -> None:
    if not all(math.isfinite(x) for x in losses):
        raise NonFiniteLossError(
            f"non-finite loss {losses} at step {step}: no weight was changed. "
            "Lower the learning rate or eps, or check the data and the model's dtype."
        )
