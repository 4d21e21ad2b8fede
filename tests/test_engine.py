"""The engine's invariants (DESIGN.md §2), each with a test that fails if the invariant breaks."""

import copy

import pytest
import torch
from torch.nn.modules import module as nn_module

from zotune.optim import MeZO, NonFiniteLossError
from zotune.passes import stochastic_round, update_
from zotune.rng import CounterRNG, mix, name_key

SEGMENT = 1 << 16  # a chunk size that straddles the Philox counter blocks and the old generator's segments
from zotune.samplers import Sampler

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


class TiedMLP(torch.nn.Module):
    """Embedding → MLP → output layer tied to the embedding (like SmolLM2's lm_head)."""

    def __init__(self, vocab=50, dim=16, dtype=torch.float32):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = torch.nn.Embedding(vocab, dim)
        self.fc1 = torch.nn.Linear(dim, 32)
        self.norm = torch.nn.LayerNorm(32)
        self.fc2 = torch.nn.Linear(32, dim)
        self.head = torch.nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        self.to(dtype)

    def forward(self, ids):
        h = self.emb(ids).mean(1)
        h = self.fc2(torch.tanh(self.norm(self.fc1(h))))
        return self.head(h)


def make_batch(vocab=50, n=32, length=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, length), generator=g), torch.randint(0, vocab, (n,), generator=g)


def ce_closure(model, ids, y):
    return lambda: torch.nn.functional.cross_entropy(model(ids).float(), y)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bit_identical(model, snap):
    for k, v in model.state_dict().items():
        assert v.dtype == snap[k].dtype
        assert torch.equal(v.view(torch.uint8) if v.dtype != torch.bool else v, snap[k].view(torch.uint8)), k


# ---------------------------------------------------------------------------------- noise
@pytest.mark.parametrize("kind", ["gaussian", "rademacher", "uniform"])
def test_noise_is_counter_based_any_chunking(kind):
    src = CounterRNG()
    numel = 3 * SEGMENT + 123
    full = src.draw(seed=7, key=11, offset=0, n=numel, numel=numel, kind=kind)
    for chunk in (1, 1000, SEGMENT - 1, SEGMENT + 5, 2 * SEGMENT):
        parts = [src.draw(7, 11, a, min(chunk, numel - a), numel, kind) for a in range(0, numel, chunk)] \
            if chunk > 999 else [src.draw(7, 11, a, 1, numel, kind) for a in (0, SEGMENT - 1, SEGMENT, numel - 1)]
        if chunk > 999:
            assert torch.equal(torch.cat(parts), full)
        else:  # single elements at block edges
            assert torch.equal(torch.cat(parts), full[[0, SEGMENT - 1, SEGMENT, numel - 1]])
    assert not torch.equal(src.draw(8, 11, 0, 100, numel, kind), full[:100])  # seed matters
    assert not torch.equal(src.draw(7, 12, 0, 100, numel, kind), full[:100])  # key matters
    mean, std = {"gaussian": (0, 1), "rademacher": (0, 1), "uniform": (0.5, 12**-0.5)}[kind]
    assert abs(full.mean().item() - mean) < 0.02 and abs(full.std().item() - std) < 0.02


def test_rademacher_and_keys():
    z = CounterRNG().draw(1, 2, 0, 10000, 10000, kind="rademacher")
    assert set(z.unique().tolist()) == {-1.0, 1.0}
    assert name_key("layer.weight") == name_key("layer.weight") != name_key("layer.bias")
    assert mix(1, 2) != mix(2, 1)


def test_global_rng_untouched():
    model = TiedMLP()
    opt = MeZO(model.named_parameters(), lr=1e-3)
    ids, y = make_batch()
    state = torch.get_rng_state()
    for _ in range(3):
        opt.step(ce_closure(model, ids, y))
    assert torch.equal(torch.get_rng_state(), state)


