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
