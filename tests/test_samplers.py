"""Samplers as parts (issue 7): chosen by name or mapping, the presets are exactly MeZO + a
sampler, and any sampler combines with any method (stateful ones and several subsets included)."""

import pytest
import torch

from method_checks import (PROBLEMS, check_converges, check_forward_count, check_noop_and_exceptions, check_resume,
                           check_same_seed, deep_mlp, flat, params_by_block)
from zotune.optim import AdaNAGED, MeZO, ZOAdam, build_optimizer
from zotune.optim.block_zo import BlockZO
from zotune.optim.lezo import LeZO
from zotune.optim.lozo import LOZO
from zotune.optim.sparse_mezo import SparseMeZO
from zotune.optim.sparse_zo import SparseZO
from zotune.optim.subzero import SubZero
from zotune.samplers import (SAMPLERS, Blocks, LayerSubset, LowRank, MagnitudeMask, Projected, Sampler, SparseMask,
                             Subspace)


def changed_blocks(before, after):
    return sorted(k for k in before if not all(torch.equal(x, y) for x, y in zip(before[k], after[k])))


def test_sampler_by_name_mapping_or_object():
    model, _ = PROBLEMS["mlp"]()
    named = list(model.named_parameters())
    assert type(build_optimizer("zo-adam", named).sampler) is Sampler  # dense by default
    assert isinstance(build_optimizer("zo-adam", named, sampler="layers").sampler, LayerSubset)
    opt = build_optimizer("zo-adam", named, sampler={"name": "subspace", "rank": 3, "refresh_every": 7})
    assert isinstance(opt.sampler, Subspace) and (opt.sampler.rank, opt.sampler.refresh_every) == (3, 7)
    mine = SparseMask(0.5)
    assert MeZO(named, sampler=mine).sampler is mine
    assert set(SAMPLERS) == {"dense", "subspace", "projected", "lowrank", "sparse", "magnitude", "layers", "blocks"}


@pytest.mark.parametrize("spec,match", [
    ("subzero", "unknown sampler 'subzero'; choose one of"),
    ({"rank": 2}, "unknown sampler None"),
    ({"name": "subspace", "rnak": 2}, "sampler 'subspace': .*rnak"),
    ({"name": "sparse", "density": 0}, "density must be in"),
])
def test_bad_sampler_is_a_clear_error(spec, match):
    model, _ = PROBLEMS["mlp"]()
    with pytest.raises(ValueError, match=match):
        MeZO(model.named_parameters(), sampler=spec)


@pytest.mark.parametrize("sampler", [{"name": "magnitude", "sparsity": 0.5},
                                     {"name": "projected", "rank": 3, "refresh_every": 2}])
def test_new_samplers_serve_other_methods(sampler):
    """Sparse-MeZO's and ZO-Muon's draws under ZO-Adam: same seed, resume (the magnitude sampler's
    thresholds travel in ``state_dict()``; a fresh optimizer would fix them from the resumed weights)."""
    make = lambda params, seed=0: build_optimizer("zo-adam", params, lr=1e-2, seed=seed, sampler=sampler)  # noqa: E731
    check_same_seed(make)
    check_resume(make, steps=6)
    model, closure = PROBLEMS["mlp"]()
    opt = make(model.named_parameters())
    opt.step(closure)
    assert isinstance(opt.sampler, (MagnitudeMask, Projected))


def test_a_preset_fixes_its_sampler():
    model, _ = PROBLEMS["mlp"]()
    with pytest.raises(ValueError, match="SubZero fixes its sampler"):
        SubZero(model.named_parameters(), sampler="dense")


@pytest.mark.parametrize("preset,options,sampler", [
    (SubZero, dict(rank=2, refresh_every=3), Subspace(2, 3)),
    (LOZO, dict(rank=2, refresh_every=3), LowRank(2, 3)),
    (SparseZO, dict(density=0.5, resample_every=2), SparseMask(0.5, 2)),
    (SparseMeZO, dict(sparsity=0.6), MagnitudeMask(0.6)),
    (LeZO, dict(sparsity=0.5), LayerSubset(0.5)),
    (BlockZO, dict(blocks_per_step=2, order="random"), Blocks(2, "random")),
], ids=lambda x: getattr(x, "__name__", None) if isinstance(x, type) else "")
def test_preset_is_mezo_with_its_sampler(preset, options, sampler):
    """Bit for bit: the named preset and MeZO given the same sampler take the same steps."""
    runs = []
    for make in (lambda p: preset(p, lr=0.02, noise="rademacher", **options),
                 lambda p: MeZO(p, lr=0.02, noise="rademacher", sampler=sampler)):
        model, closure = deep_mlp()
        opt = make(model.named_parameters())
        for _ in range(6):
            opt.step(closure)
        runs.append(flat(model))
    assert torch.equal(runs[0], runs[1])


