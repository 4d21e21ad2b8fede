"""Every ZO method against its textbook twin (issue 7): 20 steps side by side on a tiny model.

The engine streams, fuses and chunks; each twin in ``tests/reference/`` materialises its
directions whole and writes the rule as a paper would. Both start from the same weights and draw
the same noise (``reference/noise.py``); after every step the test compares the returned loss,
the projected gradient, every parameter and every state buffer the twin keeps, at the tolerance
each twin states (and explains) in its module. The cases are the fp32 cases of the golden file.

The weights are compared through the step each took, θ_after − θ_before, so the tolerance is
relative to the step, not to the (much larger) weights. After each comparison the twin's weights
are set to the engine's (its state buffers are not), so a difference is that step's own. Without
this, trajectories that differ by one ulp drift apart for a reason that says nothing about the
rule: the next finite difference turns fp32's rounding of the losses (~1e-7) into an error of
~1e-7/ε ≈ 1e-4 in g, and 20 steps of that reach 1e-5 in the weights (measured: ZO-SGD-Cons,
MeZO-GV, n-SPSA). With the weights re-anchored, the losses are evaluated at identical points and
only the update's rounding is left to tolerate.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from golden.make_golden import CASES as GOLDEN_CASES
from golden.make_golden import single_thread, tiny_problem, zo_methods
from zotune.optim import optimizer_class

TWIN_MODULES = ["mezo", "zo_sgd_sign", "zo_sgd_momentum", "zo_sgd_cons", "zo_adam", "forward_grad", "subzero",
                "lozo", "lezo", "sparse_zo", "block_zo", "hybrid_zo", "helene", "mezo_gv", "mezo_greedy",
                "adanaged", "fzoo", "zo_muon", "sparse_mezo", "mezo_svrg"]
TWINS = {m.METHOD: m for m in (importlib.import_module(f"reference.{name}_reference") for name in TWIN_MODULES)}
STEPS = 20
SEED = 7
# public attributes a method documents, compared exactly when the twin has them too
PUBLIC = ("last_choice",)
CASES = {name: (method, kwargs) for name, (method, kwargs, dtype) in GOLDEN_CASES.items() if dtype == torch.float32}
# options the golden cases leave at their defaults: weight decay, n-SPSA, schedules, other geometries
CASES.update({
    "mezo-wd-n2": ("mezo", dict(lr=1e-2, weight_decay=0.5, num_directions=2)),
    "zo-sgd-sign-wd-n2": ("zo-sgd-sign", dict(lr=1e-3, weight_decay=0.5, num_directions=2)),
    "zo-sgd-sign-coordinatewise-n3": ("zo-sgd-sign", dict(lr=1e-3, coordinatewise=True, num_directions=3)),
    "zo-sgd-momentum-wd-n2": ("zo-sgd-momentum", dict(lr=1e-3, momentum=0.8, weight_decay=0.5, num_directions=2)),
    "zo-sgd-cons-n2": ("zo-sgd-cons", dict(lr=1e-2, num_directions=2, noise="rademacher")),
    "zo-adam-betas": ("zo-adam", dict(lr=1e-3, betas=(0.5, 0.9), adam_eps=1e-3)),
    "forward-grad-wd-n2": ("forward-grad", dict(lr=1e-2, weight_decay=0.5, num_directions=2)),
    "subzero-rank1-wd": ("subzero", dict(lr=1e-2, rank=1, refresh_every=3, weight_decay=0.5, noise="rademacher")),
    "lozo-n2": ("lozo", dict(lr=1e-2, rank=3, refresh_every=2, num_directions=2)),
    "lezo-wd": ("lezo", dict(lr=1e-2, sparsity=0.5, weight_decay=0.5)),
    "sparse-zo-wd-n2": ("sparse-zo", dict(lr=1e-2, density=0.3, weight_decay=0.5, num_directions=2)),
    "block-zo-cyclic-wd": ("block-zo", dict(lr=1e-2, blocks_per_step=3, weight_decay=0.5)),
    "hybrid-zo-fo-lr-wd": ("hybrid-zo", dict(lr=1e-2, fo_lr=1e-1, weight_decay=0.5, fo_params=r"^layers\.1\.")),
    "helene-interval-wd": ("helene", dict(lr=1e-3, hessian_interval=3, anneal_steps=5, gamma=2.0, weight_decay=0.5)),
    "helene-unclipped": ("helene", dict(lr=1e-3, clip=None, gamma=2.0)),
    "mezo-gv-pool4-n2": ("mezo-gv", dict(lr=1e-2, pool_size=4, split_ratio=0.25, num_directions=2, weight_decay=0.5)),
    "mezo-greedy-n2": ("mezo-greedy", dict(lr=1e-2, pool_size=3, num_directions=2, weight_decay=0.5)),
    "adanaged-plain-momentum": ("adanaged", dict(nesterov=False, r_eps=1e-2)),
    "adanaged-no-momentum-euclidean": ("adanaged", dict(beta=0.0, geometry="euclidean", step_scale=0.5)),
    "adanaged-colnorm-seeds": ("adanaged", dict(geometry="colnorm", momentum_state="seeds", history=3)),
    "adanaged-subspace": ("adanaged", dict(sampler={"name": "subspace", "rank": 3, "refresh_every": 4})),
    "adanaged-subspace-plain-bound-n2": ("adanaged", dict(sampler={"name": "subspace", "rank": 2, "refresh_every": 6},
                                                          nesterov=False, distance="bound", num_directions=2)),
    "adanaged-dense-spectral": ("adanaged", dict(sampler="dense")),
    "fzoo-gaussian-wd-n3": ("fzoo", dict(lr=1e-2, num_directions=3, noise="gaussian", weight_decay=0.5)),
    "zo-muon-refresh-wd": ("zo-muon", dict(lr=1e-2, dense_lr=1e-2, rank=2, refresh_every=3, num_directions=2,
                                           weight_decay=0.5)),
    "sparse-mezo-wd-n2": ("sparse-mezo", dict(lr=1e-2, sparsity=0.5, weight_decay=0.5, num_directions=2)),
    "mezo-svrg-q3-wd-n2": ("mezo-svrg", dict(lr=1e-2, anchor_lr=2e-2, anchor_every=3, weight_decay=0.5,
                                             num_directions=2)),
})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: threads only add overhead (and contend on a shared machine)."""
    with single_thread():
        yield


