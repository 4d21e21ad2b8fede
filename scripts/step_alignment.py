"""How much of one ZO step goes down the true gradient: each method's step from the same weights on
the same batch, against the backprop gradient ∇ there, over many seeds.

Per method it prints, over ``--trials`` steps each taken from θ₀ (weights restored between them):
  descent   −⟨Δ, ∇⟩, the first-order loss decrease of the step Δ (mean ± std over trials)
  lr_eff    mean descent / ‖∇‖²: the lr of the full-gradient step with the same expected descent
            (MeZO's is its lr: its step is unbiased, E[Δ] = −lr·∇)
  |step|    ‖Δ‖, and cos, the cosine of Δ and −∇ (mean)
  Δloss     the batch loss after the step minus before (mean), the second-order terms included
Why: a method whose expected descent per step is far below MeZO's at the lr it trains with leaves
predictions unchanged for many steps; this separates a weak step from a defect in the update.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/step_alignment.py --model smollm2 --task sst2 \\
        mezo:lr=3e-5 zo-muon:lr=0.1 zo-muon:lr=0.01 zo-sgd-sign:lr=3e-6
"""

from __future__ import annotations

import argparse
import statistics

import torch

from zotune.bench import bench_model, make_batch, method_entry
from zotune.models import resolve_device
from zotune.optim import build_optimizer
from zotune.train import autocast_context


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().float().reshape(-1) for t in tensors])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("methods", nargs="+", help="method entries as in `zotune bench step`: name:key=value:...")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--task", default=None, help="a task's first --batch training examples (default: random tokens)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--autocast", default="bf16")
    args = ap.parse_args()
    entries = [method_entry(m) for m in args.methods]  # build_optimizer types the values ('3e-5')

    dev = resolve_device("cpu")
    net, tok = bench_model(args.model, "fp32", dev)
    net.eval()
    batch, loss_fn = make_batch(net, tok, args.batch, args.seq, args.task, args.data_dir, dev)
    params = list(net.parameters())

    def closure():
        with autocast_context(dev, args.autocast):
            return loss_fn(net, batch)

    for p in params:
        p.requires_grad_(True)
    with torch.enable_grad():
        loss0 = closure()
        grads = torch.autograd.grad(loss0, params)
    grad = flat(grads)
    g2 = float(grad @ grad)
    theta0 = flat(params)
    with torch.no_grad():
        loss0 = closure()  # as the steps' losses are read: without autograd (kernels may differ)
    print(f"model {args.model}, task {args.task or 'random tokens'}, batch {args.batch}: loss {loss0.item():.4f}, "
          f"|grad| {g2 ** 0.5:.4g}, {grad.numel()} parameters, {args.trials} trials per method")
    names = [n for n, _ in net.named_parameters()]
    shares = sorted(((float(g.float().pow(2).sum()) / g2, n) for n, g in zip(names, grads)), reverse=True)[:3]
    print("largest shares of |grad|^2: " + ", ".join(f"{n} {100 * s:.1f}%" for s, n in shares))
    print(f"{'method':28s} {'descent mean':>13s} {'± std':>10s} {'lr_eff':>10s} {'|step|':>10s} {'cos':>9s} "
          f"{'Δloss':>10s}")
    for name, options in entries:
        opt = build_optimizer(name, list(net.named_parameters()), **options)
        descents, norms, cosines, changes = [], [], [], []
        for _ in range(args.trials):
            opt.step(closure)
            step = flat(params) - theta0
            with torch.no_grad():
                changes.append(float(closure()) - float(loss0))
            d = -float(step @ grad)
            n = float(step.norm())
            descents.append(d)
            norms.append(n)
            cosines.append(d / (n * g2 ** 0.5) if n > 0 else 0.0)
            with torch.no_grad():  # back to θ₀ (copied in: the engine holds these tensors)
                for p, v in zip(params, theta0.split([p.numel() for p in params])):
                    p.copy_(v.view_as(p))
        label = name + "".join(f" {k}={v}" for k, v in options.items())
        mean = statistics.mean(descents)
        print(f"{label:28s} {mean:13.4e} {statistics.stdev(descents):10.3e} {mean / g2:10.3e} "
              f"{statistics.mean(norms):10.3e} {statistics.mean(cosines):9.2e} {statistics.mean(changes):10.3e}",
              flush=True)


if __name__ == "__main__":
    main()
