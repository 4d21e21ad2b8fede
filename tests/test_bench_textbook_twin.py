"""The textbook MeZO step that `zotune bench` times is MeZO's textbook twin (issue 7).

Given the engine's generator instead of the published global-RNG noise, `textbook_mezo_step` (four
passes that write the weights: +ε, −2ε, +ε, update) must follow `zotune.optim.MeZO` step for step.
The write-back cycle evaluates the losses at points a few ulps off the engine's (θ+εz−2εz is not θ−εz in fp32), and
the difference of losses is divided by 2ε: g agrees to G_TOL = 3e-4 absolute (about 20 ulps of a
loss of 0.3, divided by 2ε = 2e-3), and each step θ_after − θ_before = −lr·g·z agrees to the same
relative error G_TOL/|g| (plus 1e-5 for the update's own rounding), measured against the step's
largest entry as the twins in tests/reference/ do. After each step the twin is set to the engine's weights, so each comparison
is that step's own.
"""

import torch

from golden.make_golden import single_thread, tiny_problem
from reference.noise import draw, step_seed
from zotune.bench import textbook_mezo_step
from zotune.optim import MeZO

SEED, LR, EPS = 3, 1e-2, 1e-3
G_TOL = 3e-4


def engine_noise(seed):
    return lambda name, p: draw(seed, name, p.shape)


def test_bench_textbook_step_with_engine_noise_follows_mezo():
    with single_thread():
        model, closure = tiny_problem()
        twin, twin_closure = tiny_problem()  # same seeded weights and batch
        opt = MeZO(list(model.named_parameters()), lr=LR, eps=EPS, seed=SEED, noise="gaussian")
        for t in range(10):
            before = [p.detach().clone() for p in model.parameters()]
            opt.step(closure)
            g = textbook_mezo_step(twin.named_parameters(), twin_closure, LR, EPS, seed=step_seed(SEED, t),
                                   noise=engine_noise)
            assert g != 0 and abs(g - opt.last_projected_grad) <= G_TOL, (t, g, opt.last_projected_grad)
            rel = G_TOL / abs(g) + 1e-5
            with torch.no_grad():
                for (name, p), q, b in zip(model.named_parameters(), twin.parameters(), before):
                    step, twin_step = p - b, q - b
                    torch.testing.assert_close(twin_step, step, rtol=0, atol=rel * float(step.abs().max()),
                                               msg=lambda m: f"step {t}, {name}: {m}")
                    q.copy_(p)


def test_textbook_optimizer_with_engine_noise_follows_mezo(monkeypatch):
    """``--optimizer textbook-mezo`` (the study's sanity reference) runs that same step, seeded by the
    step seed as MeZO is: given the engine's noise it is MeZO's twin at the same tolerances."""
    from zotune.optim import textbook_mezo

    monkeypatch.setitem(textbook_mezo.NOISE, "gaussian", engine_noise)
    with single_thread():
        model, closure = tiny_problem()
        twin, twin_closure = tiny_problem()
        opt = MeZO(list(model.named_parameters()), lr=LR, eps=EPS, seed=SEED, noise="gaussian")
        book = textbook_mezo.TextbookMeZO(list(twin.named_parameters()), lr=LR, eps=EPS, seed=SEED)
        for t in range(10):
            before = [p.detach().clone() for p in model.parameters()]
            loss, twin_loss = opt.step(closure), book.step(twin_closure)
            g = book.last_projected_grad
            assert g != 0 and abs(g - opt.last_projected_grad) <= G_TOL, (t, g, opt.last_projected_grad)
            assert abs(float(loss) - float(twin_loss)) <= 1e-5
            rel = G_TOL / abs(g) + 1e-5
            with torch.no_grad():
                for (name, p), q, b in zip(model.named_parameters(), twin.parameters(), before):
                    torch.testing.assert_close(q - b, p - b, rtol=0, atol=rel * float((p - b).abs().max()),
                                               msg=lambda m: f"step {t}, {name}: {m}")
                    q.copy_(p)


def test_textbook_optimizer_draws_the_published_noise_and_leaves_the_global_rng_alone():
    """One step of the optimizer is ``textbook_mezo_step`` with ``published_noise`` at the step seed,
    bit for bit, and the caller's RNG stream continues as if no step had run."""
    from zotune.optim.textbook_mezo import TextbookMeZO, published_noise

    with single_thread():
        model, closure = tiny_problem()
        twin, twin_closure = tiny_problem()
        opt = TextbookMeZO(list(model.named_parameters()), lr=LR, eps=EPS, seed=SEED)
        torch.manual_seed(99)
        expected = torch.rand(3)
        torch.manual_seed(99)
        for t in range(3):
            opt.step(closure)
        assert torch.equal(torch.rand(3), expected)
        for t in range(3):
            textbook_mezo_step(twin.named_parameters(), twin_closure, LR, EPS, seed=step_seed(SEED, t),
                               noise=published_noise)
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))
        assert opt.zo_step == 3 and not opt.replayable
