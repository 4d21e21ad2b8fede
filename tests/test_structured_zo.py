"""Structured-direction methods: SubZero, LOZO (low rank), LeZO (layer subsets), SparseZO
(masks), BlockZO (per-block estimates). Shared checks from method_checks plus each method's
defining property."""

import pytest
import torch
from method_checks import (PROBLEMS, check_converges, check_forward_count, check_noop_and_exceptions, check_resume,
                           check_same_seed, check_state_bytes, deep_mlp, params_by_block)

from zotune.optim.block_zo import BlockZO
from zotune.optim.lezo import LeZO
from zotune.optim.lozo import LOZO
from zotune.optim.sparse_zo import SparseZO
from zotune.optim.subzero import SubZero
from zotune.rng import mix
from zotune.samplers import block_label

# method -> (class, options, lr for the convergence checks, {problem: (steps, factor)})
# Small problems: rank 2 (the MLP's 16×8 and 1×16 matrices), periods short enough to refresh.
C = {"least_squares": (200, 0.01), "mlp": (150, 0.4)}  # (steps, factor) for the convergence checks
METHODS = {
    "subzero": (SubZero, dict(rank=2, refresh_every=10), 0.02, C),
    "lozo": (LOZO, dict(rank=2, refresh_every=10), 0.01, C),  # E‖UVᵀ‖² = r·mn: half MeZO's lr
    "lezo": (LeZO, dict(sparsity=0.5), 0.02, C),
    "sparse-zo": (SparseZO, dict(density=0.5, resample_every=5), 0.05, C),
    "block-zo": (BlockZO, dict(), 0.02, C),
}


def factory(name, lr=None, **extra):
    cls, opts, default_lr, _ = METHODS[name]
    return lambda params, **kw: cls(params, lr=default_lr if lr is None else lr, eps=1e-3, **opts, **extra, **kw)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("problem", ["least_squares", "mlp"])
def test_converges(name, problem):
    steps, factor = METHODS[name][3][problem]
    check_converges(factory(name), problem, steps, factor)


@pytest.mark.parametrize("name", METHODS)
def test_shared_checks(name):
    make = factory(name)
    check_same_seed(make)
    check_resume(make, steps=8)
    check_forward_count(make)
    check_noop_and_exceptions(factory(name, lr=0.0), make)
    check_state_bytes(make, 0)


@pytest.mark.parametrize("cls", [SubZero, LOZO, LeZO, SparseZO, BlockZO])
def test_bad_hyperparameters(cls):
    model, _ = PROBLEMS["mlp"]()
    bad = {SubZero: dict(rank=0), LOZO: dict(refresh_every=0), LeZO: dict(sparsity=1.0),
           SparseZO: dict(density=0.0), BlockZO: dict(order="backwards")}[cls]
    with pytest.raises(ValueError):
        cls(model.named_parameters(), **bad)
    with pytest.raises(ValueError):
        cls(model.named_parameters()).step(None)


# ------------------------------------------------------------------------------- low rank
def matrix_entry(cls, m=40, n=30, **opts):
    layer = torch.nn.Linear(n, m, bias=False)
    opt = cls(layer.named_parameters(), **opts)
    return opt, opt.trainable(opt.param_groups[0])[0]


def test_subzero_rank_and_second_moment():
    """rank(Z) ≤ r; E‖Z‖²_F = mn (the dense second moment): mean over 500 seeds within 5%
    (one sample's relative std is √2/r ≈ 0.18, so the mean's is ≈ 0.8%)."""
    r = 8
    opt, e = matrix_entry(SubZero, rank=r, refresh_every=50)
    norms = []
    for s in range(500):
        opt.zo_step = s  # new U, V every refresh_every steps too
        z = opt.sampler.draw(e, mix(7, s), opt.current_step())
        if s < 20:
            assert torch.linalg.matrix_rank(z).item() <= r
        norms.append(z.square().sum().item())
    mean = sum(norms) / len(norms)
    assert abs(mean / (40 * 30) - 1) < 0.05, mean


def test_subzero_subspace_fixed_within_period_then_refreshed():
    r, period = 3, 5
    opt, e = matrix_entry(SubZero, rank=r, refresh_every=period)
    a = opt.sampler.draw(e, 1, opt.current_step())
    opt.zo_step = period - 1
    b = opt.sampler.draw(e, 2, opt.current_step())
    assert torch.linalg.matrix_rank(torch.cat([a, b], 1)).item() == r  # same column space
    opt.zo_step = period
    c = opt.sampler.draw(e, 2, opt.current_step())
    assert torch.linalg.matrix_rank(torch.cat([a, c], 1)).item() == 2 * r  # new subspace


def test_lozo_rank_lazy_factor_and_second_moment():
    """rank(UVᵀ) ≤ r; V (the row space) is kept for ν steps; E‖UVᵀ‖² = m·n·r (unscaled)."""
    r, period = 2, 4
    opt, e = matrix_entry(LOZO, rank=r, refresh_every=period)
    a, b = opt.sampler.draw(e, 1, opt.current_step()), opt.sampler.draw(e, 2, opt.current_step())
    assert torch.linalg.matrix_rank(a).item() <= r
    assert torch.linalg.matrix_rank(torch.cat([a, b], 0)).item() == r  # same V
    opt.zo_step = period
    c = opt.sampler.draw(e, 1, opt.current_step())
    assert torch.linalg.matrix_rank(torch.cat([a, c], 0)).item() == 2 * r
    norms = []
    for s in range(400):
        opt.zo_step = s * period  # new V too, so the average is over both factors
        norms.append(opt.sampler.draw(e, mix(3, s), opt.current_step()).square().sum().item())
    assert abs(sum(norms) / len(norms) / (40 * 30 * r) - 1) < 0.1


