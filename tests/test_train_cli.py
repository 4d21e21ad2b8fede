"""End-to-end `zotune train | eval | plot` on tiny random models (a few steps each)."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

import zotune.train as train_mod
from zotune.cli import main

TINY = ["--model", "tiny-llama", "--batch-size", "4", "--eval-examples", "16", "--test-examples", "24",
        "--max-length", "48", "--no-progress"]


def _train(out, *extra):
    return main(["train", *TINY, "--out", str(out), *extra])


def _results(out):
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("optimizer, lr", [("mezo", "1e-3"), ("adamw", "1e-3")])
def test_train_writes_run_folder(tmp_path, optimizer, lr, capsys):
    out = tmp_path / optimizer
    assert _train(out, "--optimizer", optimizer, "--lr", lr, "--steps", "4", "--eval-every", "2") == 0
    assert {"config.yaml", "metrics.jsonl", "results.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert all({"loss", "lr", "elapsed"} <= r.keys() for r in recs)
    assert [r["step"] for r in recs if "dev_accuracy" in r] == [2, 4]
    res = _results(out)
    assert res["steps"] == 4 and res["stopped"] is None
    assert res["train_forward_passes"] == (8 if optimizer == "mezo" else 4)
    assert 0 <= res["zero_shot_test_accuracy"] <= 1 and 0 <= res["test_accuracy"] <= 1
    assert res["peak_memory_mb"] > 0 and res["test_examples"] == 24
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["optimizer"] == optimizer and cfg["steps"] == 4
    # tiny-llama ties its embedding and LM head: the shared tensor is saved once
    saved = load_file(str(out / "model.safetensors"))
    assert "model.embed_tokens.weight" in saved and "lm_head.weight" not in saved
    assert "fine-tuned test accuracy" in capsys.readouterr().out


def test_config_file_flags_override_and_trainable(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optimizer: mezo\nlr: 1e-3\nsteps: 10\nseed: 5\ntrainable: 'layers\\.1\\.'\n")
    out = tmp_path / "run"
    assert _train(out, "--config", str(f), "--steps", "2", "--eval-every", "0", "--no-save-weights") == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert (cfg["steps"], cfg["seed"], cfg["lr"]) == (2, 5, 1e-3)
    assert not (out / "model.safetensors").exists()
    n = _results(out)["trainable_parameters"]
    assert 0 < n < 100_000  # only layer 1, not the 65k-parameter embedding


def test_refuses_to_overwrite_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--steps", "1", "--eval-every", "0") == 0
    before = (out / "results.json").read_text()
    capsys.readouterr()
    assert _train(out, "--steps", "1") == 2
    err = capsys.readouterr().err
    assert err.startswith("zotune: error:") and "--overwrite" in err and "Traceback" not in err
    assert (out / "results.json").read_text() == before
    assert _train(out, "--steps", "2", "--eval-every", "0", "--overwrite") == 0
    assert _results(out)["steps"] == 2
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2  # old log replaced, not appended to


def test_user_errors_exit_2_without_traceback(tmp_path, capsys):
    assert main(["train", "--steps", "0", "--out", str(tmp_path / "x")]) == 2
    assert main(["train", "--optimizer", "nope", "--out", str(tmp_path / "x")]) == 2
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert main(["train", "--no-such-flag"]) == 2
    assert main(["eval", "--run", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.count("zotune: error:") == 5 and "Traceback" not in err
    assert not (tmp_path / "x").exists()  # validation happens before anything is written


def test_eval_run_reproduces_test_accuracy(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--optimizer", "adamw", "--lr", "1e-2", "--steps", "5", "--eval-every", "0") == 0
    res = _results(out)
    capsys.readouterr()
    assert main(["eval", "--run", str(out), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["n"] == res["test_examples"]
    assert got["accuracy"] == pytest.approx(res["test_accuracy"])
    assert main(["eval", "--model", "tiny-llama", "--examples", "24", "--json"]) == 0  # zero-shot
    zs = json.loads(capsys.readouterr().out)
    assert zs["accuracy"] == pytest.approx(res["zero_shot_test_accuracy"])


def test_plot_writes_png(tmp_path):
    runs = []
    for name, opt in (("a", "mezo"), ("b", "sgd")):
        runs.append(tmp_path / name)
        assert _train(runs[-1], "--optimizer", opt, "--lr", "1e-3", "--steps", "3", "--eval-every", "1",
                      "--eval-examples", "4") == 0
    png = tmp_path / "curves.png"
    assert main(["plot", *map(str, runs), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", str(tmp_path / "missing"), "--out", str(png)]) == 2


@pytest.mark.parametrize("optimizer, calls_per_step", [("mezo", 2), ("adamw", 1)])
def test_nonfinite_loss_stops_and_keeps_last_good_weights(tmp_path, monkeypatch, capsys, optimizer, calls_per_step):
    fail_step = 3
    common = ("--optimizer", optimizer, "--lr", "1e-2", "--eval-every", "0", "--trainable", "layers")
    ref = tmp_path / "ref"  # the same run, stopped cleanly just before the failing step
    assert _train(ref, *common, "--steps", str(fail_step - 1)) == 0

    real_loss, calls = train_mod.loss_fn, [0]

    def loss_fn(model, batch):
        calls[0] += 1
        loss = real_loss(model, batch)
        # one bad batch: the failing step's calls only (the weights check after the stop is finite)
        bad = calls_per_step * (fail_step - 1) < calls[0] <= calls_per_step * fail_step
        return loss * float("nan") if bad else loss

    monkeypatch.setattr(train_mod, "loss_fn", loss_fn)
    out = tmp_path / "nan"
    capsys.readouterr()
    assert _train(out, *common, "--steps", "6", "--max-skips", "0") == 1
    assert f"non-finite loss at step {fail_step}" in capsys.readouterr().err
    res = _results(out)
    assert res["stopped"] == f"non-finite loss at step {fail_step} (1 skipped in a row, --max-skips 0)"
    assert res["steps"] == fail_step and res["weights_step"] == fail_step - 1 and res["test_accuracy"] is None
    got, want = load_file(str(out / "model.safetensors")), load_file(str(ref / "model.safetensors"))
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6)


def test_demo_writes_runs_demo_and_may_overwrite(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["demo", *TINY, "--steps", "1", "--eval-every", "0"]
    assert main(args) == 0
    assert main(args) == 0  # the demo always overwrites its own folder
    assert _results(tmp_path / "runs" / "demo")["steps"] == 1
    table = capsys.readouterr().out
    for row in ("zero-shot test accuracy", "fine-tuned test accuracy", "steps", "wall time", "peak memory"):
        assert row in table


ZO_METHODS = sorted(n for n, (_, _, zo) in __import__("zotune.optim", fromlist=["OPTIMIZERS"]).OPTIMIZERS.items() if zo)


@pytest.mark.parametrize("name", ZO_METHODS)
def test_every_zo_method_trains_through_the_cli(tmp_path, name, capsys):
    """`zotune train --optimizer NAME` accepts each method with its own defaults (lr unset) and
    the closure calls the harness counts equal the method's stated forward passes."""
    from zotune.optim import available

    assert name in available(), f"{name} is registered but its module is missing"
    out = tmp_path / name
    extra = ["--opt", "fo_params=norm"] if name == "hybrid-zo" else []
    assert _train(out, "--optimizer", name, "--steps", "2", "--eval-every", "0", "--test-examples", "8", *extra) == 0
    res = _results(out)
    assert res["steps"] == 2 and res["stopped"] is None and res["zeroth_order"]
    assert res["train_forward_passes"] >= 2