def test_every_zo_method_has_a_twin():
    assert set(TWINS) == set(zo_methods())
    assert {method for method, _ in CASES.values()} == set(zo_methods())


def compare(what: str, got, want, tol: dict) -> None:
    """``torch.allclose`` with the twin's rtol taken relative to ``want``'s largest entry (and its
    atol on top): an entry of a sum of several directions can cancel to near 0 while the rounding
    of its terms does not, so an entrywise relative test would flag rounding, not the rule."""
    got, want = torch.as_tensor(got, dtype=torch.float32), torch.as_tensor(want, dtype=torch.float32)
    scale = want.abs().max().item() if want.numel() else 0.0
    if not torch.allclose(got, want, rtol=0.0, atol=tol["atol"] + tol["rtol"] * scale):
        diff = (got - want).abs().max().item()
        pytest.fail(f"{what}: engine and twin differ by {diff:.3g} ({diff / max(scale, 1e-30):.3g} of the largest "
                    f"entry {scale:.3g}); tolerance {tol}")


def engine_state(opt, param, key: str, where: str):
    state = opt.state[param]
    if key not in state:
        pytest.fail(f"{where}: the engine's state has no {key!r} (it has {sorted(state)}); if it was renamed, "
                    "rename it in the twin (tests/reference/README.md)")
    return state[key]


