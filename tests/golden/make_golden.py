"""Golden weights: every ZO method's parameters after 20 seeded steps on a tiny model.

Why: issue 7 restructures the engine and promises the same weights, bit for bit, unless a change
is a deliberate fix. This file records them from the code as it was before the restructuring and
``tests/test_golden_weights.py`` replays the same cases on the current code.

Only the public API is used (``optimizer_class(name)(named_params, **kwargs)``, ``step(closure)``),
so the cases survive a rewrite of the engine's internals.

Regenerate only on purpose, from the code whose behaviour the file should pin, and say why in the
commit. History: first recorded from the pre-refactor engine at 0cf51b7 (issue 7: the restructuring
kept every method's weights bit for bit); re-recorded when issue 9 replaced the segmented
Mersenne-Twister noise by Philox4x32-10 (a deliberate change of every draw; the update rules are
unchanged, which tests/test_reference_twins.py shows step by step); re-recorded when issue 14 gave
HELENE Sophia's per-coordinate clip (only the ``helene`` case changed; every other case bit-identical):

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python tests/golden/make_golden.py --expect-root .
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
from pathlib import Path

import torch

import zotune
from zotune.optim import OPTIMIZERS, optimizer_class

GOLDEN_FILE = Path(__file__).with_name("golden_weights.pt")
STEPS = 20
SEED = 1234

# name -> (method, constructor kwargs, parameter dtype). One case per ZO method with its defaults
# plus an lr (and eps where it has one) large enough that 20 steps move every method visibly on
# the tiny model; a few more cases pin engine features the restructuring touches.
CASES: dict[str, tuple[str, dict, torch.dtype]] = {
    "mezo": ("mezo", dict(lr=1e-2, eps=1e-3), torch.float32),
    "zo-sgd-sign": ("zo-sgd-sign", dict(lr=1e-3, eps=1e-3), torch.float32),
    "zo-sgd-momentum": ("zo-sgd-momentum", dict(lr=1e-3, eps=1e-3), torch.float32),
    "zo-sgd-cons": ("zo-sgd-cons", dict(lr=1e-2, eps=1e-3), torch.float32),
    "zo-adam": ("zo-adam", dict(lr=1e-3, eps=1e-3), torch.float32),
    "forward-grad": ("forward-grad", dict(lr=1e-2), torch.float32),
    "subzero": ("subzero", dict(lr=1e-2, eps=1e-3), torch.float32),  # rank 24 > 16: dense, as MeZO
    "lozo": ("lozo", dict(lr=1e-2, eps=1e-3), torch.float32),
    "lezo": ("lezo", dict(lr=1e-2, eps=1e-3), torch.float32),
    "sparse-zo": ("sparse-zo", dict(lr=1e-2, eps=1e-3), torch.float32),
    "block-zo": ("block-zo", dict(lr=1e-2, eps=1e-3), torch.float32),
    "hybrid-zo": ("hybrid-zo", dict(lr=1e-2, eps=1e-3), torch.float32),
    "helene": ("helene", dict(lr=1e-3, eps=1e-3), torch.float32),
    "mezo-gv": ("mezo-gv", dict(lr=1e-2, eps=1e-3), torch.float32),
    "mezo-greedy": ("mezo-greedy", dict(lr=1e-2, eps=1e-3), torch.float32),
    "adanaged": ("adanaged", dict(), torch.float32),
    "fzoo": ("fzoo", dict(lr=1e-2, eps=1e-3), torch.float32),
    "zo-muon": ("zo-muon", dict(lr=1e-2, eps=1e-3, rank=4, dense_lr=1e-2), torch.float32),  # 16×16 at rank 4
    "sparse-mezo": ("sparse-mezo", dict(lr=1e-2, eps=1e-3), torch.float32),
    "mezo-svrg": ("mezo-svrg", dict(lr=1e-2, eps=1e-3), torch.float32),
    # engine features: n-SPSA with Rademacher noise, AdaZeta's schedule, weight decay, refreshes
    # inside the 20 steps, the other options of the pool / sign / AdaNAGED methods
    "mezo-n3-rademacher": ("mezo", dict(lr=1e-2, eps=1e-3, num_directions=3, noise="rademacher"), torch.float32),
    "mezo-query-schedule": ("mezo", dict(lr=1e-2, eps=1e-3, query_schedule=(1.0, 0.5, 3)), torch.float32),
    "zo-adam-wd-n2": ("zo-adam", dict(lr=1e-3, eps=1e-3, weight_decay=0.1, num_directions=2), torch.float32),
    "subzero-refresh": ("subzero", dict(lr=1e-2, eps=1e-3, rank=3, refresh_every=4), torch.float32),
    "lozo-refresh": ("lozo", dict(lr=1e-2, eps=1e-3, rank=2, refresh_every=4), torch.float32),
    "sparse-zo-resample": ("sparse-zo", dict(lr=1e-2, eps=1e-3, density=0.5, resample_every=3), torch.float32),
    "block-zo-random": ("block-zo", dict(lr=1e-2, eps=1e-3, blocks_per_step=2, order="random"), torch.float32),
    "zo-sgd-sign-coordinatewise": ("zo-sgd-sign", dict(lr=1e-3, eps=1e-3, coordinatewise=True), torch.float32),
    "mezo-greedy-central": ("mezo-greedy", dict(lr=1e-2, eps=1e-3, pool_size=3, central=True), torch.float32),
    "adanaged-seeds-bound": ("adanaged", dict(momentum_state="seeds", distance="bound", history=4), torch.float32),
    # half precision: stochastic rounding (the rounding stream) and fp32 master weights
    "mezo-bf16-rounding": ("mezo", dict(lr=1e-2, eps=1e-2), torch.bfloat16),
    "mezo-bf16-master": ("mezo", dict(lr=1e-2, eps=1e-2, master_weights=True), torch.bfloat16),
    "zo-adam-bf16-rounding": ("zo-adam", dict(lr=1e-3, eps=1e-2), torch.bfloat16),
}


class Linear64(torch.nn.Linear):
    """A Linear computed in float64 (its weights read exactly, inside its own forward). Why: a float32
    matmul's rounding depends on the CPU's vector ISA (AVX2 and AVX-512 machines give different last
    bits), which would make recorded weights machine-specific; in float64 those differences stay
    far below the float32 rounding of the loss the optimizers see."""

    def forward(self, x):
        return torch.nn.functional.linear(x, self.weight.double(), self.bias.double())


class LayerNorm64(torch.nn.LayerNorm):
    def forward(self, x):
        return torch.nn.functional.layer_norm(x, self.normalized_shape, self.weight.double(), self.bias.double(),
                                              self.eps)


class TinyNet(torch.nn.Module):
    """8 → 16 → 16 → 1 tanh MLP with a final LayerNorm, computed in float64 whatever its weights' dtype:
    numbered layer blocks (LeZO, BlockZO), matrices (SubZero, LOZO, AdaNAGED's spectral LMO), vectors,
    and a ``norm``/``lm_head`` that HybridZO's default pattern trains by backprop. 465 parameters."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList([Linear64(8, 16), Linear64(16, 16)])
        self.norm = LayerNorm64(16)
        self.lm_head = Linear64(16, 1)

    def forward(self, x):
        x = x.double()
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.lm_head(self.norm(x))


def tiny_problem(dtype: torch.dtype = torch.float32):
    """(model, closure): TinyNet with seeded weights fitting a smooth target on a fixed batch."""
    g = torch.Generator().manual_seed(0)
    model = TinyNet()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.4)
    model.to(dtype)
    x = torch.randn(64, 8, generator=g)
    y = torch.sin(x[:, :1]) + 0.5 * x[:, 1:2] * x[:, 2:3]

    def closure():
        return ((model(x) - y.double()) ** 2).mean().float()

    return model, closure


