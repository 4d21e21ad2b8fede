"""The ZO-Bench family (ZO-SGD-Sign, -MMT, -Cons, ZO-Adam, Forward-Grad): the shared method
checks, and one property test per method that pins its update rule."""

import math

import pytest
import torch

from method_checks import (check_converges, check_forward_count, check_noop_and_exceptions, check_resume,
                           check_same_seed, check_state_bytes, counting, flat, least_squares, mlp)
from zotune.optim import (ForwardGrad, MeZO, ZOAdam, ZOSGDConservative, ZOSGDMomentum, ZOSGDSign,
                          build_optimizer)

# name -> (class, hyperparameters of the shared checks, state in units of fp32 params)
METHODS = {
    "zo-sgd-sign": (ZOSGDSign, dict(lr=1e-2), 0),
    "zo-sgd-sign-coord": (ZOSGDSign, dict(lr=1e-2, coordinatewise=True), 0),
    "zo-sgd-momentum": (ZOSGDMomentum, dict(lr=1e-3, momentum=0.9), 1),
    "zo-sgd-cons": (ZOSGDConservative, dict(lr=5e-3), 0),
    "zo-adam": (ZOAdam, dict(lr=1e-2), 2),
    "forward-grad": (ForwardGrad, dict(lr=5e-3), 0),
}

# (method, problem, steps, factor): end loss < factor × start loss within steps (measured: see docs)
CONVERGENCE = [
    ("zo-sgd-sign", "least_squares", 300, 0.05, dict(lr=2e-2)),
    ("zo-sgd-sign", "mlp", 100, 0.5, dict(lr=1e-2)),
    ("zo-sgd-momentum", "least_squares", 200, 0.05, dict(lr=1e-3)),
    ("zo-sgd-momentum", "mlp", 100, 0.5, dict(lr=1e-3)),
    ("zo-sgd-cons", "least_squares", 200, 0.05, dict(lr=1e-2)),
    ("zo-sgd-cons", "mlp", 100, 0.5, dict(lr=1e-2)),
    ("zo-adam", "least_squares", 200, 0.05, dict(lr=5e-2)),
    ("zo-adam", "mlp", 100, 0.5, dict(lr=2e-2)),
    ("forward-grad", "least_squares", 200, 0.05, dict(lr=1e-2)),
    ("forward-grad", "mlp", 100, 0.5, dict(lr=1e-2)),
]


def factory(name, **override):
    cls, hp, _ = METHODS[name]

    def make(params, seed=0, **kw):
        return cls(params, **{**hp, **override, **kw}, seed=seed)

    return make


@pytest.mark.parametrize("name,problem,steps,factor,hp", CONVERGENCE, ids=[f"{c[0]}-{c[1]}" for c in CONVERGENCE])
def test_converges(name, problem, steps, factor, hp):
    start, end = check_converges(factory(name, **hp), problem, steps, factor)
    print(f"{name} {problem}: {start:.4g} -> {end:.4g} in {steps} steps")


@pytest.mark.parametrize("name", list(METHODS))
def test_shared_checks(name):
    make = factory(name)
    check_same_seed(make)
    check_resume(make)
    check_forward_count(make)
    check_forward_count(factory(name, num_directions=2))
    # a one-pass method (Forward-Grad) only reaches the failing second closure call with 2 directions
    check_noop_and_exceptions(factory(name, lr=0.0), factory(name, num_directions=2))
    check_state_bytes(make, METHODS[name][2])


@pytest.mark.parametrize("name", ["zo-sgd-sign", "zo-sgd-momentum", "zo-sgd-cons", "zo-adam", "forward-grad"])
def test_builds_from_trainer_arguments(name):
    """The trainer passes lr, weight_decay, eps (when set), seed and noise to every ZO method;
    Forward-Grad has no eps and says so instead of ignoring it."""
    model, closure = mlp()
    common = dict(lr=1e-3, weight_decay=0.0, seed=0, noise="rademacher")
    if name == "forward-grad":
        with pytest.raises(ValueError, match="does not take \\['eps'\\]"):
            build_optimizer(name, model.named_parameters(), eps=1e-3, **common)
    else:
        common["eps"] = 1e-3
    opt = build_optimizer(name, model.named_parameters(), **common)
    assert math.isfinite(float(opt.step(closure)))


def _z(opt, model, seed=None):
    """The direction of the next step (or of ``seed``), per parameter, as the optimizer draws it."""
    seed = opt.step_seed() if seed is None else seed
    return [opt.engine.tensor(opt.engine.entry(p), seed) for p in model.parameters()]


def _delta(before, model):
    return [p.detach() - b for p, b in zip(model.parameters(), before)]