def run_side_by_side(case: str, twin_class) -> None:
    method, kwargs = CASES[case]
    tol = TWINS[method].TOLERANCE
    engine_model, engine_closure = tiny_problem()
    twin_model, twin_closure = tiny_problem()
    opt = optimizer_class(method)(list(engine_model.named_parameters()), seed=SEED, **kwargs)
    twin_kwargs = {k: v for k, v in kwargs.items() if not (method == "forward-grad" and k == "eps")}
    twin = twin_class(list(twin_model.named_parameters()), seed=SEED, **twin_kwargs)
    engine_params = dict(engine_model.named_parameters())
    for t in range(STEPS):
        where = f"{case} step {t}"
        before = {name: p.detach().clone() for name, p in engine_params.items()}
        loss = float(opt.step(engine_closure))
        twin_loss = twin.step(twin_closure)
        compare(f"{where} loss", loss, twin_loss, tol)
        compare(f"{where} projected gradient", opt.last_projected_grad, twin.last_projected_grad, tol)
        for attr in PUBLIC:
            if hasattr(twin, attr):
                assert getattr(opt, attr) == getattr(twin, attr), f"{where}: {attr} differs"
        for name, p in twin.params.items():
            engine_step, twin_step = engine_params[name].detach() - before[name], p.detach() - before[name]
            compare(f"{where} step of {name}", engine_step, twin_step, tol)
            for key, buf in twin.state[name].items():
                compare(f"{where} state {name}[{key}]", engine_state(opt, engine_params[name], key, where), buf, tol)
        if hasattr(twin, "extra_state"):
            extra = opt.state_dict()["zo"]["extra"]
            for key, value in twin.extra_state().items():
                assert key in extra, f"{where}: state_dict()['zo']['extra'] has no {key!r}"
                compare(f"{where} {key}", extra[key], value, tol)
            twin.load_extra_state(extra)
        with torch.no_grad():
            for name, p in twin.params.items():
                p.copy_(engine_params[name])


# Findings (tests/reference/README.md): where the textbook twin disagrees with the engine, the case
# is expected to fail, on the parameters the finding names and nowhere else, until the engine is
# fixed; a second twin that adopts the engine's choice checks the rest of the rule.
class KnownDiscrepancy(AssertionError):
    """The twin disagrees with the engine where a finding says it does."""


SPECTRAL_NORM = ("AdaNAGED's operator norm (zotune.geometry.spectral_norm, 12 power iterations) is 4.5% below "
                 "the exact norm on layers.1.weight (2.846 vs 2.981), so r̄ and the steps of that block are ~3% short")
SPECTRAL_TENSORS = ("layers.0.weight", "layers.1.weight")  # the tiny model's matrices with a spectral LMO
FINDINGS = {case: (SPECTRAL_NORM, SPECTRAL_TENSORS) for case, (method, kwargs) in CASES.items()
            if method == "adanaged" and kwargs.get("geometry", "auto") == "auto"}


def with_findings(cases):
    return [pytest.param(c, marks=pytest.mark.xfail(raises=KnownDiscrepancy, strict=True, reason=FINDINGS[c][0]))
            if c in FINDINGS else c for c in cases]


@pytest.mark.parametrize("case", with_findings(CASES))
def test_twin_matches_engine(case):
    try:
        run_side_by_side(case, TWINS[CASES[case][0]].Reference)
    except pytest.fail.Exception as failure:
        # the finding shows in the steps of those tensors, and in the displacement a subspace matrix keeps
        if case in FINDINGS and any(f"step of {name}:" in str(failure) or f"state {name}[displacement_core]" in
                                    str(failure) for name in FINDINGS[case][1]):
            raise KnownDiscrepancy(str(failure)) from failure
        raise


@pytest.mark.parametrize("case", list(FINDINGS))
def test_adanaged_matches_with_the_engines_norm_estimate(case):
    run_side_by_side(case, TWINS["adanaged"].PowerIterationReference)
