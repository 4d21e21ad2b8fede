"""The benchmark suite: golden prompts and loaders on the real files (skipped when the benchmark
folder is absent), ReCoRD and DROP on rows written here in their official formats, split protocol."""

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from zotune.tasks import TASKS, Example, get_task
from zotune.tasks.data import mezo_splits, task_file

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ZOTUNE_DATA") or REPO.parent / "shared" / "data")
needs_data = pytest.mark.skipif(not (DATA / "RTE" / "val.jsonl").is_file(), reason=f"benchmark data not at {DATA}")


def first_val_example(name):
    """The example built from the first row of the task's official validation file."""
    t = get_task(name)
    return t.read(task_file(name, t.folder, t.val_files, str(DATA)))[0]


def test_registry_has_the_eleven_tasks():
    assert set(TASKS) == {"sst2", "rte", "cb", "boolq", "wsc", "wic", "multirc", "copa", "record", "squad", "drop"}
    kinds = {n: (get_task(n).kind, get_task(n).metric) for n in TASKS}
    assert kinds["copa"] == kinds["record"] == ("multiple_choice", "accuracy")
    assert kinds["squad"] == kinds["drop"] == ("generation", "f1")
    assert all(kinds[n] == ("classification", "accuracy") for n in ("sst2", "rte", "cb", "boolq", "wsc", "wic", "multirc"))


GOLDEN = {  # MeZO's templates (Malladi et al. 2023, App. E) applied by hand to row 1 of each val file
    "rte": ('Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age 44, according '
            'to the Christopher Reeve Foundation.\nDoes this mean that "Christopher Reeve had an accident." is true? '
            'Yes or No?\n', ("Yes", "No"), 1),
    "cb": ("Suppose Valence the void-brain, Valence the virtuous valet. Why couldn't the figger choose his own "
           "portion of titanic anatomy to shaft? Did he think he was helping? Can we infer that \"Valence was "
           "helping\"? Yes, No, or Maybe?\n", ("Yes", "No", "Maybe"), 1),
    "wsc": ("Bernard , who had not told the government official that he was less than 21 when he filed for a "
            "homestead claim, did not consider that he had done anything dishonest. Still, anyone who knew that he "
            "was 19 years old could take his claim away from him .\nIn the previous sentence, does the pronoun "
            "\"him\" refer to anyone? Yes or No?\n", ("No", "Yes"), 0),
    "wic": ('Does the word "class" have the same meaning in these two sentences? Yes, No?\nAn emerging professional '
            'class.\nApologizing for losing your temper, even though you were badly provoked, showed real class.\n',
            ("No", "Yes"), 0),
    "copa": ("The man turned on the faucet so", (" the toilet filled with water.", " water flowed from the spout."), 1),
}


@needs_data
@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_prompt(name):
    prompt, candidates, label = GOLDEN[name]
    assert first_val_example(name) == Example(prompt=prompt, candidates=candidates, label=label)


@needs_data
def test_golden_prompts_of_long_passages():
    ex = first_val_example("boolq")  # passage, then the question capitalised with a "?"
    assert ex.prompt.startswith("Ethanol fuel -- All biomass goes through at least some of these steps:")
    assert ex.prompt.endswith(" than producing gasoline. Does ethanol take more energy make that produces?\n")
    assert (ex.candidates, ex.label) == (("No", "Yes"), 0)
    ex = first_val_example("multirc")
    assert ex.prompt.startswith("What causes a change in motion? The application of a force.")
    assert ex.prompt.endswith("This requires only a very small force. \nQuestion: Would the mass of a baseball affect "
                              'how much force you have to use to pick it up?\nI found this answer "No". Is that '
                              "correct? Yes or No?\n")
    assert ex.label == 0
    ex = first_val_example("squad")
    assert ex.prompt.startswith("Title: Super_Bowl_50\nContext: Super Bowl 50 was an American football game")
    assert ex.prompt.endswith("feature the Arabic numerals 50.\nQuestion: Which NFL team represented the AFC at "
                              "Super Bowl 50?\nAnswer:")
    assert ex.answers == ("Denver Broncos",) and ex.candidates == ()
    assert get_task("squad").target(ex) == " Denver Broncos\n"


