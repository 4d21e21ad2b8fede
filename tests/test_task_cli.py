"""Every task trains 3 steps and evaluates through the CLI on a tiny model; bad data fails before
any model or run folder exists."""

import json
import re

import pytest

import zotune.train as train_mod
from zotune.cli import main
from zotune.tasks import TASKS

from test_task_suite import DATA, DROP_DATA, _write_record, needs_data

TINY = ["--model", "tiny-llama", "--batch-size", "2", "--eval-examples", "4", "--test-examples", "4",
        "--max-length", "96", "--max-new-tokens", "4", "--eval-every", "0", "--autocast", "none", "--no-progress",
        "--no-save-weights"]
REAL = sorted(set(TASKS) - {"record", "drop"})


@pytest.fixture(scope="module")
def written_data(tmp_path_factory):
    """ReCoRD and DROP rows in their official formats (their files are not on this machine)."""
    root = tmp_path_factory.mktemp("data")
    _write_record(root)
    (root / "DROP").mkdir()
    for name in ("drop_dataset_train.json", "drop_dataset_dev.json"):
        (root / "DROP" / name).write_text(json.dumps(DROP_DATA))
    return root


def _train(tmp_path, task, data_dir, *extra):
    out = tmp_path / task
    code = main(["train", *TINY, "--task", task, "--data-dir", str(data_dir), "--steps", "3",
                 "--out", str(out), *extra])
    return code, out


def _check_results(out, task):
    res = json.loads((out / "results.json").read_text())
    assert res["steps"] == 3 and res["stopped"] is None and res["task"] == task
    assert res["metric"] == TASKS[task]().metric
    for key in ("zero_shot_test_accuracy", "test_accuracy", "best_dev_accuracy"):
        assert 0.0 <= res[key] <= 1.0
    return res


@needs_data
@pytest.mark.parametrize("task", REAL)
def test_every_task_trains_three_steps(tmp_path, task):
    code, out = _train(tmp_path, task, DATA, "--optimizer", "mezo", "--lr", "1e-3")
    assert code == 0
    res = _check_results(out, task)
    metrics = res["test_metrics"]
    assert set(metrics) >= ({"em", "f1"} if TASKS[task].kind == "generation" else {"accuracy", "loss"})


@pytest.mark.parametrize("task", ["record", "drop"])
def test_record_and_drop_train_on_written_rows(tmp_path, task, written_data):
    code, out = _train(tmp_path, task, written_data, "--optimizer", "adamw", "--lr", "1e-3")
    assert code == 0
    _check_results(out, task)


@needs_data
def test_f1_objective_trains_squad_with_zo_only(tmp_path, capsys):
    code, out = _train(tmp_path, "squad", DATA, "--optimizer", "mezo", "--objective", "f1")
    assert code == 0
    res = _check_results(out, "squad")
    assert res["objective"] == "f1" and res["train_forward_passes"] == 6
    assert all(-1.0 <= json.loads(line)["loss"] <= 0.0 for line in (out / "metrics.jsonl").read_text().splitlines())
    capsys.readouterr()
    code, out = _train(tmp_path / "fo", "squad", DATA, "--optimizer", "adamw", "--objective", "f1")
    assert code == 2 and "needs a zeroth-order optimizer" in capsys.readouterr().err and not out.exists()


@needs_data
def test_eval_with_icl_reports_how_many_shots_fit(capsys):
    args = ["eval", "--model", "tiny-llama", "--task", "rte", "--data-dir", str(DATA), "--examples", "3", "--json"]
    assert main(args + ["--icl-shots", "32"]) == 0
    res = json.loads(capsys.readouterr().out)
    icl = res["icl"]
    assert res["metric"] == "accuracy" and res["n"] == 3 and icl["shots"] == 32
    assert 0 <= icl["shots_used_min"] <= icl["shots_used_max"] < 32  # RTE passages: few fit in 256 tokens
    assert icl["max_length"] == 256
    assert main(args) == 0 and json.loads(capsys.readouterr().out)["icl"] is None
    assert main(["eval", "--model", "tiny-llama", "--task", "copa", "--data-dir", str(DATA), "--examples", "4",
                 "--icl-shots", "8"]) == 0
    assert re.search(r"ICL, [1-8]-8 of 8 shots fit", capsys.readouterr().out)  # COPA prompts are short


def test_bad_data_fails_before_model_and_run_folder(tmp_path, monkeypatch, capsys):
    def no_model(*a, **k):
        raise AssertionError("the model must not be loaded before the data is checked")

    monkeypatch.setattr("zotune.models.load_model", no_model)
    monkeypatch.delenv("ZOTUNE_DATA", raising=False)
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "val.jsonl").write_text('{"premise": "p", "hypothesis": "h", "label": "entailment"}\n')
    (tmp_path / "RTE" / "train.jsonl").write_text('{"premise": "p", "hypothesis": "h", "label": "yes"}\n')
    code, out = _train(tmp_path, "rte", tmp_path)
    err = capsys.readouterr().err
    assert code == 2 and "train.jsonl, line 1: label 'yes'" in err and not out.exists()
    code, out = _train(tmp_path, "squad", tmp_path / "nowhere")
    assert code == 2 and "SQuAD/dev-v1.1.json not found" in capsys.readouterr().err and not out.exists()
    assert main(["eval", "--model", "tiny-llama", "--task", "cb"]) == 2
    assert "--data-dir" in capsys.readouterr().err
    assert train_mod.load_task_data  # the loader train() calls before the model


@needs_data
def test_bench_times_a_batch_of_the_chosen_task(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", "tiny-llama", "--task", "copa", "--data-dir", str(DATA), "--steps", "1",
                 "--warmup", "0", "--batch-size", "2", "--autocast", "none", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["task"] == "copa" and all(r["ms"] > 0 for r in res["phases"].values())
    assert '"phase": "forward"' in capsys.readouterr().out
    assert main(["bench", "--model", "tiny-llama", "--task", "cb", "--data-dir", str(tmp_path)]) == 2


def test_mistyped_optimizer_option_fails_before_a_run_folder_exists(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--model", "tiny-llama", "--task", "sst2", "--steps", "1", "--out", str(out),
                 "--opt", "momentum_typo=0.9", "--no-progress"])
    assert code == 2
    assert "does not take ['momentum_typo']" in capsys.readouterr().err
    assert not out.exists()