# ---------------------------------------------------------------------------------- invariant 2
@pytest.mark.parametrize("dtype,autocast", [(d, False) for d in DTYPES] + [(torch.float32, True)])
def test_lr_zero_thousand_steps_bit_identical(dtype, autocast):
    """Also with fp32 weights under bf16 autocast (the demo's setting), where the engine builds
    perturbed Linear weights directly in bf16."""
    model = TiedMLP(dtype=dtype)
    snap = snapshot(model)
    ids, y = make_batch()
    opt = MeZO(model.named_parameters(), lr=0.0, eps=1e-3)
    plain = ce_closure(model, ids, y)

    def closure():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return plain()
    for _ in range(1000):
        opt.step(closure)
    assert opt.zo_step == 1000 and opt.last_projected_grad != 0.0  # the steps really ran
    assert_bit_identical(model, snap)


def test_textbook_inplace_cycle_drifts_in_bf16():
    """The failure the functional perturbation avoids: +εz, −2εz, +εz in place is not a no-op."""
    p = torch.randn(10000, generator=torch.Generator().manual_seed(0)).mul(0.02).bfloat16()
    p0 = p.clone()
    for step in range(20):
        z = torch.randn(10000, generator=torch.Generator().manual_seed(step)).bfloat16()
        for c in (1e-3, -2e-3, 1e-3):
            p.add_(z, alpha=c)
    assert not torch.equal(p, p0)


@pytest.mark.parametrize("autocast", [False, True])
def test_perturbed_forward_equals_explicit_perturbation(autocast):
    """Every trainable parameter (tied ones included) is seen perturbed by exactly εz, also when
    bf16 autocast makes the engine build Linear weights directly in bf16."""
    model = TiedMLP()
    ids, y = make_batch()
    opt = MeZO(model.named_parameters(), lr=0.0, eps=1e-2)
    seed = opt.step_seed()

    def under_autocast(closure):
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                return closure()
        return run

    opt.engine.loss_at(under_autocast(ce_closure(model, ids, y)), seed, 1e-2)  # first call learns the layout
    loss = opt.engine.loss_at(under_autocast(ce_closure(model, ids, y)), seed, 1e-2)
    ref = copy.deepcopy(model)
    src = CounterRNG()
    with torch.no_grad():
        for name, p in ref.named_parameters():  # tied weight listed once
            z = src.draw(seed, name_key(name), 0, p.numel(), p.numel()).view_as(p)
            p.add_(z, alpha=1e-2)
    assert torch.equal(loss, under_autocast(ce_closure(ref, ids, y))().float())
    assert opt.engine.tied  # the tied weight was recognised


# ---------------------------------------------------------------------------------- invariant 3
def test_stochastic_rounding_is_unbiased():
    x = torch.full((200_000,), 1.0 + 1e-3)  # bf16 ulp at 1 is 2**-7: 1e-3 is below half an ulp
    u = CounterRNG().draw(3, 4, 0, x.numel(), x.numel(), kind="uniform")
    sr = stochastic_round(x, torch.bfloat16, u).float()
    assert torch.all(x.bfloat16().float() == 1.0)  # round-to-nearest loses the update entirely
    assert set(sr.unique().tolist()) == {1.0, 1.0078125}
    assert abs(sr.mean().item() - (1.0 + 1e-3)) < 2e-5  # 5 standard errors (σ≈2.6e-3/√2e5)
    exact = torch.tensor([1.0, 0.5, -3.0])  # representable values never move
    assert torch.equal(stochastic_round(exact, torch.float16, torch.rand(3)).float(), exact)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_update_mean_matches_exact_update(dtype):
    n, coef = 100_000, 1e-4
    src = CounterRNG()
    z = src.draw(5, 1, 0, n, n, kind="rademacher")
    p = torch.full((n,), 0.5, dtype=dtype)
    update_(p, lambda a, b: z[a:b] * coef, chunk=4096, rounding=(src, 5, 1))
    delta = (p.float() - 0.5) * z  # per-element update along +z; exact value is coef
    assert abs(delta.mean().item() - coef) < 0.1 * coef
    nearest = torch.full((n,), 0.5, dtype=dtype)
    update_(nearest, lambda a, b: z[a:b] * coef, chunk=4096, rounding=None)
    assert torch.all(nearest.float() == 0.5)  # round-to-nearest drops it


