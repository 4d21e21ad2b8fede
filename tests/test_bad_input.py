"""Bad input through the CLI: one clear `zotune: error:` line, exit 2, no traceback, no folder left."""

import json
import re
from pathlib import Path

import pytest
import torch

from zotune.cli import main
from zotune.optim import OPTIMIZERS, optimizer_class

TINY = ["--model", "tiny-llama", "--batch-size", "4", "--eval-examples", "8", "--test-examples", "8",
        "--max-length", "48", "--no-progress", "--eval-every", "0", "--steps", "1"]


def _refused(capsys, argv, *phrases):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "zotune: error:" in err and "Traceback" not in err
    for phrase in phrases:
        assert phrase in err, err
    return err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a CPU-only torch")
def test_cuda_on_a_cpu_only_install(tmp_path, capsys):
    out = tmp_path / "run"
    _refused(capsys, ["train", *TINY, "--device", "cuda", "--out", str(out)], "no CUDA GPU", "--device cpu")
    _refused(capsys, ["eval", "--model", "tiny-llama", "--device", "cuda:0", "--examples", "4"], "no CUDA GPU")
    assert not out.exists()


def test_a_file_named_gguf_that_is_not_one(tmp_path, capsys):
    fake = tmp_path / "model.gguf"
    fake.write_text("<html>404 Not Found</html>")
    out = tmp_path / "run"
    _refused(capsys, ["train", *TINY, "--model", str(fake), "--out", str(out)], "is not a GGUF file", str(fake))
    assert not out.exists()


