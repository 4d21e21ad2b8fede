"""Seconds per MeZO step of the README quickstart on SmolLM2 ("new": forward_closure + Rademacher)
against the previous quickstart ("old": fp32 forward, Gaussian). Usage: python scripts/quickstart_speed.py new|old"""
import sys, time
import zotune
from zotune.tasks import get_task, encode, forward_closure, loss_fn

model, tok = zotune.models.load_model("smollm2")
task = get_task("sst2"); batch = encode(task, tok, task.load("train")[:16])
which = sys.argv[1]
if which == "old":  # the previous quickstart: fp32 forward, Gaussian directions
    opt = zotune.optim.MeZO(model.named_parameters(), lr=3e-5, eps=1e-3)
    closure = lambda: loss_fn(model, batch)
else:
    opt = zotune.optim.MeZO(model.named_parameters(), lr=3e-5, eps=1e-3, noise="rademacher")
    closure = forward_closure(model, batch)
opt.step(closure)
t = []
for step in range(3):
    t0 = time.perf_counter(); opt.step(closure); t.append(time.perf_counter() - t0)
print(which, "s/step", sorted(t)[1])