# (train, dev, test) sizes under MeZO's protocol, and the label counts of the test sample
EXPECTED = {
    "sst2": ((1000, 500, 1000), None),
    "rte": ((1000, 500, 277), {0: 146, 1: 131}),       # test = the whole validation file
    "cb": ((150, 100, 56), {0: 23, 1: 28, 2: 5}),       # dev 100 as in MeZO
    "boolq": ((1000, 500, 1000), None),                 # validation only: all three from it
    "wsc": ((438, 100, 104), {0: 66, 1: 38}),           # 538 distinct training rows
    "wic": ((1000, 500, 638), {0: 319, 1: 319}),
    "multirc": ((1000, 500, 1000), None),
    "copa": ((300, 100, 100), {0: 55, 1: 45}),
    "squad": ((1000, 500, 1000), None),
}


@needs_data
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_loader_on_the_real_files(name):
    t = get_task(name)
    splits = {s: t.load(s, data_dir=str(DATA)) for s in ("train", "dev", "test")}
    sizes, test_labels = EXPECTED[name]
    assert tuple(len(splits[s]) for s in ("train", "dev", "test")) == sizes
    assert splits["train"] == t.load("train", data_dir=str(DATA))  # the fixed seed: the same draw every time
    if t.kind != "generation":
        counts = {s: Counter(ex.label for ex in v) for s, v in splits.items()}
        assert all(len(c) == len(t.load("test", data_dir=str(DATA))[0].candidates) for c in counts.values())
        assert all(min(c.values()) >= 0.03 * sum(c.values()) for c in counts.values())  # no class lost in a draw
        if test_labels:
            assert dict(counts["test"]) == test_labels
    else:
        assert all(ex.answers and not ex.candidates for v in splits.values() for ex in v)
    assert not set(splits["train"]) & set(splits["dev"])  # rows repeated in a train file are drawn once


@needs_data
def test_boolq_splits_are_disjoint_parts_of_validation():
    t = get_task("boolq")
    splits = {s: [ex.prompt for ex in t.load(s, data_dir=str(DATA))] for s in ("train", "dev", "test")}
    assert not set(splits["test"]) & (set(splits["train"]) | set(splits["dev"]))
    assert sum(1 for _ in open(DATA / "BoolQ" / "val.jsonl")) == 3270


def test_missing_data_names_file_and_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("ZOTUNE_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match=r"--data-dir.*RTE/val.jsonl"):
        get_task("rte").load("train")
    with pytest.raises(FileNotFoundError, match=r"SQuAD/dev-v1.1.json not found"):
        get_task("squad").load("test", data_dir=str(tmp_path))
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "val.jsonl").write_text('{"premise": "p", "hypothesis": "h", "label": "entailment"}\n')
    with pytest.raises(FileNotFoundError, match=r"RTE/train.jsonl not found"):
        get_task("rte").load("train", data_dir=str(tmp_path))
    monkeypatch.setenv("ZOTUNE_DATA", str(tmp_path))  # the default data folder
    (tmp_path / "RTE" / "train.jsonl").write_text('{"premise": "p", "hypothesis": "h", "label": "maybe"}\n')
    with pytest.raises(ValueError, match=r"train.jsonl, line 1: label 'maybe' is not one of"):
        get_task("rte").load("train")
    (tmp_path / "RTE" / "train.jsonl").write_text('{"premise": "p", "hypothesis": "h", "label": "entailment"}\n{oops\n')
    with pytest.raises(ValueError, match=r"train.jsonl, line 2: not valid JSON"):
        get_task("rte").load("train")
    (tmp_path / "RTE" / "train.jsonl").write_text('\n{"premise": "p", "label": "entailment"}\n')
    with pytest.raises(ValueError, match=r"line 2: row lacks the field 'hypothesis'"):
        get_task("rte").load("train")


def test_malformed_json_files_name_the_problem(tmp_path):
    (tmp_path / "SQuAD").mkdir()
    dev = tmp_path / "SQuAD" / "dev-v1.1.json"
    dev.write_text("[]")
    with pytest.raises(ValueError, match=r"dev-v1.1.json: expected SQuAD's JSON object"):
        get_task("squad").load("test", data_dir=str(tmp_path))
    dev.write_text('{"data": [')
    with pytest.raises(ValueError, match=r"dev-v1.1.json: not valid JSON \(line 1"):
        get_task("squad").load("test", data_dir=str(tmp_path))
    dev.write_text('{"data": [{"title": "T", "paragraphs": [{"context": "c", "qas": [{"id": "1", "question": "q", '
                   '"answers": []}]}]}]}')
    with pytest.raises(ValueError, match=r"question '1' has no answers"):
        get_task("squad").load("test", data_dir=str(tmp_path))


