"""``zotune bench``: the cost of one training step, as ratios measured in one run.

Speed claims are checked here, never by timed assertions in tests. One process times, on the same
model and the same real training batch of one task (``--task``, SST-2 by default):

- ``forward``: one loss evaluation under no_grad (the unit everything is divided by);
- ``zotune mezo (gaussian|rademacher)``: zotune's MeZO step (functional perturbation, 3 passes);
- ``textbook mezo``: the published trainer's step (global reseed, ``torch.normal`` per tensor,
  four out-of-place passes +ε, −2ε, +ε, update; Malladi et al. 2023's ``zo_step``/``zo_update``);
- ``first-order adamw``: forward + backward + AdamW, the baseline ZO trades speed against.

Each phase starts from the same weights (restored between phases) and reports the median of
``steps`` timed steps after ``warmup`` untimed ones. On CUDA the peak allocated memory of each
phase is reported too (on a CPU the process's peak RSS cannot be split by phase).
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from zotune.models import autocast_context, load_model, resolve_device
from zotune.optim import MeZO
from zotune.tasks import encode, get_task, loss_fn


def published_noise(seed: int):
    """MeZO's own noise (Malladi et al. 2023, ``zo_perturb_parameters``): the global RNG reseeded
    with the step seed, then one ``torch.normal`` per tensor in parameter order. Returns
    ``z(name, param)``; call it once per pass, as the original reseeds once per pass."""
    torch.manual_seed(seed)
    return lambda name, p: torch.normal(mean=0, std=1, size=p.shape, device=p.device, dtype=p.dtype)


def textbook_mezo_step(named_params, closure, lr: float, eps: float, seed: int, noise=published_noise) -> float:
    """The published MeZO step: four passes that write the weights (+ε, −2ε, +ε, then the update;
    out of place, as published), each regenerating z.

    Timed by ``zotune bench`` with the published noise (which reseeds the global RNG; the caller
    restores it). Given the engine's generator as ``noise`` it is MeZO's textbook twin: the
    tests run it beside ``zotune.optim.MeZO`` and compare the weights every step.
    """
    params = [(n, p) for n, p in named_params if p.requires_grad]

    def perturb(scale):
        z = noise(seed)
        for n, p in params:
            p.data = p.data + scale * eps * z(n, p)

    with torch.no_grad():
        perturb(1)
        l1 = closure()
        perturb(-2)
        l2 = closure()
        perturb(1)
        g = ((l1 - l2) / (2 * eps)).item()
        z = noise(seed)
        for n, p in params:
            p.data = p.data - lr * g * z(n, p)
    return g


def _timed(fn: Callable[[], object], steps: int, warmup: int, device: torch.device) -> tuple[float, float | None]:
    """Median seconds of ``fn`` and, on CUDA, its peak allocated GiB."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return statistics.median(times), peak


def bench_step(model: str = "smollm2", batch_size: int = 16, steps: int = 5, warmup: int = 1,
               device: str = "auto", autocast: str | None = "bf16", max_length: int = 64,
               lr: float = 1e-7, eps: float = 1e-3, task: str = "sst2", data_dir: str | None = None) -> dict:
    """Time one step of each phase (see the module docstring); return the results as a dict."""
    if steps < 1 or warmup < 0 or batch_size < 1:
        raise ValueError("bench needs steps >= 1, warmup >= 0 and batch_size >= 1")
    the_task = get_task(task)
    examples = the_task.load("train", data_dir=data_dir)[:batch_size]  # before the model: bad data fails fast
    dev = resolve_device(device)
    net, tok = load_model(model, device=str(dev))
    batch = encode(the_task, tok, examples, max_length=max_length)
    weights = {k: v.clone() for k, v in net.state_dict().items()}

    def closure():
        with autocast_context(dev, autocast):
            return loss_fn(net, batch)

    def restore():
        net.load_state_dict(weights)

    phases: dict[str, Callable[[], object]] = {}
    phases["forward"] = lambda: torch.no_grad()(closure)()
    for noise in ("gaussian", "rademacher"):
        opt = MeZO(net.named_parameters(), lr=lr, eps=eps, noise=noise)
        phases[f"zotune mezo ({noise})"] = lambda opt=opt: opt.step(closure)
    counter = [0]

    def textbook():
        counter[0] += 1
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            textbook_mezo_step(net.named_parameters(), closure, lr, eps, seed=counter[0])

    phases["textbook mezo"] = textbook
    adamw = torch.optim.AdamW(net.parameters(), lr=lr)

    def first_order():
        adamw.zero_grad(set_to_none=True)
        with torch.enable_grad():
            closure().backward()
        adamw.step()

    phases["first-order adamw"] = first_order

    rows = {}
    for name, fn in phases.items():
        seconds, peak = _timed(fn, steps, warmup, dev)
        restore()
        rows[name] = {"seconds": seconds, "peak_gib": peak}
        if name == "first-order adamw":
            adamw.zero_grad(set_to_none=True)
            adamw.state.clear()
    fwd = rows["forward"]["seconds"]
    book = rows["textbook mezo"]["seconds"]
    for r in rows.values():
        r["x_forward"] = r["seconds"] / fwd
        r["x_textbook_mezo"] = r["seconds"] / book
    return {"model": model, "task": the_task.name, "device": str(dev), "batch_size": batch_size, "max_length": max_length,
            "autocast": autocast, "steps": steps, "trainable_parameters": sum(p.numel() for p in net.parameters()),
            "phases": rows}


def format_table(result: dict) -> str:
    head = (f"{result['model']} on {result['device']}, task {result.get('task', 'sst2')}, batch {result['batch_size']} × ≤{result['max_length']} "
            f"tokens, autocast {result['autocast']}, median of {result['steps']} steps")
    lines = [head, f"{'phase':<28}{'ms/step':>10}{'× forward':>11}{'× textbook':>12}{'peak GiB':>10}"]
    for name, r in result["phases"].items():
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        lines.append(f"{name:<28}{1000 * r['seconds']:>10.1f}{r['x_forward']:>11.2f}{r['x_textbook_mezo']:>12.2f}{peak:>10}")
    return "\n".join(lines)
