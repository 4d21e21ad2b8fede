"""``zotune bench``: what a step and a noise pass cost, as ratios measured in one run.

Speed claims are checked here, never by timed assertions in tests.

``zotune bench step`` times, on one model and one batch (random tokens of ``--batch`` × ``--seq``,
or a real training batch of ``--task``), one step of each phase:

- ``forward``: one loss evaluation under no_grad (the unit everything is divided by);
- each ``--methods`` entry: zotune's step of that method, with its options (``NAME:KEY=VALUE``; default: MeZO);
- ``textbook mezo``: the published trainer's step (global reseed, ``torch.normal`` per tensor,
  four out-of-place passes +ε, −2ε, +ε, update; Malladi et al. 2023's ``zo_step``/``zo_update``);
- ``first-order adamw``: forward + backward + AdamW, the baseline ZO trades speed against.

Each phase starts from the same weights and reports the median of ``steps`` timed steps after
``warmup`` untimed ones, with the ratios step/forward and step/textbook, and its peak memory: CUDA's
max allocated bytes, or on a CPU (``--memory``) the peak RSS of a subprocess that runs that phase
alone (the peak mark reset after the model is loaded, on Linux), with peak/inference-peak (the
``forward`` phase's). ``--model`` takes any model spec or a
named architecture with random weights (``zotune.architectures``: ``opt-1.3b`` …), so a GPU run
needs no downloaded weights.

``zotune bench noise`` times one pass of each way of drawing noise over ``--numel`` elements
against the measured copy bandwidth (``dst.copy_(src)``, the floor of any pass).
"""

from __future__ import annotations

import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch

from zotune.models import autocast_context, load_model, resolve_device
from zotune.optim import OPTIMIZERS, build_optimizer, optimizer_class
from zotune.optim.textbook_mezo import published_noise, textbook_mezo_step  # noqa: F401 (kept importable from here)
from zotune.tasks import encode, get_task, loss_fn


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


def split_top_level(text: str, sep: str) -> list[str]:
    """``text`` split at each ``sep`` outside braces and brackets (YAML values keep their own)."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += (ch in "{[") - (ch in "}]")
        if ch == sep and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [*parts, current]


def split_methods(text: str) -> tuple[str, ...]:
    """``--methods`` split at the commas outside braces: ``mezo,adanaged:sampler={name: subspace, rank: 64}``
    is two entries."""
    return tuple(e.strip() for e in split_top_level(text, ",") if e.strip())


def method_entry(entry: str) -> tuple[str, dict]:
    """(optimizer name, options) of one ``--methods`` entry ``NAME[:KEY=VALUE]...`` (values are YAML,
    as for ``--opt``): ``adanaged:sampler=dense:geometry=sign`` times AdaNAGED's dense sign
    configuration. A phase is named by its whole entry."""
    import yaml

    name, *options = split_top_level(entry, ":")
    parsed = {}
    for option in options:
        if "=" not in option:
            raise ValueError(f"--methods entry {entry!r}: expected NAME:KEY=VALUE, got {option!r}")
        key, value = option.split("=", 1)
        parsed[key.strip()] = yaml.safe_load(value)
    optimizer_class(name.strip())  # an unknown method fails before the model loads
    return name.strip(), parsed


def _method_args(method: str, lr: float, eps: float) -> dict:
    """A tiny lr (and eps) for the methods that take them: the bench times steps, it does not train."""
    accepted = inspect.signature(optimizer_class(method).__init__).parameters
    return {k: v for k, v in (("lr", lr), ("eps", eps)) if k in accepted}


def bench_model(spec: str, dtype: str, device: torch.device):
    """(model, tokenizer or None): a named random architecture, or any model spec zotune loads."""
    from zotune.architectures import ARCHITECTURES, random_model

    if spec in ARCHITECTURES:
        return random_model(spec, dtype=dtype, device=str(device)), None
    return load_model(spec, dtype=dtype, device=str(device))


def make_batch(net, tokenizer, batch_size: int, seq: int, task: str | None, data_dir: str | None, device):
    """A real training batch of ``task`` (prompts up to ``seq`` tokens), or seeded random tokens of
    ``batch_size`` × ``seq`` with the language-model loss on every position."""
    if task is not None:
        if tokenizer is None:
            raise ValueError("--task needs a model with a tokenizer; a random architecture takes random tokens")
        the_task = get_task(task)
        examples = the_task.load("train", data_dir=data_dir)[:batch_size]
        return encode(the_task, tokenizer, examples, max_length=seq), loss_fn
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, int(net.config.vocab_size), (batch_size, seq), generator=g).to(device)

    def lm_loss(model, batch):
        return model(input_ids=batch, labels=batch).loss

    return ids, lm_loss


PHASES_FIXED = ("forward", "textbook mezo", "first-order adamw")


def phase_fn(name: str, net, closure, device, lr: float, eps: float, noise: str) -> Callable[[], object]:
    """The callable one step of phase ``name`` is (a method name, or one of ``PHASES_FIXED``)."""
    if name == "forward":
        return lambda: torch.no_grad()(closure)()
    if name == "textbook mezo":
        counter = [0]

        def textbook():
            counter[0] += 1
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                textbook_mezo_step(net.named_parameters(), closure, lr, eps, seed=counter[0])

        return textbook
    if name == "first-order adamw":
        return _first_order(torch.optim.AdamW(net.parameters(), lr=lr), closure)
    method, options = method_entry(name)
    zeroth_order = OPTIMIZERS[method][2]
    opt = build_optimizer(method, list(net.named_parameters()), **_method_args(method, lr, eps),
                          **({"noise": noise} if zeroth_order else {}), **options)
    fn = (lambda: opt.step(closure)) if zeroth_order else _first_order(opt, closure)
    fn.optimizer = opt  # its state_bytes() go into the phase's row
    return fn


def _first_order(opt, closure) -> Callable[[], None]:
    """One backprop step: zero the gradients, forward + backward, update."""
    def step():
        opt.zero_grad(set_to_none=True)
        with torch.enable_grad():
            closure().backward()
        opt.step()

    return step


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux ≥ 4.0: ``5`` into clear_refs), so the
    peak read after a phase is the phase's, not the model load's (a GGUF load peaks far higher)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_gib() -> float:
    """The process's peak RSS since the last reset (VmHWM), else since it started (ru_maxrss)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (rss / 2**30) if sys.platform == "darwin" else rss / 2**20


