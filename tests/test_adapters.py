"""Adapters through peft (issue 12): every mode trains through the CLI on frozen base weights, is
saved with save_pretrained and reloads to the same losses; LoRA learns under MeZO; a LoRA run
exports as a merged Hugging Face folder; gradient accumulation is the same step in micro-batches."""

import json

import pytest
import torch
from safetensors.torch import load_file

from zotune.adapters import load_adapter
from zotune.cli import main
from zotune.config import TrainConfig
from zotune.models import load_model
from zotune.optim import build_optimizer
from zotune.tasks import encode, get_task, loss_fn
from zotune.train import load_run_model, select_trainable

TINY = ["--model", "tiny-llama", "--batch-size", "4", "--eval-examples", "8", "--test-examples", "16",
        "--max-length", "48", "--no-progress", "--eval-every", "0", "--autocast", "none"]


def _batch(tok, n=8, start=0):
    task = get_task("sst2")
    return encode(task, tok, task.load("train")[start:start + n], max_length=48)


def _loss(model, batch):
    with torch.no_grad():
        return float(loss_fn(model, batch))


@pytest.mark.parametrize("mode", ["lora", "prefix", "prompt"])
@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-opt", "tiny-gpt2", "tiny-gemma3"])
def test_adapter_trains_on_frozen_base_weights(mode, spec):
    """Only the adapter is trainable and perturbed; the base weights keep every bit; lr = 0 and a
    raising closure change nothing."""
    config = TrainConfig(model=spec, mode=mode, seed=3)
    model, tok = load_run_model(config, "cpu")
    base_model, _ = load_model(spec, device="cpu")
    base = {n: p.detach().clone() for n, p in base_model.named_parameters()}
    named = select_trainable(model, None)
    assert named and all(("lora_" in n) or ("prompt_encoder" in n) for n, _ in named)
    batch = _batch(tok)
    start = {n: p.detach().clone() for n, p in named}
    noop = build_optimizer("mezo", named, lr=0.0)
    for _ in range(3):
        noop.step(lambda: loss_fn(model, batch))
    assert all(torch.equal(p, start[n]) for n, p in named)
    opt = build_optimizer("mezo", named, lr=1e-2, eps=1e-2)
    for _ in range(3):
        opt.step(lambda: loss_fn(model, batch))
    assert any(not torch.equal(p, start[n]) for n, p in named)  # the adapter moved
    calls = [0]

    def boom():
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("simulated")
        return loss_fn(model, batch)

    moved = {n: p.detach().clone() for n, p in named}
    with pytest.raises(RuntimeError):
        opt.step(boom)
    assert all(torch.equal(p, moved[n]) for n, p in named)
    frozen = {n.replace(".base_layer", ""): p for n, p in model.get_base_model().named_parameters()
              if not p.requires_grad}
    for name, value in base.items():
        assert torch.equal(frozen[name], value), name


ZO_METHODS = sorted(n for n, (_, _, zo) in __import__("zotune.optim", fromlist=["OPTIMIZERS"]).OPTIMIZERS.items() if zo)


@pytest.mark.parametrize("name", ZO_METHODS)
def test_every_zo_method_trains_a_lora_adapter(name):
    """Two steps of each method (its defaults, a visible lr) on LoRA: the adapter moves, the base
    weights do not."""
    model, tok = load_run_model(TrainConfig(model="tiny-llama", mode="lora"), "cpu")
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    named = select_trainable(model, None)
    start = {n: p.detach().clone() for n, p in named}
    extra = {"fo_params": "lora_B"} if name == "hybrid-zo" else {}
    lr = {} if name == "adanaged" else {"lr": 1e-2}
    opt = build_optimizer(name, named, **lr, **extra)
    batch = _batch(tok)
    for _ in range(2):
        opt.step(lambda: loss_fn(model, batch))
    assert any(not torch.equal(p, start[n]) for n, p in named)
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if not p.requires_grad)


def test_half_precision_base_keeps_fp32_lora():
    model, tok = load_run_model(TrainConfig(model="tiny-llama", mode="lora", dtype="bf16"), "cpu")
    named = select_trainable(model, None)
    assert {p.dtype for _, p in named} == {torch.float32}
    assert {p.dtype for _, p in model.named_parameters() if not p.requires_grad} == {torch.bfloat16}
    start = {n: p.detach().clone() for n, p in named}
    opt = build_optimizer("mezo", named, lr=0.0)
    opt.step(lambda: loss_fn(model, _batch(tok)))
    assert all(torch.equal(p, start[n]) for n, p in named)