def test_dense_stream_for_vectors_and_thin_matrices():
    """Low rank only where rank < min(m, n): the MLP's 16×8 weight; its 1×16 weight and biases
    take the dense stream."""
    for cls in (SubZero, LOZO):
        model, _ = PROBLEMS["mlp"]()
        opt = cls(model.named_parameters(), rank=2)
        t = opt.current_step()
        dense = {tuple(e.param.shape): opt.sampler.draw(e, 5, t) is None for e in opt.trainable(opt.param_groups[0])}
        assert dense == {(16, 8): False, (16,): True, (1, 16): True, (1,): True}


# ------------------------------------------------------------------------------- layer subsets
def test_block_label():
    assert block_label("model.layers.7.self_attn.q_proj.weight") == "model.layers.7"
    assert block_label("model.embed_tokens.weight") == "model.embed_tokens"
    assert block_label("lm_head.weight") == "lm_head"
    assert block_label("weight") == ""


def test_lezo_updates_only_the_chosen_layers_and_the_choice_moves():
    model, closure = deep_mlp()
    opt = LeZO(model.named_parameters(), lr=0.05, sparsity=0.5)
    assert len(opt.sampler.blocks) == 6 and opt.sampler.blocks_per_step == 3
    seen = set()
    for _ in range(5):
        chosen = opt.sampler.labels(opt.current_step())
        before = params_by_block(model)
        opt.step(closure)
        after = params_by_block(model)
        for label in before:
            same = all(torch.equal(x, y) for x, y in zip(before[label], after[label]))
            assert same == (label not in chosen), (label, chosen)
        seen.add(tuple(chosen))
    assert len(seen) > 1, "the same layers were chosen at every step"


# ------------------------------------------------------------------------------- masks
def test_sparse_zo_masked_coordinates_stay_within_a_period():
    period = 4
    model, closure = PROBLEMS["mlp"]()
    opt = SparseZO(model.named_parameters(), lr=0.05, density=0.3, resample_every=period)
    entries = opt.trainable(opt.param_groups[0])
    for start in (0, period):  # two mask periods
        masks = [opt.sampler.mask(e, opt.current_step()) for e in entries]
        before = [e.param.detach().clone() for e in entries]
        for _ in range(period):
            opt.step(closure)
        for e, m, b in zip(entries, masks, before):
            assert torch.equal(e.param[~m], b[~m])
            assert not torch.equal(e.param[m], b[m]) or m.sum() == 0
    kept = torch.cat([m.flatten() for m in masks]).float().mean().item()
    assert 0.2 < kept < 0.4, kept


def test_sparse_zo_mask_changes_with_the_period():
    model, _ = PROBLEMS["mlp"]()
    opt = SparseZO(model.named_parameters(), density=0.5, resample_every=3)
    e = opt.trainable(opt.param_groups[0])[0]
    first = opt.sampler.mask(e, opt.current_step())
    opt.zo_step = 2
    assert torch.equal(opt.sampler.mask(e, opt.current_step()), first)
    opt.zo_step = 3
    assert not torch.equal(opt.sampler.mask(e, opt.current_step()), first)


# ------------------------------------------------------------------------------- blocks
def test_block_zo_updates_each_block_with_its_own_estimate():
    """θ_b moves by −lr·g_b·z_b, g_b the two-point estimate with only block b perturbed."""
    lr, eps = 0.05, 1e-3
    model, closure = PROBLEMS["mlp"]()
    opt = BlockZO(model.named_parameters(), lr=lr, eps=eps)
    seed = opt.step_seed()
    entries = {id(e.param): e for e in opt.trainable(opt.param_groups[0])}
    z = {pid: opt.engine.tensor(e, seed) for pid, e in entries.items()}
    before = {pid: e.param.detach().clone() for pid, e in entries.items()}
    expected = {}
    for _, ids in opt.sampler.blocks:  # reference estimate: perturb the block's weights by hand
        losses = []
        for sign in (1, -1):
            with torch.no_grad():
                for pid in ids:
                    entries[pid].param.add_(sign * eps * z[pid])
                losses.append(closure().item())
                for pid in ids:
                    entries[pid].param.copy_(before[pid])
        g = (losses[0] - losses[1]) / (2 * eps)
        expected.update({pid: before[pid] - lr * g * z[pid] for pid in ids})
    opt.step(closure)
    for pid, e in entries.items():
        torch.testing.assert_close(e.param.detach(), expected[pid], rtol=1e-3, atol=1e-5)


def test_block_zo_one_block_per_step_cycles():
    model, closure = deep_mlp()
    opt = BlockZO(model.named_parameters(), lr=0.05, blocks_per_step=2, order="cyclic")
    assert opt.forward_passes == 4
    visited = []
    for _ in range(3):
        visited += opt.sampler.labels(opt.current_step())
        before = params_by_block(model)
        opt.step(closure)
        after = params_by_block(model)
        changed = [k for k in before if not all(torch.equal(x, y) for x, y in zip(before[k], after[k]))]
        assert changed == visited[-2:]
    assert visited == [str(i) for i in range(6)]
    rnd = BlockZO(model.named_parameters(), blocks_per_step=1, order="random")
    picks = set()
    for t in range(8):
        rnd.zo_step = t
        picks.add(tuple(rnd.sampler.labels(rnd.current_step())))
    assert len(picks) > 1
