"""The user's own data: JSONL/CSV/TSV files and datasets objects plus a task spec, as a task.

Unit tests build ``CustomTask`` directly (no model); the CLI tests train a tiny random model for 3
steps on each kind and check that every bad input exits 2 with its message and no run folder.
"""

import json
from pathlib import Path

import pytest
import yaml

from zotune.tasks import looks_like_data
from zotune.tasks.custom import CustomTask, carve_splits
from zotune.tasks.custom_files import Row
from zotune.tasks.custom_spec import SplitFractions, load_spec

DATA = Path(__file__).parent / "data" / "custom"
CLS_SPEC = {"template": "Review: {text}\nSentiment:", "label": "label",
            "verbalizers": {"negative": "bad", "positive": "good"}}
MC_SPEC = {"template": "Q: {question}\nA:", "choices": ["a", "b", "c"], "answer": "answer"}
GEN_SPEC = {"template": "Q: {q}\nA:", "completion": "a"}


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _reviews(n=10):
    return [{"text": f"review number {i}", "label": ["negative", "positive"][i % 2]} for i in range(n)]


# --------------------------------------------------------------------------- the three kinds

def test_jsonl_classification_fixture():
    task = CustomTask(DATA / "reviews.jsonl", DATA / "reviews.yaml")
    assert (task.name, task.kind, task.metric) == ("reviews", "classification", "accuracy")
    assert task.check() == {"train": 8, "dev": 1, "test": 1}
    ex = next(e for e in task.load("train") if "warm, funny" in e.prompt)
    assert ex.prompt == "Review: A warm, funny film with a big heart.\nSentiment:"
    assert ex.candidates == (" bad", " good") == task.verbalizers and ex.label == 1
    assert task.demonstration(ex) == ex.prompt + " good"
    splits = [task.load(s) for s in ("train", "dev", "test")]
    prompts = [e.prompt for split in splits for e in split]
    assert len(set(prompts)) == 10  # disjoint and covering every row


def test_csv_multiple_choice_fixture():
    task = CustomTask(DATA / "quiz.csv", DATA / "quiz.yaml")
    assert task.kind == "multiple_choice"
    exs = {e.prompt.split("\n")[0]: e for s in task.splits for e in task.load(s)}
    assert len(exs) == 8 and task.check() == {"train": 4, "dev": 2, "test": 2}  # 25% / 25% of 8
    bees = exs["Question: What do bees make?"]  # answer given as the choice's text
    assert bees.candidates == (" honey", " milk", " silk") and bees.label == 0
    assert exs["Question: Which animal barks?"].label == 1  # answer given as an index
    fruit = exs["Question: Which is a fruit, not a vegetable?"]  # quoted CSV field with a comma
    assert fruit.candidates[0] == " apple" and fruit.label == 0


def test_jsonl_generation_fixture():
    task = CustomTask(DATA / "capitals.jsonl", DATA / "capitals.yaml")
    assert (task.name, task.kind, task.metric) == ("capitals", "generation", "em")
    assert task.stop == ("\n", ".") and task.max_new_tokens == 8
    exs = {e.prompt: e for s in task.splits for e in task.load(s)}
    france = exs["Q: What is the capital of France?\nA:"]
    assert france.answers == ("Paris",) and france.candidates == () and france.label is None
    assert exs["Q: What is the capital of the Netherlands?\nA:"].answers == ("Amsterdam", "Amsterdam, the capital")
    assert task.target(france) == " Paris\n"


def test_generation_defaults_and_separator(tmp_path):
    f = _write(tmp_path, "g.jsonl", _jsonl([{"q": f"q{i}", "a": f"a{i}"} for i in range(5)]))
    task = CustomTask(f, {**GEN_SPEC, "separator": "  "})
    assert task.metric == "f1" and task.stop == ("\n",) and task.max_new_tokens == 50
    ex = task.load("train")[0]
    assert task.target(ex) == "  " + ex.answers[0] + "\n"


def test_verbalizer_list_tsv_and_separator(tmp_path):
    lines = "".join(f'say "{i} and\t{i % 2}\n' for i in range(6))  # an unclosed quote in each
    f = _write(tmp_path, "d.tsv", "sentence\tlabel\n" + lines)
    task = CustomTask(f, {"template": "{sentence} It was", "label": "label", "verbalizers": [" terrible", " great"],
                          "separator": ""})
    exs = task.load("train") + task.load("dev") + task.load("test")
    assert len(exs) == 6 and {e.label for e in exs} == {0, 1}
    assert exs[0].candidates == (" terrible", " great")
    assert any('"' in e.prompt for e in exs)  # TSV has no quoting: a quote is text