def test_lora_under_mezo_lowers_the_loss_of_a_fixed_batch():
    """Budget: 150 steps of MeZO on LoRA (r 8, all linear layers) take a fixed batch's loss below
    0.8× its start on the tiny Llama."""
    model, tok = load_run_model(TrainConfig(model="tiny-llama", mode="lora", lora_targets="all-linear"), "cpu")
    named = select_trainable(model, None)
    batch = _batch(tok)
    start = _loss(model, batch)
    opt = build_optimizer("mezo", named, lr=3e-3, eps=1e-3, seed=0)  # measured: 0.693 -> 0.433
    for _ in range(150):
        opt.step(lambda: loss_fn(model, batch))
    assert _loss(model, batch) < 0.8 * start


@pytest.mark.parametrize("mode", ["lora", "prefix", "prompt"])
def test_each_mode_trains_saves_and_reloads_through_the_cli(tmp_path, mode, capsys):
    out = tmp_path / mode
    assert main(["train", *TINY, "--mode", mode, "--optimizer", "mezo", "--lr", "1e-2", "--eps", "1e-2",
                 "--steps", "3", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["steps"] == 3 and (out / "adapter" / "adapter_config.json").is_file()
    # the adapter peft saved, on a fresh base model, gives the losses of the trained weights
    config = TrainConfig(model="tiny-llama", mode=mode)
    trained, tok = load_run_model(config, "cpu")
    saved = load_file(str(out / "model.safetensors"))
    params = dict(trained.named_parameters())
    with torch.no_grad():
        for n, t in saved.items():
            params[n].copy_(t)
    base, _ = load_model("tiny-llama", device="cpu")
    reloaded = load_adapter(base, out).eval()
    batch = _batch(tok, start=16)
    assert _loss(reloaded, batch) == pytest.approx(_loss(trained, batch), rel=1e-6)
    capsys.readouterr()
    assert main(["eval", "--run", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == res["test_accuracy"]


def test_export_of_a_lora_run_is_a_merged_hugging_face_model(tmp_path):
    from transformers import AutoModelForCausalLM

    run = tmp_path / "lora"
    assert main(["train", *TINY, "--mode", "lora", "--lr", "5e-2", "--eps", "1e-2", "--steps", "3",
                 "--out", str(run)]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    base, tok = load_model("tiny-llama", device="cpu")
    with_adapter = load_adapter(base, run).eval()
    batch = _batch(tok)
    assert _loss(merged, batch) == pytest.approx(_loss(with_adapter, batch), rel=1e-5)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    # prefix tuning changes no weight: refused, nothing written
    prefix = tmp_path / "prefix"
    assert main(["train", *TINY, "--mode", "prefix", "--steps", "1", "--out", str(prefix)]) == 0
    assert main(["export", str(prefix), "--out", str(tmp_path / "nothing")]) == 2
    assert not (tmp_path / "nothing").exists()


def test_grad_accum_micro_batches_give_the_step_of_the_whole_batch(tmp_path):
    """k = 2 micro-batches of 2 and one batch of 4: the same weights (fp32, 1e-6 relative to each
    tensor's norm). Not bit for bit: the micro-batches are padded to their own lengths and their
    means averaged, so the losses differ in the last bits, which the finite difference divides by
    2ε (measured with ε = 1e-3: 2.4e-6 relative after 3 steps; with ε = 1e-2, used here, 10× less)."""
    weights = []
    for k in ("1", "2"):
        out = tmp_path / f"k{k}"
        assert main(["train", *TINY, "--optimizer", "mezo", "--lr", "1e-3", "--eps", "1e-2", "--steps", "3",
                     "--grad-accum", k,
                     "--trainable", r"layers\.1\.", "--out", str(out)]) == 0
        res = json.loads((out / "results.json").read_text())
        assert res["train_forward_passes"] == 3 * 2 * int(k)
        weights.append(load_file(str(out / "model.safetensors")))
    base, _ = load_model("tiny-llama", device="cpu")
    params = dict(base.named_parameters())
    for n in weights[0]:
        step = weights[0][n] - params[n].detach()
        assert step.abs().max() > 0
        assert (weights[1][n] - weights[0][n]).norm() < 1e-6 * weights[0][n].norm(), n


def test_bad_adapter_options_are_refused(capsys):
    assert main(["train", *TINY, "--mode", "dora", "--steps", "1"]) == 2
    assert "mode must be one of ft, lora, prefix, prompt" in capsys.readouterr().err
    assert main(["train", *TINY, "--grad-accum", "3", "--steps", "1"]) == 2
    assert "grad_accum must be >= 1 and divide batch_size" in capsys.readouterr().err
    assert main(["train", *TINY, "--mode", "lora", "--trainable", "q_proj", "--steps", "1"]) == 2
    assert "drop one of them" in capsys.readouterr().err