def run_case(case: str, steps: int = STEPS):
    """Weights {name: tensor} after ``steps`` steps of ``case`` and the losses step() returned."""
    method, kwargs, dtype = CASES[case]
    model, closure = tiny_problem(dtype)
    opt = optimizer_class(method)(list(model.named_parameters()), seed=SEED, **kwargs)
    losses = [float(opt.step(closure)) for _ in range(steps)]
    return {n: p.detach().clone() for n, p in model.named_parameters()}, losses


@contextlib.contextmanager
def single_thread():
    """One torch thread: a matmul's summation order may depend on the thread count, and the
    recording and the replays must sum alike."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def fingerprint(t: torch.Tensor) -> str:
    """sha256 of the tensor's exact bytes (dtype and shape included)."""
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def zo_methods() -> list[str]:
    """zotune's zeroth-order methods: not the textbook reference they are checked against."""
    from zotune.optim import optimizer_class

    return sorted(n for n, (_, _, zo) in OPTIMIZERS.items() if zo and not getattr(optimizer_class(n), "reference", False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expect-root", help="fail unless zotune is imported from this directory")
    args = parser.parse_args()
    root = Path(zotune.__file__).resolve().parent.parent
    if args.expect_root and root != Path(args.expect_root).resolve():
        raise SystemExit(f"zotune imported from {root}, not {args.expect_root}: set PYTHONPATH")
    missing = sorted(set(zo_methods()) - {m for m, _, _ in CASES.values()})
    if missing:
        raise SystemExit(f"no golden case for {missing}")
    record = {"source": str(root), "steps": STEPS, "seed": SEED, "cases": {}}
    for case in CASES:
        with single_thread():
            weights, losses = run_case(case)
        start, _ = tiny_problem(CASES[case][2])
        moved = max((weights[n].float() - p.detach().float()).abs().max().item() for n, p in start.named_parameters())
        record["cases"][case] = {"weights": weights, "losses": losses,
                                 "sha256": {n: fingerprint(t) for n, t in weights.items()}}
        print(f"{case:28s} loss {losses[0]:.5f} -> {losses[-1]:.5f}   max |Δθ| {moved:.3g}")
    torch.save(record, GOLDEN_FILE)
    print(f"wrote {GOLDEN_FILE} ({GOLDEN_FILE.stat().st_size} bytes) from zotune at {root}")


if __name__ == "__main__":
    main()
