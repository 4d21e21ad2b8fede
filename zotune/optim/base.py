"""The thin ``torch.optim.Optimizer`` every zeroth-order method in zotune wraps its rule in.

A ZO optimizer's ``step(closure)`` calls the closure (a forward pass that returns the loss; no
backward) at perturbed points and updates the parameters from the scalar losses. The work is done
by the engine primitives (``zotune.engine``) and the rule of the method (a pure function in the
method's own file); this class only holds what a torch optimizer holds:

- the parameter groups and their hyperparameters, the step counter and the run seed (the draws of
  step t come from ``mix(seed, t)``; ``state_dict()`` carries both, so a resumed run draws the same
  directions);
- per-parameter state, created lazily in one place (``buffer``), kept in fp32 for half-precision
  weights, and kept fp32 when a state_dict is loaded (torch would cast it to the weights' dtype);
- the engine options shared by every method (below).

Engine options (every method takes them):
    sampler: the direction sampler (``zotune.samplers``): a Sampler, a registered name, or
        ``{"name": NAME, **options}``. Default: dense draws.
    seed: base seed of the run.
    noise: the noise kind of the draws, "gaussian" (N(0, I)) or "rademacher" (±1 entries).
    chunk_size: elements processed per pass chunk; bounds temporaries, never changes results.
    stochastic_rounding: unbiased rounding of half-precision updates (default on).
    kernels: "auto" (fused Triton kernels for CUDA parameters when triton is installed), "torch"
        (the plain chunked passes) or "triton" (the kernels everywhere; on a CPU only for tests,
        under TRITON_INTERPRET=1). Same draws either way; see docs/performance.md.
    low_rank_in_forward: "never" (default), "auto" or "always": with low-rank samplers (SubZero,
        LOZO), add a Linear's perturbation x·B·Aᵀ to its output instead of building W + c·A·Bᵀ;
        "auto" where that costs fewer flops (batches of fewer tokens than m·n/(m+n)).
    master_weights: keep an fp32 copy of half-precision parameters (4 bytes/element of state)
        and round it to nearest into the parameter after each update.
    num_directions: n of n-SPSA: average the estimate over n draws (for pool methods: n pools).
    query_schedule: AdaZeta's adaptive number of queries (Yang et al., "AdaZeta: Adaptive
        Zeroth-Order Tensor-Train Adaption for Memory-Efficient LLM Fine-Tuning", EMNLP 2024,
        arXiv 2406.18060): ``(alpha, beta, q_max)`` makes step t use
        n_t = min(ceil(alpha·(t+1)^beta), q_max) draws instead of ``num_directions``. Growing n_t
        shrinks the estimator's variance as training converges, which the paper shows prevents the
        late divergence of fixed-query ZO. The constants are the user's (no published defaults).
        Every method reads its number of draws from ``directions_now()``, so every method honours it.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Iterator

import torch
from torch.optim import Optimizer

from zotune.engine import Engine, Estimate, Part, Step, collect_params
from zotune.perturb import Perturbed
from zotune.samplers import make_sampler
from zotune.samplers.base import whole_number


def _releasing_interrupt(step):
    @functools.wraps(step)
    def wrapper(self, *args, **kwargs):
        try:
            return step(self, *args, **kwargs)
        finally:
            self.engine.hold.release()

    return wrapper


class ZOOptimizer(Optimizer):
    """Base of the zeroth-order optimizers. A method implements ``step(closure)`` from the engine
    primitives (``self.engine``) and its rule; see the module docstring for the engine options."""

    # A step is a function of the weights, the seeds and the closure's scalar values, so a run can
    # be replayed from its trajectory (``zotune.trajectory``); a method whose update also needs
    # tensors from the closure (a first-order half) sets this False.
    replayable = True
    # A step reads only the closure's value, a float: ranks can agree on it by sending 8 bytes
    # (``zotune.distributed``). A method that reads derivatives carried by the value (forward-mode
    # tangents, a backward pass) sets this False.
    scalar_closure = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "step" in cls.__dict__:  # every method's step releases the Ctrl-C hold on exit
            cls.step = _releasing_interrupt(cls.__dict__["step"])

    def __init__(
        self,
        params,
        defaults: dict,
        *,
        sampler=None,
        seed: int = 0,
        noise: str = "gaussian",
        chunk_size: int = 1 << 20,
        stochastic_rounding: bool = True,
        kernels: str = "auto",
        low_rank_in_forward: str = "never",
        master_weights: bool = False,
        num_directions: int = 1,
        query_schedule: tuple[float, float, int] | None = None,
    ):
        num_directions = whole_number("num_directions", num_directions, 1)  # 2.5 is refused, not truncated
        if query_schedule is not None:
            if len(query_schedule) != 3 or query_schedule[0] <= 0 or query_schedule[1] < 0 or query_schedule[2] < 1:
                raise ValueError("query_schedule must be (alpha > 0, beta >= 0, q_max >= 1), "
                                 f"got {query_schedule!r}")
            query_schedule = (float(query_schedule[0]), float(query_schedule[1]), int(query_schedule[2]))
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        check_finite_options(type(self).__name__, defaults)
        super().__init__(params, defaults)
        self.seed = int(seed)
        self.master_weights = master_weights
        self.num_directions = int(num_directions)
        self.query_schedule = query_schedule
        self.zo_step = 0  # number of completed steps
        self.last_projected_grad = float("nan")
        params = collect_params(self.param_groups)
        self.sampler = make_sampler(sampler).bind(params, noise)
        self.engine = Engine(params, self.sampler, clock=self.current_step, master=self.master,
                             chunk_size=chunk_size, stochastic_rounding=stochastic_rounding, kernels=kernels,
                             low_rank_in_forward=low_rank_in_forward)

    # ----------------------------------------------------------------- the step being taken
    @property
    def noise(self) -> str:
        """The noise kind of the draws (the sampler's)."""
        return self.sampler.kind

    @noise.setter
    def noise(self, kind: str) -> None:
        self.sampler.bind(self.engine.params, kind)

    def current_step(self) -> Step:
        """The step about to run (or running): the run seed and the step index."""
        return Step(self.seed, self.zo_step)

    def step_seed(self) -> int:
        """Seed of the draws of the step about to run."""
        return self.current_step().seed

    def directions_now(self) -> int:
        """Draws the next step averages: ``num_directions``, or AdaZeta's schedule."""
        if self.query_schedule is None:
            return self.num_directions
        alpha, beta, q_max = self.query_schedule
        return max(1, min(math.ceil(alpha * (self.zo_step + 1) ** beta), int(q_max)))

    @property
    def forward_passes(self) -> int:
        """Closure calls of the next step: two per draw and per subset the sampler gives."""
        return 2 * self.directions_now() * len(self.engine.subsets())

    def trainable(self, group: dict) -> list[Perturbed]:
        """The trainable parameters of ``group`` (each tensor once), as the engine's records."""
        by_id = self.engine.by_id
        seen, out = set(), []
        for p in group["params"]:
            if id(p) in by_id and id(p) not in seen:
                seen.add(id(p))
                out.append(by_id[id(p)])
        return out

    def shared_eps(self) -> float:
        """The perturbation radius: one draw spans every group, so all groups share one eps."""
        eps = self.param_groups[0]["eps"]
        if any(g["eps"] != eps for g in self.param_groups):
            raise ValueError(f"{type(self).__name__} uses one eps for all parameter groups; set eps on the optimizer")
        return eps

    def estimate(self, closure, eps: float, within=None) -> Estimate:
        """The n-SPSA estimate of this step (n = ``directions_now()``) on the sampler's subsets."""
        return self.engine.spsa(closure, eps, self.directions_now(), within)

    def estimated(self, est: Estimate) -> Iterator[tuple[dict, Perturbed, Part]]:
        """(group, parameter, its part of ``est``) for every parameter the estimate covers; the
        others (outside this step's subsets) are neither updated nor decayed."""
        for group in self.param_groups:
            for e in self.trainable(group):
                part = est.part_of(e)
                if part is not None:
                    yield group, e, part

    def skip_step(self) -> None:
        """Count a step that was skipped (a non-finite loss: no weight or state was changed), so
        the next step draws new directions, as the training loop moves on to a new batch."""
        self.engine.tape.discard()
        self.zo_step += 1

    def finish_step(self, projected_grad: float) -> None:
        self.engine.end_step()
        self.last_projected_grad = projected_grad
        self.zo_step += 1

    # ----------------------------------------------------------------- state, created lazily here
    def buffer(self, e: Perturbed, name: str, first: Callable[[Perturbed], torch.Tensor] | None = None) -> torch.Tensor:
        """The state tensor ``name`` of parameter ``e``, created on first use as ``first(e)`` or, by
        default, fp32 zeros of e's shape (fp32 also for half-precision weights, so small ZO
        estimates are not rounded away)."""
        state = self.state[e.param]
        if name not in state:
            state[name] = first(e) if first is not None else torch.zeros(
                e.param.shape, dtype=torch.float32, device=e.param.device)
        return state[name]

    def master(self, p: torch.Tensor) -> torch.Tensor | None:
        """The fp32 master copy of a half-precision ``p`` with ``master_weights``, else None."""
        if not self.master_weights or p.dtype == torch.float32:
            return None
        state = self.state[p]
        if "master" not in state:
            state["master"] = p.detach().float().clone()
        return state["master"]

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
                    "last_projected_grad": self.last_projected_grad, "extra": self.extra_state(),
                    "sampler": self.sampler.state()}
        return sd

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        zo = state_dict.pop("zo", None)
        if zo is None:
            raise ValueError("not a zotune ZO optimizer state_dict (no 'zo' entry)")
        # torch casts floating state to the parameter's dtype on load; fp32 state must stay fp32
        fp32 = {(int(i), k): v for i, st in state_dict["state"].items() for k, v in st.items()
                if isinstance(v, torch.Tensor) and v.dtype == torch.float32}
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for (i, k), v in fp32.items():
            self.state[params[i]][k] = v.to(params[i].device, torch.float32).clone()
        self.zo_step = int(zo["step"])
        self.seed = int(zo["seed"])
        self.noise = zo["noise"]
        self.last_projected_grad = float(zo["last_projected_grad"])
        self.load_extra_state(zo.get("extra") or {})
        self.sampler.load_state(zo.get("sampler") or {})

    def extra_state(self) -> dict:
        """Method state that is not per-parameter (scalars, seeds); saved in ``state_dict()``."""
        return {}

    def load_extra_state(self, extra: dict) -> None:
        """Restore what ``extra_state`` returned."""


