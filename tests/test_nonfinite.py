"""Non-finite values never reach the weights (issue 8): hyperparameters, updates, saved runs, metrics."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from method_checks import least_squares, mlp
from zotune.cli import main
from zotune.engine import NonFiniteUpdateError
from zotune.optim import OPTIMIZERS, check_args, optimizer_class
from zotune.run_folder import strict_json

TINY = ["--model", "tiny-llama", "--batch-size", "4", "--eval-examples", "16", "--test-examples", "8",
        "--max-length", "48", "--no-progress", "--eval-every", "0"]
ZO_METHODS = sorted(n for n, (_, _, zo) in OPTIMIZERS.items() if zo)
BAD = [float("nan"), float("inf"), float("-inf")]


def _build(name, **hp):
    model, _ = mlp()
    extra = {"fo_params": r"^2\."} if name == "hybrid-zo" else {}
    return optimizer_class(name)(list(model.named_parameters()), **extra, **hp)


@pytest.mark.parametrize("name", ZO_METHODS)
def test_every_zo_method_refuses_non_finite_lr_eps_weight_decay(name):
    checked = 0
    for key, fine in (("lr", 1e-3), ("eps", 1e-3), ("weight_decay", 0.0)):
        try:
            check_args(name, {key: fine})
        except ValueError:
            continue  # the method does not take this option
        _build(name, **{key: fine})  # a finite value is accepted
        for bad in BAD:
            with pytest.raises(ValueError, match=f"{key} must be a finite number"):
                _build(name, **{key: bad})
            with pytest.raises(ValueError, match=f"{key} must be a finite number"):
                check_args(name, {key: bad})  # the CLI's --opt path, before any model loads
        checked += 1
    assert checked >= 1 or name == "adanaged"


@pytest.mark.parametrize("name, options", [
    ("zo-sgd-momentum", {"momentum": float("nan")}),
    ("zo-adam", {"betas": (0.9, float("nan"))}),
    ("helene", {"betas": (float("inf"), 0.99)}),
    ("adanaged", {"r_eps": float("inf")}),
    ("adanaged", {"step_scale": float("inf")}),
    ("hybrid-zo", {"fo_lr": float("nan")}),
])
def test_other_float_options_must_be_finite(name, options):
    # bounded options (momentum, betas) are refused by their range check, unbounded ones as non-finite
    with pytest.raises(ValueError, match=r"must be (a finite number|in \[0, 1\)|two numbers in \[0, 1\))"):
        _build(name, **options)


@pytest.mark.parametrize("flag", ["--lr", "--eps", "--weight-decay"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_cli_refuses_non_finite_flags_before_making_a_run(tmp_path, capsys, flag, value):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--optimizer", "mezo", "--steps", "1", f"{flag}={value}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{flag} must be a finite number" in err and "Traceback" not in err
    assert not out.exists()


def test_engine_refuses_a_non_finite_write_before_writing():
    model, closure = least_squares()
    opt = optimizer_class("mezo")(list(model.named_parameters()), lr=1e-2)
    opt.step(closure)
    before = model.weight.detach().clone()
    e = opt.engine.params[0]
    for coef, decay in [(float("nan"), 1.0), (float("inf"), 1.0), (1e-3, float("nan"))]:
        with pytest.raises(NonFiniteUpdateError, match="no weight was changed"):
            opt.engine.write_along(e, 123, coef, decay)
    with pytest.raises(NonFiniteUpdateError, match="no weight was changed"):
        opt.engine.write_along(e, ((1, 1.0), (2, float("nan"))), 1e-3)
    delta = torch.zeros_like(model.weight)
    delta[0, 3] = float("inf")
    with pytest.raises(NonFiniteUpdateError):
        opt.engine.write(e, delta)
    assert torch.equal(model.weight, before)
    opt.engine.write_along(e, 123, 1e-3)  # a finite update still writes
    assert not torch.equal(model.weight, before)


def test_adam_step_with_overflowing_terms_leaves_the_weights_unchanged():
    model, closure = least_squares()
    opt = optimizer_class("zo-adam")(list(model.named_parameters()), lr=1e-2)
    opt.step(closure)
    before = model.weight.detach().clone()
    opt.state[model.weight]["exp_avg_sq"] = torch.full_like(model.weight, float("nan"))
    state = {k: v for k, v in opt.state[model.weight].items()}
    assert state, "zo-adam keeps per-parameter state"
    for k, v in state.items():  # whatever its state is called, poison it
        if torch.is_tensor(v) and v.shape == model.weight.shape:
            v.fill_(float("nan"))
    with pytest.raises(FloatingPointError):
        opt.step(closure)
    assert torch.equal(model.weight, before)


def _finite_file(path):
    return all(bool(torch.isfinite(t).all()) for t in load_file(str(path)).values())


# Learning rates that diverge on the tiny model (a larger one can saturate the two-way softmax at
# ln 2 and stop moving instead, depending on the directions drawn).
@pytest.mark.parametrize("optimizer, lr", [("mezo", "1e10"), ("sgd", "1e38")])
def test_diverged_run_stops_with_finite_weights_that_eval_accepts(tmp_path, capsys, optimizer, lr):
    out = tmp_path / optimizer
    assert main(["train", *TINY, "--optimizer", optimizer, "--lr", lr, "--steps", "8", "--max-skips", "3",
                 "--out", str(out)]) == 1
    err = capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    assert res["stopped"] and "non-finite" in res["stopped"] and "non-finite" in err
    kept = "the base model's weights" if res["weights_step"] == 0 else f"the weights after step {res['weights_step']}"
    assert f"{kept} are in {out}" in err  # the message says which weights were kept
    assert _finite_file(out / "model.safetensors")
    assert main(["eval", "--run", str(out), "--json"]) == 0
    assert math.isfinite(json.loads(capsys.readouterr().out)["accuracy"])


def test_eval_refuses_a_run_with_non_finite_weights(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--optimizer", "mezo", "--lr", "1e-3", "--steps", "1", "--out", str(out)]) == 0
    weights = load_file(str(out / "model.safetensors"))
    name = sorted(weights)[0]
    weights[name].view(-1)[0] = float("nan")
    save_file(weights, str(out / "model.safetensors"))
    capsys.readouterr()
    assert main(["eval", "--run", str(out)]) == 1
    err = capsys.readouterr().err
    assert "NaN or inf" in err and name in err and "Traceback" not in err


def test_metrics_lines_are_strict_json():
    line = strict_json({"step": 3, "loss": float("nan"), "lr": float("inf"), "dev_accuracy": 0.5})

    def refuse(token):
        raise ValueError(f"bare {token} in JSON")

    assert json.loads(line, parse_constant=refuse) == {"step": 3, "loss": None, "lr": None, "dev_accuracy": 0.5}


def test_a_half_precision_update_that_would_overflow_is_refused_before_writing():
    """fp16 holds at most 65504: an update past it would write inf. The write pass refuses it."""
    from zotune.optim import MeZO
    from zotune.passes import WeightOverflowError

    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 1, bias=False).half()
    with torch.no_grad():
        layer.weight.fill_(65000.0)
    before = layer.weight.detach().clone()
    calls = [0]

    def closure():  # a loss whose slope along any direction is huge, so lr·g overflows the weights
        calls[0] += 1
        return torch.tensor(1e6 * calls[0] * (-1) ** calls[0])

    opt = MeZO(layer.parameters(), lr=1.0, eps=1e-3, noise="rademacher")
    with pytest.raises(WeightOverflowError, match="overflow"):
        opt.step(closure)
    assert torch.equal(layer.weight, before) and bool(torch.isfinite(layer.weight).all())