def bench_step(model: str = "smollm2", batch_size: int = 16, seq: int = 64, dtype: str = "fp32",
               methods: tuple[str, ...] = ("mezo",), device: str = "auto", autocast: str | None = "bf16",
               steps: int = 5, warmup: int = 1, lr: float = 1e-7, eps: float = 1e-3, noise: str = "rademacher",
               task: str | None = None, data_dir: str | None = None, memory: bool = False,
               only: str | None = None) -> dict:
    """Time one step of each phase (see the module docstring); return the results as a dict.
    ``only``: run that single phase (the subprocess a CPU memory measurement uses)."""
    if steps < 1 or warmup < 0 or batch_size < 1 or seq < 2:
        raise ValueError("bench needs --steps >= 1, --warmup >= 0, --batch >= 1 and --seq >= 2")
    for m in methods:
        method_entry(m)  # an unknown method or a malformed entry fails before the model loads
    dev = resolve_device(device)
    net, tok = bench_model(model, dtype, dev)
    batch, loss = make_batch(net, tok, batch_size, seq, task, data_dir, dev)
    for p in net.parameters():
        p.requires_grad_(True)

    def closure():
        with autocast_context(dev, autocast):
            return loss(net, batch)

    names = [only] if only else ["forward", *methods, "textbook mezo", "first-order adamw"]
    if only and dev.type != "cuda":
        import gc

        gc.collect()
        _reset_peak_rss()
    weights = {k: v.clone() for k, v in net.state_dict().items()} if len(names) > 1 else None
    rows = {}
    for name in names:
        fn = phase_fn(name, net, closure, dev, lr, eps, noise)
        seconds, peak = _timed(fn, steps, warmup, dev)
        if weights is not None:
            net.load_state_dict(weights)
        rows[name] = {"phase": name, "ms": 1000 * seconds, "peak_gib": peak,
                      "peak_kind": "cuda_max_allocated" if peak is not None else None}
        if hasattr(getattr(fn, "optimizer", None), "state_bytes"):
            rows[name]["state_bytes"] = fn.optimizer.state_bytes()  # optimizer state kept between steps
        del fn
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    if only:
        if dev.type != "cuda":
            rows[only].update(peak_gib=_peak_rss_gib(), peak_kind="max_rss")
        return rows[only]
    if memory and dev.type != "cuda":
        args = dict(model=model, batch_size=batch_size, seq=seq, dtype=dtype, methods=list(methods), device=device,
                    autocast=autocast, steps=1, warmup=1, lr=lr, eps=eps, noise=noise, task=task, data_dir=data_dir)
        for name in names:
            child = subprocess.run([sys.executable, "-m", "zotune.bench", json.dumps({**args, "only": name})],
                                   capture_output=True, text=True, env={**os.environ})
            if child.returncode != 0:
                raise RuntimeError(f"memory subprocess for phase {name!r} failed:\n{child.stderr[-2000:]}")
            rows[name].update(peak_gib=json.loads(child.stdout.strip().splitlines()[-1])["peak_gib"],
                              peak_kind="max_rss (one process per phase)")
    fwd, book = rows["forward"]["ms"], rows["textbook mezo"]["ms"]
    inference_peak = rows["forward"]["peak_gib"]
    for r in rows.values():
        r["x_forward"] = r["ms"] / fwd
        r["x_textbook_mezo"] = r["ms"] / book
        r["x_inference_peak"] = (r["peak_gib"] / inference_peak) if r["peak_gib"] and inference_peak else None
    return {"model": model, "task": task, "device": str(dev), "dtype": dtype, "batch_size": batch_size, "seq": seq,
            "autocast": autocast, "noise": noise, "steps": steps,
            "parameters": sum(p.numel() for p in net.parameters()), "phases": rows}


