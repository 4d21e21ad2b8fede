"""AdaNAGED's parameter-freeness on a real model (issue 10): the same 50 steps of SmolLM2-135M on
SST-2 with the loss multiplied by 1, 100 and 0.01; the iterates should not change.

    python scripts/adanaged_loss_scale.py --steps 50 --out runs/evidence/loss-scale.json

Same batches (zotune's BatchSampler, seed 0, batch 16), same seed and defaults for the three runs;
prints and saves, per scale, the largest weight difference from the unscaled run relative to the
largest weight change of the unscaled run, and the final smoothing radius τ.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from zotune.models import load_model
from zotune.optim import AdaNAGED
from zotune.tasks import encode, forward_closure, get_task
from zotune.train import BatchSampler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--scales", default="1,100,0.01")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    model, tok = load_model(args.model)
    task = get_task("sst2")
    train = task.load("train")
    sampler = BatchSampler(len(train), 16, 0)
    batches = [encode(task, tok, [train[i] for i in sampler.next()], max_length=128) for _ in range(args.steps)]
    base = {k: v.clone() for k, v in model.state_dict().items()}
    finals, rows = {}, []
    for scale in (float(s) for s in args.scales.split(",")):
        model.load_state_dict(base)
        opt = AdaNAGED(model.named_parameters(), noise="rademacher", seed=0)
        t0, losses = time.perf_counter(), []
        for batch in batches:
            closure = forward_closure(model, batch)
            losses.append(float(opt.step(lambda: closure() * scale)) / scale)
        finals[scale] = torch.cat([p.detach().flatten() for p in model.parameters()])
        rows.append({"scale": scale, "tau": opt.tau, "first_loss": losses[0], "last_loss": losses[-1],
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(json.dumps(rows[-1]), flush=True)
    reference = finals[1.0] if 1.0 in finals else next(iter(finals.values()))
    moved = (reference - torch.cat([base[k].flatten() for k, _ in model.named_parameters()])).abs().max().item()
    for row in rows:
        diff = (finals[row["scale"]] - reference).abs().max().item()
        row.update(max_weight_change=moved, max_difference=diff, relative_difference=diff / moved)
        print(f"loss ×{row['scale']:g}: weights differ from the unscaled run by at most {diff:.3g} "
              f"({diff / moved:.2g} of the largest change {moved:.3g}); τ = {row['tau']:.4g}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"steps": args.steps, "runs": rows}, f, indent=1)


if __name__ == "__main__":
    main()