def test_mc_choices_from_a_list_field(tmp_path):
    rows = [{"q": f"q{i}", "opts": ["x", "y", "z"], "ans": i % 3} for i in range(6)]
    f = _write(tmp_path, "mc.jsonl", _jsonl(rows))
    task = CustomTask(f, {"template": "{q}", "choices": "opts", "answer": "ans", "normalize": True})
    assert task.normalize and not CustomTask(f, {"template": "{q}", "choices": "opts", "answer": "ans"}).normalize
    ex = task.load("train")[0]
    assert ex.candidates == (" x", " y", " z") and ex.label in (0, 1, 2)


# --------------------------------------------------------------------------- splits

def test_seeded_split_fractions(tmp_path):
    f = _write(tmp_path, "r.jsonl", _jsonl(_reviews(100)))
    task = CustomTask(f, {**CLS_SPEC, "split": {"dev": 0.2, "test": 0.05, "seed": 3}})
    assert task.check() == {"train": 75, "dev": 20, "test": 5}
    again = CustomTask(f, {**CLS_SPEC, "split": {"dev": 0.2, "test": 0.05, "seed": 3}})
    other = CustomTask(f, {**CLS_SPEC, "split": {"dev": 0.2, "test": 0.05, "seed": 4}})
    assert again.load("dev") == task.load("dev") and other.load("dev") != task.load("dev")
    assert CustomTask(f, CLS_SPEC).check() == {"train": 80, "dev": 10, "test": 10}  # the defaults


def test_carve_keeps_file_order_and_is_disjoint():
    rows = [Row("f", f"f, line {i}", {"i": i}) for i in range(20)]
    out = carve_splits({"train": rows}, SplitFractions(dev=0.25, test=0.25, seed=0), "f")
    ids = {s: [r.values["i"] for r in out[s]] for s in out}
    assert all(v == sorted(v) for v in ids.values())
    assert sorted(ids["train"] + ids["dev"] + ids["test"]) == list(range(20))
    assert (len(ids["dev"]), len(ids["test"])) == (5, 5)


def test_files_per_split(tmp_path):
    _write(tmp_path, "train.jsonl", _jsonl(_reviews(6)))
    (tmp_path / "held").mkdir()
    _write(tmp_path / "held", "dev.csv", "text,label\nfine,positive\nbad,negative\n")
    _write(tmp_path, "test.jsonl", _jsonl(_reviews(3)))
    spec = {**CLS_SPEC, "files": {"dev": "held/dev.csv", "test": "test.jsonl"}}
    task = CustomTask(tmp_path / "train.jsonl", spec)
    assert task.check() == {"train": 6, "dev": 2, "test": 3}
    # only test given: dev is drawn from train
    task = CustomTask(tmp_path / "train.jsonl", {**CLS_SPEC, "files": {"test": "test.jsonl"}, "split": {"dev": 0.5}})
    assert task.check() == {"train": 3, "dev": 3, "test": 3}


def test_data_folder(tmp_path):
    _write(tmp_path, "train.jsonl", _jsonl(_reviews(6)))
    _write(tmp_path, "validation.csv", "text,label\nfine,positive\n")
    _write(tmp_path, "test.tsv", "text\tlabel\nok\tpositive\nmeh\tnegative\n")
    task = CustomTask(str(tmp_path), CLS_SPEC)
    assert task.name == tmp_path.name and looks_like_data(str(tmp_path))
    assert task.check() == {"train": 6, "dev": 1, "test": 2}