def check_finite_options(owner: str, options: dict) -> None:
    """Refuse NaN or infinite numbers among ``options`` (numbers, or tuples of numbers such as
    betas): a NaN compares False with every bound, so range checks alone let it through, and one
    NaN hyperparameter turns every weight into NaN at the first update."""
    for name, value in options.items():
        values = value if isinstance(value, (tuple, list)) else (value,)
        for v in values:
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isfinite(v):
                raise ValueError(f"{owner}: {name} must be a finite number, got {value!r}; "
                                 f"set {name} to a finite value (or leave it unset for the default)")


def check_hparams(lr: float | None = None, eps: float | None = None, weight_decay: float | None = None) -> None:
    """The hyperparameter checks the methods share (None: the method does not take it)."""
    check_finite_options("optimizer", {k: v for k, v in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay))
                                       if v is not None})
    if lr is not None and lr < 0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    if eps is not None and eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if weight_decay is not None and weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")


def fixed_sampler(engine: dict, sampler, method: str) -> dict:
    """Engine options of a preset (a method with a fixed sampler): ``engine`` plus ``sampler``."""
    if "sampler" in engine:
        raise ValueError(f"{method} fixes its sampler ({sampler!r}); to choose another, use its base method "
                         "with --opt sampler=NAME")
    return {**engine, "sampler": sampler}


def check_closure(opt, closure) -> None:
    """A ZO step needs a closure: say so, naming the method. Every step calls this first, so it also
    refuses a change of ``requires_grad`` since the optimizer was built: the engine fixed its
    parameters then, and would otherwise keep training a parameter frozen later (torch's optimizers
    skip it) and never train one unfrozen later."""
    if closure is None:
        raise ValueError(f"{type(opt).__name__}.step needs a closure that runs a forward pass and returns the loss")
    frozen = [e.name or f"parameter {e.index}" for e in opt.engine.params if not e.param.requires_grad]
    thawed = sum(1 for g in opt.param_groups for p in g["params"] if p.requires_grad and id(p) not in opt.engine.by_id)
    if frozen or thawed:
        what = (f"{len(frozen)} parameter(s) ({', '.join(frozen[:3])}) were frozen with requires_grad_(False)"
                if frozen else f"{thawed} parameter(s) were unfrozen with requires_grad_(True)")
        raise ValueError(f"{type(opt).__name__}: {what} after the optimizer was built, and a zeroth-order optimizer "
                         "trains the parameters that required grad when it was built: build a new optimizer after "
                         "changing requires_grad (no weight was changed)")