def test_zo_adam_with_subspace_draws():
    """ZO-Adam's first moment after one step is (1 − β₁)·g·Z with Z of rank ≤ r on the matrix;
    the combination passes the shared checks and trains."""
    r = 2
    model, closure = PROBLEMS["mlp"]()
    opt = ZOAdam(model.named_parameters(), lr=1e-2, sampler=Subspace(r, 5))
    opt.step(closure)
    m = opt.state[model[0].weight]["exp_avg"]  # the 16×8 matrix
    assert m.abs().sum() > 0 and torch.linalg.matrix_rank(m).item() <= r

    def make(params, seed=0, **kw):
        return ZOAdam(params, lr=1e-2, seed=seed, sampler=Subspace(r, 5), **kw)

    check_same_seed(make)
    check_resume(make)
    check_forward_count(make)
    check_converges(lambda p: ZOAdam(p, lr=5e-2, sampler=Subspace(r, 10)), "least_squares", 200, 0.1)


def test_adanaged_with_layer_subsets_moves_only_the_chosen_layers():
    model, closure = deep_mlp()
    opt = AdaNAGED(model.named_parameters(), sampler=LayerSubset(0.5))
    seen = set()
    for _ in range(5):
        chosen = sorted(opt.sampler.labels(opt.current_step()))
        before = params_by_block(model)
        opt.step(closure)
        assert changed_blocks(before, params_by_block(model)) == chosen
        seen.add(tuple(chosen))
    assert len(seen) > 1

    def make(params, seed=0, **kw):
        return AdaNAGED(params, seed=seed, sampler=LayerSubset(0.5), momentum_state="seeds", **kw)

    check_same_seed(make)
    check_resume(make, steps=8)  # the seeded momentum remembers which layers each step covered


@pytest.mark.parametrize("name", ["helene", "zo-sgd-cons", "mezo-gv", "mezo-greedy", "forward-grad", "zo-sgd-sign"])
def test_methods_with_block_wise_estimates(name):
    """Several subsets per step (each block its own estimate) with methods that are not MeZO:
    stated forward passes, seeded replay, resume, no-op at lr 0 and exception safety hold."""
    lr = {"helene": 1e-3}.get(name, 1e-2)
    blocks = dict(blocks_per_step=2, order="random")

    def make(params, seed=0, lr=lr, **kw):
        return build_optimizer(name, params, lr=lr, seed=seed, sampler=Blocks(**blocks), **kw)

    check_forward_count(make)
    check_same_seed(make)
    check_resume(make)
    check_noop_and_exceptions(lambda p: make(p, lr=0.0), make)


def test_block_wise_zo_adam_updates_only_the_visited_blocks():
    model, closure = deep_mlp()
    opt = ZOAdam(model.named_parameters(), lr=1e-2, sampler=Blocks(2, "cyclic"))
    assert opt.forward_passes == 4
    for _ in range(3):
        visited = sorted(opt.sampler.labels(opt.current_step()))
        before = params_by_block(model)
        opt.step(closure)
        assert changed_blocks(before, params_by_block(model)) == visited
    assert len(opt.state) == 6 * 2  # weights and biases of all six layers, created as they were visited


def test_check_args_needs_no_parameters():
    """What the trainer can call before loading a model: the same errors build_optimizer gives."""
    from zotune.optim import check_args

    assert check_args("forward-grad", {"lr": 1e-3, "eps": None}) == {"lr": 1e-3}
    with pytest.raises(ValueError, match=r"'forward-grad' does not take \['eps'\]"):
        check_args("forward-grad", {"eps": 1e-3})
    with pytest.raises(ValueError, match="unknown optimizer"):
        check_args("mezzo", {})


def test_cached_subspace_bases_are_the_regenerated_ones():
    """Subspace's cache changes no number: the bases and the draws equal those of a sampler that
    regenerates them; at most two periods are held, Σ r·(m + n)·4 bytes each."""
    from zotune.engine import Step
    from zotune.perturb import Perturbed

    params = [Perturbed(torch.randn(12, 9), key=k, name=f"w{k}", index=k) for k in (1, 2)]
    cached = Subspace(rank=3, refresh_every=2).bind(params, "gaussian")
    fresh = Subspace(rank=3, refresh_every=2, cache_bases=False).bind(params, "gaussian")
    for index in range(7):
        t = Step(5, index)
        for e in params:
            for a, b in zip(cached.basis(e, t), fresh.basis(e, t)):
                assert torch.equal(a, b)
            assert torch.equal(cached.draw(e, 11, t), fresh.draw(e, 11, t))
    assert len(cached.cached) == 2 and fresh.cached == {}
    assert cached.cache_bytes() == 2 * 2 * 3 * (12 + 9) * 4