def _bf16_mlp():
    """The MLP in bf16, with its inputs cast to bf16 and the loss returned in fp32."""
    model, closure = mlp()
    model.to(torch.bfloat16).register_forward_pre_hook(lambda m, inputs: tuple(x.bfloat16() for x in inputs))
    return model, lambda: closure().float()


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


# ------------------------------------------------------------------------------ ZO-SGD-Sign
@pytest.mark.parametrize("coordinatewise", [False, True])
def test_sign_update_rule(coordinatewise):
    """θ moves by −lr·sign(g)·z (scalar rule) or −lr·sign(g·z) (coordinate-wise)."""
    model, closure = mlp()
    opt = ZOSGDSign(model.named_parameters(), lr=1e-2, coordinatewise=coordinatewise)
    for _ in range(3):
        z, before = _z(opt, model), _params(model)
        opt.step(closure)
        g = opt.last_projected_grad
        for d, zi in zip(_delta(before, model), z):
            want = -1e-2 * (torch.sign(g * zi) if coordinatewise else math.copysign(1.0, g) * zi)
            torch.testing.assert_close(d, want, rtol=1e-4, atol=1e-6)


def test_sign_rules_agree_for_rademacher():
    """With ±1 directions sign(g·z) = sign(g)·z, so both rules give the same weights."""
    runs = []
    for coordinatewise in (False, True):
        model, closure = mlp()
        opt = ZOSGDSign(model.named_parameters(), lr=1e-2, noise="rademacher", coordinatewise=coordinatewise)
        for _ in range(5):
            opt.step(closure)
        runs.append(flat(model))
    assert torch.equal(*runs)


# ------------------------------------------------------------------------------ ZO-SGD-MMT
def test_momentum_zero_is_mezo():
    """With μ = 0 the momentum buffer is ĝ itself: the weights equal MeZO's bit for bit."""
    runs = []
    for cls, hp in ((MeZO, {}), (ZOSGDMomentum, {"momentum": 0.0})):
        model, closure = mlp()
        opt = cls(model.named_parameters(), lr=1e-2, **hp)
        for _ in range(5):
            opt.step(closure)
        runs.append(flat(model))
    assert torch.equal(*runs)


def test_momentum_buffer_is_heavy_ball_sum():
    """After steps with estimates ĝ₁, ĝ₂, ĝ₃: m = μ²ĝ₁ + μĝ₂ + ĝ₃."""
    model, closure = mlp()
    mu = 0.9
    opt = ZOSGDMomentum(model.named_parameters(), lr=1e-3, momentum=mu)
    want = [torch.zeros_like(p) for p in model.parameters()]
    for _ in range(3):
        z = _z(opt, model)
        opt.step(closure)
        want = [mu * w + opt.last_projected_grad * zi for w, zi in zip(want, z)]
    for p, w in zip(model.parameters(), want):
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], w, rtol=1e-5, atol=1e-6)


def test_momentum_state_stays_fp32_for_bf16_weights():
    model, closure = _bf16_mlp()
    opt = ZOSGDMomentum(model.named_parameters(), lr=1e-3)
    opt.step(closure)
    fresh = ZOSGDMomentum(model.named_parameters(), lr=1e-3)
    fresh.load_state_dict(opt.state_dict())
    for p in model.parameters():
        assert fresh.state[p]["momentum_buffer"].dtype == torch.float32
        assert torch.equal(fresh.state[p]["momentum_buffer"], opt.state[p]["momentum_buffer"])


# ------------------------------------------------------------------------------ ZO-Adam
def test_adam_first_step_is_signed_lr():
    """Bias-corrected Adam's first step is −lr·ĝ/(|ĝ|+δ) ≈ −lr·sign(ĝ) per coordinate."""
    model, closure = mlp()
    opt = ZOAdam(model.named_parameters(), lr=1e-3)
    z, before = _z(opt, model), _params(model)
    opt.step(closure)
    for d, zi in zip(_delta(before, model), z):
        torch.testing.assert_close(d, -1e-3 * torch.sign(opt.last_projected_grad * zi), rtol=1e-3, atol=1e-7)


def test_adam_decoupled_weight_decay():
    """With lr·λ decay and a zero estimate (a constant loss), θ shrinks by exactly (1 − lr·λ)."""
    model, _ = mlp()
    opt = ZOAdam(model.named_parameters(), lr=1e-2, weight_decay=0.5)
    before = _params(model)
    opt.step(lambda: torch.tensor(1.0))
    for p, b in zip(model.parameters(), before):
        torch.testing.assert_close(p.detach(), b * (1 - 1e-2 * 0.5))


