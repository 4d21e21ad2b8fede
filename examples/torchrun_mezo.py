"""MeZO on several processes with torchrun: data-parallel (each rank reads its shard of the global
batch) or evaluation-parallel (each rank runs its share of the step's forward passes).

    torchrun --nproc-per-node 2 examples/torchrun_mezo.py --model tiny-llama --steps 20
    torchrun --nproc-per-node 8 examples/torchrun_mezo.py --model /path/to/hf-folder --parallel evaluation --directions 8
    # several nodes: torchrun --nnodes 2 --node-rank R --rdzv-endpoint HOST:29500 --nproc-per-node 8 ...

Every rank draws the same directions from the same seed and applies the same update; only losses
travel (8 bytes per forward). Rank 0 prints and saves. gloo on CPU, NCCL when CUDA is available.
"""

import argparse

import torch

from zotune.distributed import DataParallel, init, shard, split_evaluations
from zotune.models import load_model
from zotune.optim import MeZO
from zotune.tasks import encode, get_task, loss_fn

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="smollm2")
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--batch", type=int, default=16, help="global batch")
parser.add_argument("--lr", type=float, default=3e-5)
parser.add_argument("--parallel", choices=("data", "evaluation"), default="data")
parser.add_argument("--directions", type=int, default=1)
parser.add_argument("--save", help="rank 0 saves the trained weights here (.pt)")
args = parser.parse_args()

rank, world = init()
device = f"cuda:{rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
model, tok = load_model(args.model, device=device)
task = get_task("sst2")
train = task.load("train")
opt = MeZO(model.named_parameters(), lr=args.lr, seed=0, num_directions=args.directions)
dp = DataParallel()
if args.parallel == "evaluation":
    split = split_evaluations(opt)
for step in range(args.steps):
    rows = train[step * args.batch:(step + 1) * args.batch]
    if args.parallel == "data":
        mine = encode(task, tok, shard(rows, rank, world), max_length=64)
        closure = dp.closure([(len(rows) // world, lambda: loss_fn(model, mine))], len(rows))
    else:
        batch = encode(task, tok, rows, max_length=64)
        closure = lambda: loss_fn(model, batch)  # noqa: E731
    loss = opt.step(closure)
    if rank == 0:
        print(f"step {step + 1}: loss {float(loss):.4f}")
sent = dp.bytes_sent if args.parallel == "data" else split.bytes_sent
if rank == 0:
    print(f"bytes sent per step by rank 0: {sent / args.steps:.0f}")
    if args.save:
        torch.save({n: p.detach().cpu() for n, p in model.named_parameters()}, args.save)
torch.distributed.destroy_process_group()