def test_a_gguf_that_is_cut_short(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ZOTUNE_CACHE", str(tmp_path / "cache"))
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x07")  # the magic, a version, then nothing
    _refused(capsys, ["eval", "--model", str(cut), "--examples", "4"], "could not be read as a GGUF model")
    assert not any((tmp_path / "cache").glob("cut-*"))  # no half cache left to trust later


@pytest.mark.parametrize("files", [
    {"config.json": "{not json"},
    {"config.json": json.dumps({"model_type": "llama"})},  # a config but no weights or tokenizer
])
def test_a_folder_with_config_json_that_is_not_a_model(tmp_path, capsys, files):
    folder = tmp_path / "hf"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    out = tmp_path / "run"
    _refused(capsys, ["train", *TINY, "--model", str(folder), "--out", str(out)],
             "not a loadable Hugging Face model", str(folder))
    assert not out.exists()


def test_a_batch_larger_than_the_training_data(tmp_path, capsys):
    out = tmp_path / "run"
    # sst2's packaged sample has 1000 training examples
    _refused(capsys, ["train", *TINY, "--batch-size", "5000", "--out", str(out)],
             "batch_size 5000 is larger than the 1000 training examples", "--batch-size 1000")
    assert not out.exists()


@pytest.mark.parametrize("n", ["-3", "0"])
def test_eval_examples_must_be_positive(capsys, n):
    _refused(capsys, ["eval", "--model", "tiny-llama", "--examples", n], f"--examples must be >= 1 (got {n})")


# --------------------------------------------------------------------------- names and modes

def _refused_train(capsys, tmp_path, *args, phrases=()):
    """``zotune train`` with the tiny setup plus ``args`` is refused and leaves no run folder."""
    out = tmp_path / "run"
    err = _refused(capsys, ["train", *TINY, *args, "--out", str(out)], *phrases)
    assert not out.exists() and not (tmp_path / "runs").exists()
    return err


@pytest.mark.parametrize("args, phrases", [
    (["--optimizer", "mezzo"], ["unknown optimizer 'mezzo'; choose one of", "mezo"]),
    (["--task", "sst3"], ["unknown task 'sst3'; known tasks:", "sst2", "--task-spec"]),
    (["--objective", "acc"], ["objective must be one of loss, accuracy, f1 (got 'acc')"]),
    (["--noise", "uniform"], ["noise must be one of gaussian, rademacher (got 'uniform')"]),
    (["--dtype", "fp64"], ["dtype must be one of fp32, bf16, fp16 (got 'fp64')"]),
    (["--autocast", "fp16"], ["autocast must be 'bf16' or none (got 'fp16')"]),
    (["--device", "gpu"], ["device must be auto, cpu, cuda, cuda:N or mps (got 'gpu')"]),
    (["--optimizer", "adamw", "--objective", "accuracy"], ["needs a zeroth-order optimizer", "--optimizer mezo"]),
    (["--task-spec", "spec.yaml"], ["task 'sst2' is built in and takes no task spec"]),
], ids=lambda v: " ".join(v) if isinstance(v[0], str) and v[0].startswith("--") else None)
def test_unknown_names_and_modes(tmp_path, capsys, args, phrases):
    _refused_train(capsys, tmp_path, *args, phrases=phrases)


def test_unknown_command(capsys):
    _refused(capsys, ["trian", "--steps", "1"], "invalid choice: 'trian'", "train")


@pytest.mark.parametrize("args, phrase", [
    (["--dtype", "fp64"], "dtype must be one of fp32, bf16, fp16, got 'fp64'"),
    (["--autocast", "fp16"], "autocast must be 'bf16', 'none' or None, got 'fp16'"),
    (["--device", "gpu"], "unknown device 'gpu'; use auto, cpu, cuda or cuda:N"),
    (["--icl-shots", "-1"], "--icl-shots must be >= 0 (got -1)"),
    (["--max-length", "2"], "--max-length must be >= 8 tokens (got 2)"),
    (["--batch-size", "0"], "--batch-size must be >= 1 (got 0)"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1 (got 0)"),
    (["--split", "validation"], "task 'sst2' has no split 'validation'; choose one of train, dev, test"),
    (["--task", "nope"], "unknown task 'nope'"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_eval_refuses_bad_options(capsys, args, phrase):
    _refused(capsys, ["eval", "--model", "tiny-llama", "--examples", "4", *args], phrase)


# --------------------------------------------------------------------------- numbers out of range

@pytest.mark.parametrize("args, phrase", [
    (["--lr", "-1"], "lr must be >= 0 (got -1.0)"),
    (["--eps", "0"], "eps must be > 0 (got 0.0)"),
    (["--eps=-1e-3"], "eps must be > 0 (got -0.001)"),
    (["--weight-decay", "-0.1"], "weight_decay must be >= 0 (got -0.1)"),
    (["--steps", "0"], "steps must be >= 1 (got 0)"),
    (["--steps", "-5"], "steps must be >= 1 (got -5)"),
    (["--eval-every", "-1"], "eval_every must be >= 0 (got -1)"),
    (["--log-every", "0"], "log_every must be >= 1 (got 0)"),
    (["--batch-size", "0"], "batch_size must be >= 1 (got 0)"),
    (["--eval-examples", "0"], "eval_examples must be >= 1 or none (got 0)"),
    (["--test-examples", "-1"], "test_examples must be >= 1 or none (got -1)"),
    (["--icl-shots", "-2"], "icl_shots must be >= 0 (got -2)"),
    (["--max-length", "3"], "max_length must be >= 8 tokens (got 3)"),
    (["--max-new-tokens", "0"], "max_new_tokens must be >= 1 or none (got 0)"),
    (["--steps", "2.5"], "config field 'steps' must be int, got str '2.5'"),
    (["--lr", "fast"], "config field 'lr' must be float or null, got str 'fast'"),
    (["--optimizer", "sgd", "--eps", "1e-3"], "eps is the perturbation scale of zeroth-order optimizers"),
    (["--eps", "-1e-3"], "eps must be > 0 (got -0.001)"),  # a negative exponent number is a value, not a flag
    (["--optimizer", "adamw", "--noise", "gaussian"], "noise is the direction distribution of zeroth-order"),
    (["--save-every", "-1"], "save_every must be >= 0 (got -1)"),
    (["--max-skips", "-2"], "max_skips must be >= 0 (got -2)"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_numbers_out_of_range(tmp_path, capsys, args, phrase):
    _refused_train(capsys, tmp_path, *args, phrases=[phrase])


@pytest.mark.parametrize("options, phrase", [
    ({"lr": -1.0}, "lr must be >= 0, got -1.0"),
    ({"eps": 0.0}, "eps must be > 0, got 0.0"),
    ({"weight_decay": -1.0}, "weight_decay must be >= 0"),
    ({"num_directions": 2.5}, "num_directions must be a whole number >= 1, got 2.5"),
    ({"num_directions": 0}, "num_directions must be a whole number >= 1, got 0"),
])
def test_python_api_refuses_bad_hyperparameters(options, phrase):
    from method_checks import mlp
    from zotune.optim import MeZO

    model, _ = mlp()
    with pytest.raises(ValueError, match=re.escape(phrase)):
        MeZO(model.named_parameters(), **options)


# --------------------------------------------------------------------------- optimizer options (--opt)

@pytest.mark.parametrize("args, phrase", [
    (["--opt", "num_directions=2.5"], "num_directions must be a whole number, got 2.5"),
    (["--opt", "num_directions=two"], "num_directions must be a whole number, got 'two'"),
    (["--opt", "num_directions=true"], "num_directions must be a whole number, got True"),
    (["--optimizer", "zo-sgd-momentum", "--opt", "momentum=high"], "momentum must be a number, got 'high'"),
    (["--opt", "stochastic_rounding=maybe"], "stochastic_rounding must be true or false, got 'maybe'"),
    (["--opt", "query_schedule=fast"], "query_schedule must be a list of 3 numbers, got 'fast'"),
    (["--optimizer", "zo-adam", "--opt", "betas=[0.9]"], "betas must be a list of 2 numbers, got [0.9]"),
    (["--optimizer", "block-zo", "--opt", "blocks_per_step=1.5"], "blocks_per_step must be a whole number, got 1.5"),
    (["--opt", "momentum=0.9"], "optimizer 'mezo' does not take ['momentum']"),
    (["--optimizer", "adanaged", "--lr", "1e-3"], "optimizer 'adanaged' does not take ['lr']"),
    (["--opt", "momentum"], "--opt: expected KEY=VALUE, got 'momentum'"),
    (["--opt", "sampler=nope"], "unknown sampler 'nope'; choose one of"),
    (["--optimizer", "lozo", "--opt", "sampler=dense"], "LOZO fixes its sampler"),
    (["--optimizer", "lozo", "--opt", "rank=2.5"], "rank must be a whole number, got 2.5"),
    (["--opt", "sampler={name: lowrank, rank: 2.5}"], "rank must be a whole number >= 1, got 2.5"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_opt_values_of_the_wrong_type_or_name(tmp_path, capsys, args, phrase):
    """Refused before a model loads; never truncated (num_directions=2.5 is not 2) nor compared late."""
    _refused_train(capsys, tmp_path, *args, phrases=[phrase])


@pytest.mark.parametrize("args, phrase", [
    (["--lr", "1e-3", "--opt", "lr=1e-2"], "optimizer option lr=1e-2 sets what --lr (config key lr) sets"),
    (["--opt", "lr=1e-2"], "give it once, as --lr 1e-2"),
    (["--opt", "eps=0.01"], "optimizer option eps=0.01 sets what --eps"),
    (["--opt", "seed=3"], "optimizer option seed=3 sets what --seed"),
    (["--opt", "weight_decay=0.1"], "sets what --weight-decay"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_opt_that_repeats_a_flag_is_refused(tmp_path, capsys, args, phrase):
    """`--opt lr=` used to beat `--lr` silently: one of the two is refused, with the flag to use."""
    _refused_train(capsys, tmp_path, *args, phrases=[phrase])


def test_opt_numbers_written_as_yaml_text_reach_the_optimizer_as_numbers():
    """YAML reads `--opt eps=1e-8` as the text '1e-8'; it must arrive as a float, not crash a
    comparison inside torch (AdamW's own eps is an --opt, unlike a ZO method's)."""
    from zotune.optim import check_args

    assert check_args("adamw", {"eps": "1e-8", "betas": [0.9, "0.99"]}) == {"eps": 1e-8, "betas": (0.9, 0.99)}
    assert check_args("mezo", {"num_directions": 2.0}) == {"num_directions": 2}


# --------------------------------------------------------------------------- failing after the model loads

@pytest.fixture(scope="module")
def old_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("old") / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("args, phrases", [
    (["--optimizer", "lozo", "--opt", "rank=100000"],
     ["rank 100000 is not smaller than any trainable matrix", "use a rank below 64"]),
    (["--optimizer", "subzero", "--opt", "rank=64"], ["rank 64 is not smaller than any trainable matrix"]),
    (["--opt", "sampler={name: subspace, rank: 5000}"], ["rank 5000 is not smaller than any trainable matrix"]),
    (["--optimizer", "block-zo", "--opt", "blocks_per_step=99"], ["blocks_per_step 99 is more than the", "use at most"]),
    (["--trainable", "no_such_layer"], ["trainable pattern 'no_such_layer' matches no parameter", "names look like"]),
    (["--optimizer", "hybrid-zo", "--opt", "fo_params=zzz"], ["fo_params 'zzz' matches no trainable parameter"]),
], ids=lambda v: " ".join(v) if isinstance(v, list) and v[0].startswith("--") else None)
def test_refused_once_the_model_is_loaded_keeps_the_old_run(old_run, tmp_path, capsys, args, phrases):
    """These need the model's shapes or names, so they fail after it loads: still before the run
    folder is touched, so neither a new folder nor an --overwrite of an old run happens."""
    _refused_train(capsys, tmp_path, *args, phrases=phrases)
    before = _snapshot(old_run)
    _refused(capsys, ["train", *TINY, *args, "--out", str(old_run), "--overwrite"], *phrases)
    assert _snapshot(old_run) == before


def test_trainable_regex_that_does_not_compile(tmp_path, capsys):
    _refused_train(capsys, tmp_path, "--trainable", "layers.(0", phrases=["trainable is not a valid regular expression"])


def test_low_rank_rank_that_fits_some_matrix_is_accepted():
    """The refusal is for a rank no matrix can take; a default rank on a small model keeps the
    documented dense fallback for the matrices it does not fit."""
    from method_checks import mlp
    from zotune.optim import SubZero, build_optimizer

    model, _ = mlp()  # matrices 16x8 and 1x16
    assert build_optimizer("subzero", model.named_parameters(), rank=7).sampler.rank == 7
    SubZero(model.named_parameters())  # default rank 24 > 8: dense draws, as documented
    with pytest.raises(ValueError, match="rank 8 is not smaller than any trainable matrix"):
        build_optimizer("subzero", model.named_parameters(), rank=8)


# --------------------------------------------------------------------------- config files and flags

@pytest.mark.parametrize("name, text, phrases", [
    ("bad.yaml", "lr: 1e-3\nsteps: [1, 2\n", ["cannot parse config file", "bad.yaml, line 3, column 1",
                                             "flow sequence started at line 2, column 8", "'key: value'"]),
    ("tab.yaml", "lr: 1e-3\n\tsteps: 2\n", ["tab.yaml, line 2, column 1", "found character '\\t'"]),
    ("bad.toml", "lr = \n", ["cannot parse config file", "bad.toml", "line 1"]),
    ("unknown.yaml", "learning_rate: 1e-3\n", ["unknown config key(s) 'learning_rate'", "valid keys:", " lr,"]),
    ("list.yaml", "- lr\n- steps\n", ["must contain a mapping of keys to values, got list"]),
    ("run.json", "{}", ["must end in .yaml, .yml or .toml (got '.json')"]),
    ("types.yaml", "steps: ten\n", ["config field 'steps' must be int, got str 'ten'"]),
])
def test_config_file_errors(tmp_path, capsys, name, text, phrases):
    config = tmp_path / name
    config.write_text(text)
    _refused_train(capsys, tmp_path, "--config", str(config), phrases=phrases)


def test_config_file_missing(tmp_path, capsys):
    _refused_train(capsys, tmp_path, "--config", str(tmp_path / "nope.yaml"),
                   phrases=[f"config file not found: {tmp_path / 'nope.yaml'}"])


def test_flag_that_does_not_exist(tmp_path, capsys):
    _refused_train(capsys, tmp_path, "--learning-rate", "1e-3", phrases=["unrecognized arguments: --learning-rate"])


# --------------------------------------------------------------------------- benchmark data files

def _rte(tmp_path, train: str, val: str) -> str:
    folder = tmp_path / "data" / "RTE"
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text(train)
    (folder / "val.jsonl").write_text(val)
    return str(tmp_path / "data")


ROW = '{"premise": "p", "hypothesis": "h", "label": "entailment"}\n'


@pytest.mark.parametrize("train, val, phrases", [
    (ROW + '{"premise": "p", "hypothesis": "h", "label": \n', ROW,
     ["RTE/train.jsonl, line 2: not valid JSON", "unmodified copy of the official release"]),
    (ROW, ROW + '{"premise": "p", "label": "entailment"}\n',
     ["RTE/val.jsonl, line 2: row lacks the field 'hypothesis'", "official file"]),
    ("", ROW, ["RTE/train.jsonl holds no rows", "unmodified copy of the official release"]),
], ids=["malformed line", "row missing a field", "empty file"])
def test_benchmark_data_errors(tmp_path, capsys, train, val, phrases):
    data = _rte(tmp_path, train, val)
    _refused_train(capsys, tmp_path, "--task", "rte", "--data-dir", data, phrases=phrases)


# --------------------------------------------------------------------------- Python API: closures and frozen parameters

ZO_METHODS = sorted(n for n, (_, _, zo) in OPTIMIZERS.items() if zo)


def _zo(name):
    from method_checks import mlp

    model, closure = mlp()
    extra = {"fo_params": r"^2\."} if name == "hybrid-zo" else {}
    return model, closure, optimizer_class(name)(list(model.named_parameters()), **extra)


@pytest.mark.parametrize("name", ZO_METHODS)
def test_closure_returning_a_non_scalar_gets_a_clear_error(name):
    model, closure, opt = _zo(name)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"the closure returned a tensor of shape \(4,\).*loss\.mean\(\)"):
        opt.step(lambda: closure() * torch.ones(4))  # a per-example loss vector
    with pytest.raises(ValueError, match="the closure returned NoneType"):
        opt.step(lambda: None)
    if not getattr(type(opt), "reference", False):  # textbook-mezo writes before its losses are known, as published
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    opt.step(lambda: closure().reshape(1))  # one element is a loss


@pytest.mark.parametrize("name", ZO_METHODS)
def test_parameter_frozen_after_the_optimizer_was_built_is_refused(name):
    """torch's optimizers skip a parameter frozen with requires_grad_(False) later; a ZO engine fixes
    its parameters when built, so rather than train it silently every step refuses, naming it."""
    model, closure, opt = _zo(name)
    model[0].weight.requires_grad_(False)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"\(0\.weight\) were frozen with requires_grad_\(False\) after the "
                                         r"optimizer was built.*build a new optimizer"):
        opt.step(closure)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    model[0].weight.requires_grad_(True)
    opt.step(closure)  # restored: trains again


def test_parameter_unfrozen_after_the_optimizer_was_built_is_refused():
    from method_checks import mlp
    from zotune.optim import MeZO

    model, closure = mlp()
    model[0].weight.requires_grad_(False)
    opt = MeZO(model.parameters(), lr=1e-3)  # built over every parameter; 0.weight frozen then
    model[0].weight.requires_grad_(True)
    with pytest.raises(ValueError, match="1 parameter\\(s\\) were unfrozen with requires_grad_\\(True\\)"):
        opt.step(closure)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_an_out_where_not_even_root_can_create_a_folder(capsys):
    """test_run_folder's unwritable-folder test is skipped as root (CI runs as root); /proc refuses
    a new folder to root too."""
    _refused(capsys, ["train", *TINY, "--out", "/proc/zotune-run"], "cannot create run folder /proc/zotune-run",
             "choose a writable --out")
    assert not Path("/proc/zotune-run").exists()