def bench_noise(numel: int = 1 << 24, device: str = "auto", steps: int = 5, warmup: int = 1) -> dict:
    """ns per element of one pass of each noise source over ``numel`` fp32 elements, against the
    copy floor: the engine's generator (each kind; what every ZO step draws), torch's global-RNG
    ``randn_``/``rand_`` (the textbook trainer's), and the perturbed-copy pass θ + ε·z the engine
    builds for every perturbed forward."""
    from zotune.passes import perturbed_copy
    from zotune.rng import DIRECTION, GENERATOR, CounterRNG

    dev = resolve_device(device)
    src = torch.randn(numel, device=dev)
    dst = torch.empty_like(src)
    rng = CounterRNG()
    rows = {"copy (floor)": lambda: dst.copy_(src)}
    for kind in ("gaussian", "rademacher", "uniform"):
        rows[f"zotune {kind}"] = lambda kind=kind: rng.fill(dst, 1234, 5678, 0, numel, kind, DIRECTION)
    rows["torch randn_ (global RNG)"] = lambda: dst.normal_()
    rows["torch rand_ (global RNG)"] = lambda: dst.uniform_()
    chunk = 1 << 20
    buf = torch.empty(min(chunk, numel), device=dev)
    for kind in ("gaussian", "rademacher"):
        def pass_(kind=kind):  # as the engine does it: z drawn chunk by chunk into a reused buffer
            perturbed_copy(src, lambda a, b: rng.fill(buf[: b - a], 1234, 5678, a, numel, kind, DIRECTION),
                           1e-3, chunk)
        rows[f"perturbed copy θ+εz ({kind})"] = pass_
    out = {}
    for name, fn in rows.items():
        seconds, _ = _timed(fn, steps, warmup, dev)
        out[name] = {"source": name, "ns_per_element": 1e9 * seconds / numel, "ms": 1000 * seconds}
    floor = out["copy (floor)"]["ns_per_element"]
    for r in out.values():
        r["x_copy"] = r["ns_per_element"] / floor
    return {"device": str(dev), "numel": numel, "generator": GENERATOR, "threads": torch.get_num_threads(),
            "sources": out}


def format_table(result: dict) -> str:
    head = (f"{result['model']} on {result['device']} ({result['dtype']}), "
            f"{'task ' + result['task'] if result.get('task') else 'random tokens'}, batch {result['batch_size']} × "
            f"{result['seq']}, autocast {result['autocast']}, noise {result['noise']}, median of {result['steps']} steps")
    width = max([28, *(len(n) + 2 for n in result["phases"])])
    lines = [head, f"{'phase':<{width}}{'ms/step':>10}{'× forward':>11}{'× textbook':>12}{'peak GiB':>10}{'× infer':>9}"
                   f"{'state MiB':>11}"]
    for name, r in result["phases"].items():
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        xi = "-" if r.get("x_inference_peak") is None else f"{r['x_inference_peak']:.2f}"
        state = "-" if r.get("state_bytes") is None else f"{r['state_bytes'] / 2**20:.2f}"
        lines.append(f"{name:<{width}}{r['ms']:>10.1f}{r['x_forward']:>11.2f}{r['x_textbook_mezo']:>12.2f}{peak:>10}"
                     f"{xi:>9}{state:>11}")
    return "\n".join(lines)


def format_noise(result: dict) -> str:
    lines = [f"noise passes over {result['numel']:,} fp32 elements on {result['device']} ({result['threads']} threads), "
             f"generator {result['generator']}",
             f"{'source':<34}{'ns/element':>12}{'× copy':>9}"]
    for name, r in result["sources"].items():
        lines.append(f"{name:<34}{r['ns_per_element']:>12.3f}{r['x_copy']:>9.2f}")
    return "\n".join(lines)


if __name__ == "__main__":  # one phase in its own process: its peak RSS is that phase's alone
    print(json.dumps(bench_step(**json.loads(sys.argv[1]))))