def test_dataset_object_and_saved_folders(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(_reviews(20))
    assert looks_like_data(ds) and not looks_like_data("sst2")
    task = CustomTask(ds, CLS_SPEC)
    assert task.name == "custom" and task.check() == {"train": 16, "dev": 2, "test": 2}
    ds.save_to_disk(str(tmp_path / "one"))
    saved = CustomTask(str(tmp_path / "one"), CLS_SPEC)
    assert saved.name == "one" and saved.load("test") == task.load("test")
    dd = datasets.DatasetDict(train=ds, validation=datasets.Dataset.from_list(_reviews(3)))
    dd.save_to_disk(str(tmp_path / "dict"))
    assert CustomTask(str(tmp_path / "dict"), CLS_SPEC).check() == {"train": 18, "dev": 3, "test": 2}


# --------------------------------------------------------------------------- bad input, one message each

BAD_DATA = {
    # name: (file name, file text, spec, [fragments the message must contain])
    "missing field": ("d.jsonl", _jsonl(_reviews(2)) + '{"label": "positive"}\n', CLS_SPEC,
                      ["d.jsonl, line 3", "no field 'text'", "add it to the row"]),
    "empty file": ("d.jsonl", "\n\n", CLS_SPEC, ["d.jsonl is empty", "add rows"]),
    "empty csv": ("d.csv", "text,label\n", CLS_SPEC, ["d.csv is empty", "header but no rows"]),
    "label outside verbalizers": ("d.jsonl", _jsonl(_reviews(3) + [{"text": "hm", "label": "neutral"}]), CLS_SPEC,
                                  ["d.jsonl, line 4", "label 'neutral' is not one of", "add it to verbalizers"]),
    "template field the rows lack": ("d.jsonl", _jsonl(_reviews(4)), {**CLS_SPEC, "template": "{review} is"},
                                     ["the template names {review}", "d.jsonl", "line 1, has: text, label",
                                      "fix the spec's template"]),
    "label field the rows lack": ("d.jsonl", _jsonl(_reviews(4)), {**CLS_SPEC, "label": "stars"},
                                  ["label: names the field 'stars'", "d.jsonl", "has: text, label"]),
    "malformed jsonl": ("d.jsonl", _jsonl(_reviews(3)) + '{"text": "oops", "label": }\n', CLS_SPEC,
                        ["d.jsonl, line 4", "not valid JSON", "one JSON object"]),
    "jsonl line not an object": ("d.jsonl", _jsonl(_reviews(1)) + '["a", 1]\n', CLS_SPEC,
                                 ["d.jsonl, line 2", "expected a JSON object"]),
    "csv wrong column count": ("d.csv", "text,label\nfine,positive\nnice, warm,positive\n", CLS_SPEC,
                               ["d.csv, line 3", "3 columns but the header (line 1) has 2", "quote fields"]),
    "csv unclosed quote": ("d.csv", 'text,label\n"fine,positive\n', CLS_SPEC,
                           ["d.csv, line", "malformed CSV", "close the quoted field"]),
    "answer index out of range": ("d.csv", "question,a,b,c,answer\nq1,x,y,z,0\nq2,x,y,z,3\n", MC_SPEC,
                                  ["d.csv, line 3", "answer 3 is out of range for 3 choices", "0-based"]),
    "answer text not a choice": ("d.csv", "question,a,b,c,answer\nq1,x,y,z,w\n", MC_SPEC,
                                 ["d.csv, line 2", "answer 'w' is neither one of the choices"]),
    "choices field not a list": ("d.csv", "question,opts,answer\nq,x,0\n",
                                 {"template": "{question}", "choices": "opts", "answer": "answer"},
                                 ["d.csv, line 2", "not a list of choices", "one column per choice"]),
    "null field": ("d.jsonl", _jsonl(_reviews(2) + [{"text": None, "label": "positive"}]), CLS_SPEC,
                   ["d.jsonl, line 3", "field 'text' is null"]),
    "list in template": ("d.jsonl", _jsonl([{"text": ["a"], "label": "positive"}]), CLS_SPEC,
                         ["d.jsonl, line 1", "holds a list", "template can only show text"]),
    "completion holds the stop string": ("d.jsonl", _jsonl([{"q": "q", "a": "two\nlines"}] * 4), GEN_SPEC,
                                         ["d.jsonl, line 1", "contains the stop string '\\n'", "set stop:"]),
    "too few rows to split": ("d.jsonl", _jsonl(_reviews(2)), CLS_SPEC,
                              ["d.jsonl: 2 row(s) are too few", "give dev/test their own files"]),
    "duplicate csv header": ("d.csv", "text,text,label\na,b,positive\n", CLS_SPEC,
                             ["d.csv, line 1", "'text' twice"]),
    "unsupported suffix": ("d.json", "[]", CLS_SPEC, ["unsupported data file type '.json'", "use .jsonl"]),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_one_clear_message(tmp_path, case):
    name, text, spec, fragments = BAD_DATA[case]
    task = CustomTask(_write(tmp_path, name, text), spec)  # the spec is fine: data errors surface in check()
    with pytest.raises(ValueError) as e:
        task.check()
    for fragment in fragments:
        assert fragment in str(e.value), (fragment, str(e.value))


BAD_SPECS = {
    "none of label/choices/completion": ({"template": "{text}"}, ["give exactly one of label", "got none of them"]),
    "two of label/choices/completion": ({**CLS_SPEC, "completion": "text"}, ["got label and completion"]),
    "unknown key": ({**CLS_SPEC, "lables": "x"}, ["unknown key(s) 'lables' (did you mean 'label'?)", "valid keys:"]),
    "label without verbalizers": ({"template": "{text}", "label": "label"}, ["label needs verbalizers:"]),
    "verbalizers without label": ({**MC_SPEC, "verbalizers": ["a", "b"]}, ["verbalizers only applies with label"]),
    "stop without completion": ({**CLS_SPEC, "stop": "."}, ["stop only applies with completion"]),
    "no template": ({"label": "l", "verbalizers": ["a", "b"]}, ["missing template:"]),
    "template without a field": ({**CLS_SPEC, "template": "Sentiment:"}, ["names no field"]),
    "malformed template": ({**CLS_SPEC, "template": "{text} }"}, ["is malformed", "{{ and }}"]),
    "format spec in template": ({**CLS_SPEC, "template": "{text!r}"}, ["not a plain field name"]),
    "template shows the answer": ({**CLS_SPEC, "template": "{text} {label}"}, ["shows {label}", "give its answer away"]),
    "one verbalizer": ({**CLS_SPEC, "verbalizers": ["good"]}, ["at least two"]),
    "shared verbalizer": ({**CLS_SPEC, "verbalizers": {"a": "ok", "b": "ok"}}, ["share a verbalizer"]),
    "metric of another kind": ({**CLS_SPEC, "metric": "em"}, ["metric 'em' does not apply to classification"]),
    "normalize without choices": ({**CLS_SPEC, "normalize": True}, ["normalize only applies with choices"]),
    "unknown split in files": ({**CLS_SPEC, "files": {"valid": "v.jsonl"}}, ["unknown split(s) 'valid'"]),
    "fractions leave no train rows": ({**CLS_SPEC, "split": {"dev": 0.5, "test": 0.5}}, ["leave no training rows"]),
    "fraction and file for one split": ({**CLS_SPEC, "files": {"dev": "d.jsonl"}, "split": {"dev": 0.1}},
                                        ["dev has a file (files.dev) and a fraction (split.dev)"]),
    "separator holds the stop": ({**GEN_SPEC, "separator": "\n"}, ["contains the stop string"]),
    "not a mapping": (["template"], ["must be a mapping"]),
    "no spec": (None, ["needs a task spec", "--task-spec spec.yaml"]),
}


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_bad_spec_one_clear_message(tmp_path, case):
    spec, fragments = BAD_SPECS[case]
    with pytest.raises(ValueError) as e:
        CustomTask(_write(tmp_path, "d.jsonl", _jsonl(_reviews(10))), spec)
    for fragment in fragments:
        assert fragment in str(e.value), (fragment, str(e.value))


def test_spec_file_errors_name_the_file(tmp_path):
    f = _write(tmp_path, "spec.yaml", "template: '{text}'\nlabel: label\nverbalizer: [a, b]\n")
    with pytest.raises(ValueError, match=r"spec\.yaml: unknown key\(s\) 'verbalizer' \(did you mean 'verbalizers'"):
        load_spec(f)
    with pytest.raises(ValueError, match=r"bad\.yaml, line 2: not valid YAML"):
        load_spec(_write(tmp_path, "bad.yaml", "template: [unclosed\n"))
    with pytest.raises(FileNotFoundError, match="task spec file not found"):
        load_spec(tmp_path / "missing.yaml")


def test_missing_files_and_conflicts(tmp_path):
    with pytest.raises(FileNotFoundError, match="data file not found: .*nope.jsonl"):
        CustomTask(tmp_path / "nope.jsonl", CLS_SPEC).check()
    train = _write(tmp_path, "train.jsonl", _jsonl(_reviews(6)))
    with pytest.raises(FileNotFoundError, match="data file not found: .*dev.jsonl.*relative to the folder"):
        CustomTask(train, {**CLS_SPEC, "files": {"dev": "dev.jsonl"}}).check()
    with pytest.raises(ValueError, match="files.train is .*other.jsonl but --task names"):
        CustomTask(train, {**CLS_SPEC, "files": {"train": "other.jsonl"}}).check()
    with pytest.raises(ValueError, match="--data-dir is for the built-in tasks"):
        CustomTask(train, CLS_SPEC).load("train", data_dir=str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no train file"):
        CustomTask(str(tmp_path / "empty"), CLS_SPEC).check()


# --------------------------------------------------------------------------- through the CLI and the Python API

TINY = ["--model", "tiny-llama", "--batch-size", "4", "--max-length", "64", "--lr", "1e-3", "--no-progress"]


@pytest.mark.parametrize("data, spec, metric, n_test", [("reviews.jsonl", "reviews.yaml", "accuracy", 1),
                                                        ("quiz.csv", "quiz.yaml", "accuracy", 2),
                                                        ("capitals.jsonl", "capitals.yaml", "em", 1)])
def test_cli_trains_3_steps_and_evaluates(tmp_path, capsys, data, spec, metric, n_test):
    from zotune.cli import main

    out = tmp_path / "run"
    task = ["--task", str(DATA / data), "--task-spec", str(DATA / spec)]
    assert main(["train", *TINY, *task, "--steps", "3", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert (res["steps"], res["metric"], res["test_examples"], res["stopped"]) == (3, metric, n_test, None)
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    capsys.readouterr()
    assert main(["eval", "--run", str(out), "--json"]) == 0  # the spec comes back from the run's config.yaml
    again = json.loads(capsys.readouterr().out)
    assert (again["accuracy"], again["n"], again["metric"]) == (res["test_accuracy"], n_test, metric)
    assert main(["eval", "--model", "tiny-llama", *task, "--max-length", "64", "--json"]) == 0
    zero_shot = json.loads(capsys.readouterr().out)
    assert zero_shot["accuracy"] == res["zero_shot_test_accuracy"]


def test_python_api_dataset_object(tmp_path):
    datasets = pytest.importorskip("datasets")
    from zotune.models import load_model
    from zotune.tasks import encode, evaluate, get_task, loss_fn

    model, tok = load_model("tiny-llama", device="cpu")
    ds = datasets.Dataset.from_list(_reviews(20))
    ds.save_to_disk(str(tmp_path / "saved"))
    for source in (ds, str(tmp_path / "saved")):
        task = get_task(source, spec=CLS_SPEC)
        assert isinstance(task, CustomTask)
        loss = loss_fn(model, encode(task, tok, task.load("train")[:4], max_length=32))
        assert loss.ndim == 0 and bool(loss.isfinite())
        res = evaluate(model, tok, task, task.load("test"), max_length=32)
        assert res["metric"] == "accuracy" and res["n"] == 2 and 0 <= res["score"] <= 1


def _spec_args(tmp_path, spec) -> list[str]:
    if spec is None:
        return []
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return ["--task-spec", str(path)]


CLI_CASES = {f"data: {k}": (v[0], v[1], v[2], v[3]) for k, v in BAD_DATA.items()}
CLI_CASES.update({f"spec: {k}": ("d.jsonl", _jsonl(_reviews(10)), v[0], v[1]) for k, v in BAD_SPECS.items()})


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_bad_input_exits_2_without_run_folder(tmp_path, capsys, monkeypatch, case):
    from zotune.cli import main

    name, text, spec, fragments = CLI_CASES[case]
    monkeypatch.chdir(tmp_path)  # the default run folder would be runs/... here
    data = _write(tmp_path, name, text)
    out = tmp_path / "out"
    code = main(["train", "--model", "tiny-llama", "--task", str(data), *_spec_args(tmp_path, spec),
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("zotune: error:") and err.count("zotune: error:") == 1 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_cli_inline_spec_in_config_and_eval_errors(tmp_path, capsys, monkeypatch):
    from zotune.cli import main

    monkeypatch.chdir(tmp_path)
    data = _write(tmp_path, "d.jsonl", _jsonl(_reviews(9) + [{"text": "hm", "label": "neutral"}]))
    config = _write(tmp_path, "run.yaml", yaml.safe_dump({"task": str(data), "task_spec": CLS_SPEC}))
    assert main(["train", "--model", "tiny-llama", "--config", str(config), "--out", "out"]) == 2
    assert "d.jsonl, line 10: label 'neutral' is not one of" in capsys.readouterr().err
    spec = _spec_args(tmp_path, CLS_SPEC)
    assert main(["eval", "--model", "tiny-llama", "--task", str(data), *spec]) == 2
    assert "d.jsonl, line 10: label 'neutral'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_run_with_relative_paths_evaluates_from_another_folder(tmp_path, capsys, monkeypatch):
    """config.yaml stores the data paths absolute, so `eval --run` works from any working directory."""
    import shutil

    from zotune.cli import main

    work = tmp_path / "work"
    work.mkdir()
    for name in ("reviews.jsonl", "reviews.yaml"):
        shutil.copy(DATA / name, work / name)
    monkeypatch.chdir(work)
    assert main(["train", *TINY, "--task", "reviews.jsonl", "--task-spec", "reviews.yaml", "--steps", "1",
                 "--out", "run"]) == 0
    res = json.loads((work / "run" / "results.json").read_text())
    assert res["task_name"] == "reviews" and res["task"] == str(work / "reviews.jsonl")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["eval", "--run", str(work / "run"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == res["test_accuracy"]