def test_protocol_caps_and_disjointness():
    train, val = list(range(5000)), list(range(10_000, 12_000))
    s = mezo_splits(train, val)
    assert [len(s[k]) for k in ("train", "dev", "test")] == [1000, 500, 1000]
    assert not set(s["train"]) & set(s["dev"]) and set(s["test"]) <= set(val)
    small = mezo_splits(list(range(250)), list(range(56)), dev_size=100)
    assert [len(small[k]) for k in ("train", "dev", "test")] == [150, 100, 56]
    no_train = mezo_splits(None, list(range(3270)))
    assert [len(no_train[k]) for k in ("train", "dev", "test")] == [1000, 500, 1000]
    assert not set(no_train["test"]) & (set(no_train["train"]) | set(no_train["dev"]))


RECORD_ROW = {
    "idx": 0, "source": "Daily mail",
    "passage": {"text": "Paris (CNN) -- Marie Curie met Pierre Curie in Paris.\n@highlight\nCurie won twice",
                "entities": [{"start": 0, "end": 4}, {"start": 7, "end": 9}, {"start": 15, "end": 25},
                             {"start": 31, "end": 42}, {"start": 47, "end": 51}]},
    "qas": [{"idx": 0, "query": "@placeholder won the Nobel Prize twice.",
             "answers": [{"start": 15, "end": 25, "text": "Marie Curie"}]}],
}


def _write_record(folder):
    (folder / "ReCoRD").mkdir(parents=True)
    for split in ("train", "val"):
        rows = [dict(RECORD_ROW, idx=i) for i in range(3)]
        (folder / "ReCoRD" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_record_on_official_rows(tmp_path):
    _write_record(tmp_path)
    test = get_task("record").load("test", data_dir=str(tmp_path))
    assert len(test) == 3
    ex = test[0]
    assert ex.prompt == ("Paris (CNN) -- Marie Curie met Pierre Curie in Paris.\n@highlight\nCurie won twice\n"
                         "@placeholder won the Nobel Prize twice.\nQuestion: what is the \"@placeholder\"\nAnswer:")
    assert ex.candidates == (" Paris", " CNN", " Marie Curie", " Pierre Curie")  # distinct entities, in order
    assert ex.label == 2 and ex.answers == ("Marie Curie",)
    assert get_task("record").demonstration(ex).endswith("Answer: Marie Curie")


DROP_DATA = {
    "nfl_1": {"passage": "The Bears scored 7 points in the first quarter and 3 in the second.",
              "qa_pairs": [
                  {"question": "How many points did the Bears score? ", "query_id": "q1",
                   "answer": {"number": "10", "date": {"day": "", "month": "", "year": ""}, "spans": []},
                   "validated_answers": [{"number": "10", "date": {"day": "", "month": "", "year": ""}, "spans": []}]},
                  {"question": "Which quarters?", "query_id": "q2",
                   "answer": {"number": "", "date": {"day": "", "month": "", "year": ""},
                              "spans": ["first quarter", "second"]}},
                  {"question": "When?", "query_id": "q3",
                   "answer": {"number": "", "date": {"day": "4", "month": "July", "year": "1990"}, "spans": []}},
              ]},
}


def test_drop_on_official_rows(tmp_path):
    (tmp_path / "DROP").mkdir()
    for name in ("drop_dataset_train.json", "drop_dataset_dev.json"):
        (tmp_path / "DROP" / name).write_text(json.dumps(DROP_DATA))
    drop = get_task("drop")
    test = drop.load("test", data_dir=str(tmp_path))
    assert [ex.answers for ex in test] == [("10",), ("first quarter | second",), ("4 July 1990",)]
    assert test[0].prompt == ("Passage: The Bears scored 7 points in the first quarter and 3 in the second.\n"
                              "Question: How many points did the Bears score?\nAnswer:")
    assert drop.target(test[1]) == " first quarter | second\n"
    assert drop.score_answer("10.0", test[0]) == {"em": 1.0, "f1": 1.0}
    assert drop.score_answer("second | the first quarter", test[1]) == {"em": 1.0, "f1": 1.0}
    assert drop.score_answer("first quarter", test[1])["f1"] == 0.5  # one of two gold spans