def test_half_precision_mezo_tracks_fp32_mezo():
    """Same seed, same data: bf16 weights with stochastic rounding follow the fp32 trajectory."""
    X = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    y = X.sum(1, keepdim=True)
    runs = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = torch.nn.Linear(8, 1, bias=False).to(dtype)
        with torch.no_grad():
            model.weight.zero_()
        opt = MeZO(model.named_parameters(), lr=1e-3, eps=1e-2)
        for _ in range(300):
            opt.step(lambda: ((model(X.to(dtype)).float() - y) ** 2).mean())
        runs[dtype] = model.weight.float()
    assert (runs[torch.bfloat16] - runs[torch.float32]).norm() < 0.1 * runs[torch.float32].norm()


def test_master_weights_keep_small_updates():
    model = TiedMLP(dtype=torch.bfloat16)
    ids, y = make_batch()
    opt = MeZO(model.named_parameters(), lr=1e-6, master_weights=True)
    for _ in range(3):
        opt.step(ce_closure(model, ids, y))
    masters = [s["master"] for s in opt.state.values()]
    assert masters and all(m.dtype == torch.float32 for m in masters)
    assert opt.state_bytes() == sum(m.numel() * 4 for m in masters)
    for p in model.parameters():
        assert torch.equal(p, opt.state[p]["master"].to(p.dtype))


# ---------------------------------------------------------------------------------- invariant 4
@pytest.mark.parametrize("fail_on_call", [1, 2])
def test_closure_that_raises_leaves_weights(fail_on_call):
    model = TiedMLP()
    ids, y = make_batch()
    opt = MeZO(model.named_parameters(), lr=1e-2)
    opt.step(ce_closure(model, ids, y))
    snap = snapshot(model)
    hooks = (len(nn_module._global_forward_pre_hooks), len(nn_module._global_forward_hooks))
    calls = []

    class Boom(RuntimeError):
        pass

    def closure():
        calls.append(1)
        h = model.emb(ids).mean(1)
        model.fc1(h)  # the model has been read perturbed before the failure
        if len(calls) == fail_on_call:
            raise Boom("simulated failure")
        return ce_closure(model, ids, y)()

    with pytest.raises(Boom):
        opt.step(closure)
    assert_bit_identical(model, snap)
    assert all(type(p) is torch.nn.Parameter for p in model.parameters())
    assert hooks == (len(nn_module._global_forward_pre_hooks), len(nn_module._global_forward_hooks))
    assert opt.zo_step == 1


def test_nonfinite_loss_raises_and_keeps_weights():
    model = TiedMLP()
    snap = snapshot(model)
    opt = MeZO(model.named_parameters(), lr=1e-2)
    with pytest.raises(NonFiniteLossError, match="no weight was changed"):
        opt.step(lambda: torch.tensor(float("nan")))
    assert_bit_identical(model, snap)


# ---------------------------------------------------------------------------------- invariant 1/6
def big_model():
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(300, 500), torch.nn.Tanh(), torch.nn.Linear(500, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model  # first weight has 150k elements: more than two noise blocks


def run_steps(model, steps=4, reverse=False, **kw):
    x = torch.randn(16, 300, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1] * 8)
    named = list(model.named_parameters())
    opt = MeZO(named[::-1] if reverse else named, lr=1e-2, **kw)
    for _ in range(steps):
        opt.step(lambda: torch.nn.functional.cross_entropy(model(x), y))
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_same_seed_same_weights_any_chunk_size_and_order():
    ref = run_steps(big_model(), chunk_size=1 << 20)
    for chunk in (4096, SEGMENT + 17, 999_983):
        assert torch.equal(run_steps(big_model(), chunk_size=chunk), ref), chunk
    assert torch.equal(run_steps(big_model(), reverse=True), ref)
    assert not torch.equal(run_steps(big_model(), seed=1), ref)


def test_only_requires_grad_params_change():
    model = big_model()
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    before = model[2].weight.detach().clone()
    run_steps(model)
    assert torch.equal(model[0].weight, frozen)
    assert not torch.equal(model[2].weight, before)


# ---------------------------------------------------------------------------------- estimator
def least_squares(d=20, n=256):
    g = torch.Generator().manual_seed(0)
    X, w = torch.randn(n, d, generator=g), torch.randn(d, 1, generator=g)
    model = torch.nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    return model, lambda: ((model(X) - X @ w) ** 2).mean()


