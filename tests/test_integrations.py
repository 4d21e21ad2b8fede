"""zotune's optimizers in transformers' Trainer (ZOTrainer) and in an Accelerate loop (issue 12)."""

import pytest
import torch

from zotune.models import load_model
from zotune.optim import MeZO


def _data(tok, n=24, length=16):
    """Causal-LM rows of one length (no collator needed): labels are the inputs."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 200, (n, length), generator=g)
    return [{"input_ids": r, "attention_mask": torch.ones_like(r), "labels": r.clone()} for r in ids]


def _args(out, **kw):
    from transformers import TrainingArguments

    base = dict(output_dir=str(out), per_device_train_batch_size=4, max_steps=6, save_strategy="steps", save_steps=3,
                logging_steps=1, report_to=[], use_cpu=True, seed=0, learning_rate=1e-3, lr_scheduler_type="linear",
                disable_tqdm=True)
    return TrainingArguments(**{**base, **kw})


def _trainer(out, eps=1e-3, **kw):
    from zotune.integrations import ZOTrainer

    model, tok = load_model("tiny-llama", device="cpu")
    trainer = ZOTrainer(model, _args(out, **kw), train_dataset=_data(tok), optimizer_cls=MeZO,
                        optimizer_kwargs={"eps": eps})
    return model, trainer


def _weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_zo_trainer_resumes_bit_for_bit_and_never_makes_a_grad(tmp_path):
    model, trainer = _trainer(tmp_path / "a")
    start = _weights(model)
    trainer.train()
    straight = _weights(model)
    assert any(not torch.equal(straight[n], start[n]) for n in start)
    assert all(p.grad is None for p in model.parameters())
    assert trainer.zo_optimizer.zo_step == 6
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 6 and all(x > 0 for x in losses)
    # the linear schedule reached the ZO optimizer's groups
    assert trainer.zo_optimizer.param_groups[0]["lr"] < 1e-3

    model2, trainer2 = _trainer(tmp_path / "b")
    trainer2.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-3"))
    assert trainer2.zo_optimizer.zo_step == 6
    resumed = _weights(model2)
    assert all(torch.equal(resumed[n], straight[n]) for n in straight)


def test_zo_trainer_gradient_accumulation_is_one_step_over_the_micro_batches(tmp_path):
    """k = 2 micro-batches of 2 per step: 2 ZO steps, each reading both micro-batches at every
    perturbed point (8 forwards), and the weights of one batch of 4 up to fp32 rounding: the mean of
    two micro-batch means rounds differently from one mean, and ΔL/2ε magnifies that (ε = 1e-2 here:
    2e-5 of the weights' norm at ε = 1e-3, measured)."""
    model, trainer = _trainer(tmp_path / "ga", eps=1e-2, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                              max_steps=2, save_strategy="no")
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    trainer.train()
    assert trainer.zo_optimizer.zo_step == 2 and calls[0] == 2 * 2 * 2
    ga = _weights(model)
    model4, trainer4 = _trainer(tmp_path / "one", eps=1e-2, per_device_train_batch_size=4, max_steps=2, save_strategy="no")
    trainer4.train()
    whole = _weights(model4)
    for n in whole:
        assert (ga[n] - whole[n]).norm() <= 1e-5 * whole[n].norm() + 1e-12, n


def test_zo_trainer_takes_a_built_optimizer(tmp_path):
    from zotune.integrations import ZOTrainer
    from zotune.optim import ZOSGDMomentum

    model, tok = load_model("tiny-llama", device="cpu")
    opt = ZOSGDMomentum(model.named_parameters(), lr=1e-3, seed=4)
    trainer = ZOTrainer(model, _args(tmp_path, max_steps=2, save_strategy="no"), train_dataset=_data(tok),
                        zo_optimizer=opt)
    trainer.train()
    assert trainer.zo_optimizer is opt and opt.zo_step == 2 and opt.state_bytes() > 0


def test_zo_trainer_refuses_a_missing_or_first_order_optimizer(tmp_path):
    from zotune.integrations import ZOTrainer

    model, tok = load_model("tiny-llama", device="cpu")
    with pytest.raises(ValueError, match="needs a zeroth-order optimizer"):
        ZOTrainer(model, _args(tmp_path), train_dataset=_data(tok))
    with pytest.raises(ValueError, match="zotune zeroth-order optimizer"):
        ZOTrainer(model, _args(tmp_path), train_dataset=_data(tok),
                  zo_optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


def test_accelerate_example_gives_the_plain_loops_weights():
    """The docs/integrations.md example: ``accelerator.prepare(model, opt)``, then ``opt.step(closure)``
    unchanged; the same weights as the same loop without Accelerate."""
    from accelerate import Accelerator

    runs = []
    for use_accelerate in (False, True):
        model, tok = load_model("tiny-llama", device="cpu")
        opt = MeZO(model.named_parameters(), lr=1e-3, seed=0)
        if use_accelerate:
            model, opt = Accelerator(cpu=True).prepare(model, opt)
        data = _data(tok, n=12)
        for i in range(0, 12, 4):
            batch = {k: torch.stack([row[k] for row in data[i:i + 4]]) for k in data[0]}
            opt.step(lambda: model(**batch).loss)
        runs.append(_weights(model))
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])


def test_the_documented_accelerate_example_runs_and_matches_the_plain_loop():
    """docs/integrations.md's Accelerate block, executed as written; then the same loop without the
    three Accelerate lines: the same weights, bit for bit."""
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "integrations.md").read_text()
    block = re.findall(r"```python\n(.*?)```", text, re.S)[-1]
    assert "accelerator.prepare" in block and len(block.strip().splitlines()) <= 16
    with_accelerate: dict = {}
    exec(block, with_accelerate)
    plain_code = "\n".join(line for line in block.splitlines() if "accelerat" not in line.lower())
    plain: dict = {}
    exec(plain_code, plain)
    a, b = dict(with_accelerate["model"].named_parameters()), dict(plain["model"].named_parameters())
    assert all(torch.equal(a[n], b[n]) for n in b)
    assert plain["opt"].zo_step == 5 and all(p.grad is None for p in b.values())