def test_bench_prints_ratios_measured_in_one_run(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "step", "--model", "tiny-llama", "--steps", "1", "--warmup", "0", "--batch", "4",
                 "--seq", "16", "--methods", "mezo,zo-sgd-sign", "--json", str(out)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    res = json.loads(out.read_text())
    phases = res["phases"]
    assert [x["phase"] for x in lines] == list(phases) == ["forward", "mezo", "zo-sgd-sign", "textbook mezo",
                                                           "first-order adamw"]
    assert all(r["ms"] > 0 for r in phases.values())
    assert phases["forward"]["x_forward"] == 1.0 and phases["textbook mezo"]["x_textbook_mezo"] == 1.0
    assert main(["bench", "--model", "tiny-llama", "--steps", "1", "--warmup", "0", "--batch", "2", "--seq", "8",
                 "--table"]) == 0
    assert "× forward" in capsys.readouterr().out
    assert main(["bench", "--model", "tiny-llama", "--methods", "mezzo"]) == 2


def test_bench_methods_take_options(capsys):
    """``NAME:KEY=VALUE`` entries time a method's configurations side by side (commas inside braces
    belong to the value); a malformed entry (before the model loads) or an unknown option exits with 2."""
    from zotune.bench import method_entry, split_methods

    entries = split_methods("mezo,adanaged:sampler={name: subspace, rank: 2}:beta=0.5,adanaged:sampler=dense")
    assert entries == ("mezo", "adanaged:sampler={name: subspace, rank: 2}:beta=0.5", "adanaged:sampler=dense")
    assert method_entry(entries[1]) == ("adanaged", {"sampler": {"name": "subspace", "rank": 2}, "beta": 0.5})
    assert main(["bench", "step", "--model", "tiny-llama", "--steps", "1", "--warmup", "0", "--batch", "2",
                 "--seq", "8", "--methods", ",".join(entries[1:])]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["phase"] for r in rows[1:3]] == list(entries[1:])
    assert 0 < rows[1]["state_bytes"] < rows[2]["state_bytes"]  # r×r cores against dense buffers
    assert main(["bench", "--model", "tiny-llama", "--methods", "adanaged:rank"]) == 2
    assert main(["bench", "--model", "tiny-llama", "--methods", "adanaged:no_such_option=1"]) == 2


def test_bench_memory_runs_each_phase_in_its_own_process(capsys):
    from zotune.bench import bench_step

    res = bench_step("tiny-llama", batch_size=2, seq=8, steps=1, warmup=0, memory=True)
    phases = res["phases"]
    assert all(r["peak_kind"].startswith("max_rss") and r["peak_gib"] > 0 for r in phases.values())
    assert phases["forward"]["x_inference_peak"] == 1.0
    assert phases["first-order adamw"]["peak_gib"] >= phases["forward"]["peak_gib"]


def test_bench_noise_times_every_source_against_the_copy_floor(capsys):
    assert main(["bench", "noise", "--numel", "100000", "--steps", "1", "--warmup", "0"]) == 0
    rows = {r["source"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows["copy (floor)"]["x_copy"] == 1.0
    assert {"zotune gaussian", "zotune rademacher", "zotune uniform", "torch randn_ (global RNG)"} <= set(rows)
    assert all(r["ns_per_element"] > 0 for r in rows.values())


def test_random_architectures_have_their_published_sizes():
    from zotune.architectures import random_model

    model = random_model("opt-125m", dtype="bf16")
    assert 125e6 < sum(p.numel() for p in model.parameters()) < 126e6  # OPT-125M: 125.2M with tied embeddings
    assert next(model.parameters()).dtype == torch.bfloat16