def test_spsa_average_matches_autograd_gradient():
    model, loss = least_squares()
    true = torch.autograd.grad(loss(), model.weight)[0].flatten()
    opt = MeZO(model.named_parameters(), lr=0.0, eps=1e-3)
    key = opt.engine.entry(model.weight).key
    est = torch.zeros_like(true)
    src = CounterRNG()
    for _ in range(2000):
        seed = opt.step_seed()
        lp, lm = opt.engine.two_point(loss, seed, 1e-3)
        est += (lp - lm) / 2e-3 * src.draw(seed, key, 0, true.numel(), true.numel())
        opt.finish_step(0.0)
    cos = torch.nn.functional.cosine_similarity(est, true, dim=0).item()
    assert cos >= 0.95, cos


def test_mezo_lowers_least_squares_loss():
    model, loss = least_squares()
    start = loss().item()
    opt = MeZO(model.named_parameters(), lr=5e-3, eps=1e-3)
    for _ in range(500):
        opt.step(loss)
    assert loss().item() < 0.05 * start


# ---------------------------------------------------------------------------------- torch.optim API
def test_state_dict_resume_gives_same_weights():
    straight = run_steps(big_model(), steps=6)
    model = big_model()
    x = torch.randn(16, 300, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1] * 8)
    closure = lambda: torch.nn.functional.cross_entropy(model(x), y)  # noqa: E731
    opt = MeZO(model.named_parameters(), lr=1e-2)
    for _ in range(3):
        opt.step(closure)
    sd = copy.deepcopy(opt.state_dict())
    opt2 = MeZO(model.named_parameters(), lr=5.0, seed=99)  # wrong values, overwritten by the load
    opt2.load_state_dict(sd)
    for _ in range(3):
        opt2.step(closure)
    assert torch.equal(torch.cat([p.detach().flatten() for p in model.parameters()]), straight)


def test_lr_scheduler_and_param_groups():
    model = big_model()
    opt = MeZO([{"params": model[0].parameters(), "lr": 0.0}, {"params": model[2].parameters()}], lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    frozen = model[0].weight.detach().clone()
    x = torch.randn(4, 300)
    for _ in range(2):
        opt.step(lambda: model(x).sum())
        sched.step()
    assert opt.param_groups[1]["lr"] == pytest.approx(2.5e-3)
    assert torch.equal(model[0].weight, frozen)


def test_bad_arguments_are_clear_errors():
    model = big_model()
    with pytest.raises(ValueError, match="lr"):
        MeZO(model.parameters(), lr=-1)
    with pytest.raises(ValueError, match="eps"):
        MeZO(model.parameters(), eps=0)
    with pytest.raises(ValueError, match="noise"):
        MeZO(model.parameters(), noise="uniformish")
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad"):
        MeZO(model.parameters())


def test_ctrl_c_during_update_finishes_the_step_then_interrupts():
    import os
    import signal

    class Interrupting(Sampler):
        """Dense draws that send Ctrl-C once, from inside the update pass."""
        engine, sent = None, False

        def draw(self, e, seed, t):
            if self.engine.hold.holding and not self.sent:
                self.sent = True
                os.kill(os.getpid(), signal.SIGINT)
            return None

    ref, got = big_model(), big_model()
    x = torch.randn(16, 300, generator=torch.Generator().manual_seed(1))
    # Python's own Ctrl-C handler, whatever this process inherited (a job started with nohup or `&`
    # in a script starts with SIGINT ignored, and then no KeyboardInterrupt would ever come).
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        for model, sampler in ((ref, Sampler()), (got, Interrupting())):
            opt = MeZO(model.named_parameters(), lr=1e-2, sampler=sampler)
            sampler.engine = opt.engine
            try:
                opt.step(lambda: model(x).sum())
            except KeyboardInterrupt:
                assert sampler.sent
            else:
                assert not isinstance(sampler, Interrupting)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the hold gave it back
    finally:
        signal.signal(signal.SIGINT, inherited)
    for a, b in zip(ref.parameters(), got.parameters()):  # every parameter was updated
        assert torch.equal(a, b)