def test_adam_state_survives_bf16_resume():
    model, closure = _bf16_mlp()
    opt = ZOAdam(model.named_parameters(), lr=1e-3)
    opt.step(closure)
    fresh = ZOAdam(model.named_parameters(), lr=1e-3)
    fresh.load_state_dict(opt.state_dict())
    for p in model.parameters():
        for k in ("exp_avg", "exp_avg_sq"):
            assert fresh.state[p][k].dtype == torch.float32 and torch.equal(fresh.state[p][k], opt.state[p][k])
        assert fresh.state[p]["step"] == 1


# ------------------------------------------------------------------------------ ZO-SGD-Cons
@pytest.mark.parametrize("lr", [1e-3, 3e-2, 1.0])
def test_cons_never_worse_than_its_candidates(lr):
    """On the step's batch, the loss after a step is the smallest of the three candidates it
    compared (so never above ℓ₀ either); a rejected step leaves θ bit-identical."""
    model, closure = mlp()
    opt = ZOSGDConservative(model.named_parameters(), lr=lr)
    choices = set()
    for _ in range(15):
        before = flat(model)
        returned = opt.step(closure).item()
        after = closure().item()
        best = min(opt.last_candidates)
        assert after <= best * (1 + 1e-6) + 1e-12, (after, opt.last_candidates)
        assert returned == best
        if opt.last_choice == 0:
            assert torch.equal(flat(model), before)
        choices.add(opt.last_choice)
    if lr == 1.0:
        assert 0 in choices  # steps that large must sometimes be rejected


@pytest.mark.parametrize("fail_at", range(1, 6))
def test_cons_exception_at_any_pass_changes_nothing(fail_at):
    model, closure = mlp()
    opt = ZOSGDConservative(model.named_parameters(), lr=1e-2)
    opt.step(closure)
    before = flat(model)
    wrapped, calls = counting(closure)

    def failing():
        if calls[0] + 1 == fail_at:
            raise RuntimeError("simulated failure")
        return wrapped()

    with pytest.raises(RuntimeError):
        opt.step(failing)
    assert torch.equal(flat(model), before)


def test_cons_rejects_weight_decay():
    model, _ = mlp()
    with pytest.raises(ValueError, match="weight decay"):
        ZOSGDConservative(model.parameters(), weight_decay=0.1)


# ------------------------------------------------------------------------------ Forward-Grad
def test_forward_grad_is_the_exact_directional_derivative():
    """j = ⟨∇L, v⟩ to 1e-5 (relative) against autograd; the update is −lr·j·v."""
    model, closure = mlp()
    opt = ForwardGrad(model.named_parameters(), lr=1e-3)
    for _ in range(3):
        with torch.enable_grad():
            grads = torch.autograd.grad(closure(), list(model.parameters()))
        v, before, start = _z(opt, model), _params(model), closure().item()
        loss = opt.step(closure)
        want = sum((g * vi).sum() for g, vi in zip(grads, v)).item()
        assert abs(opt.last_projected_grad - want) <= 1e-5 * abs(want)
        assert loss.item() == pytest.approx(start, rel=1e-6)  # L(θ) itself, not a perturbed loss
        for d, vi in zip(_delta(before, model), v):
            torch.testing.assert_close(d, -1e-3 * opt.last_projected_grad * vi, rtol=1e-4, atol=1e-7)


def test_forward_grad_leaves_unused_parameters_alone():
    """A parameter of a module that never runs gets no tangent: a warning, and it is not updated."""
    model, closure = least_squares()
    model.add_module("unused", torch.nn.Linear(3, 1))
    before = _params(model.unused)
    opt = ForwardGrad(model.named_parameters(), lr=1e-2)
    with pytest.warns(UserWarning, match="not trained"):
        opt.step(closure)
    opt.step(closure)
    assert all(torch.equal(p, b) for p, b in zip(_params(model.unused), before))
    assert not torch.equal(model.weight.detach(), torch.zeros_like(model.weight))


def test_forward_grad_on_a_tiny_language_model():
    """Tied embeddings (one dual shared by both owners) and attention (math SDPA backend during
    the JVP): j still equals autograd's ⟨∇L, v⟩."""
    from zotune.models import load_model

    model, _ = load_model("tiny-llama", device="cpu")
    model.eval()
    ids = torch.randint(5, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    closure = lambda: model(input_ids=ids, labels=ids).loss  # noqa: E731
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(closure(), [p for _, p in named])
    opt = ForwardGrad(named, lr=0.0)
    v = [opt.engine.tensor(opt.engine.entry(p), opt.step_seed()) for _, p in named]
    want = sum((g * vi).sum() for g, vi in zip(grads, v)).item()
    opt.step(closure)
    assert opt.engine.tied, "tiny-llama's embeddings should be tied"
    assert abs(opt.last_projected_grad - want) <= 1e-5 * abs(want)
