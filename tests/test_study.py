"""`zotune bench study` (``python -m zotune.study``) on the tiny random Llama: the grid and its
refusals, a study that writes its table, plots and report, a rerun that runs nothing again, a
failing cell recorded while the others finish, and a study stopped by SIGTERM continued."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from zotune.study import main
from zotune.study_grid import read_study
from zotune.study_spec import StudyError

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "study" / "tiny.yaml"
DEFAULTS = {"steps": 3, "batch_size": 4, "eval_every": 0, "eval_examples": 8, "test_examples": 8, "max_length": 48,
            "noise": "rademacher"}


def _study(tmp_path, name="study.yaml", **fields) -> Path:
    spec = {"model": "tiny-llama", "defaults": DEFAULTS, "tasks": ["sst2"], "seeds": [0],
            "methods": [{"name": "MeZO", "optimizer": "mezo", "grid": {"lr": [1e-3]}}], **fields}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def _rows(out: Path) -> dict:
    return {r["label"] + ":" + r["kind"]: r for r in json.loads((out / "results.json").read_text())["rows"]}


# --------------------------------------------------------------------------- the grid

def test_tiny_study_expands_to_its_cells_with_stable_ids():
    cells = read_study(TINY).cells
    assert [(c.kind, c.label) for c in cells] == [("sanity", "textbook-mezo"), ("sanity", "mezo"),
                                                  ("zero-shot", "zero-shot"), ("train", "MeZO"), ("train", "MeZO"),
                                                  ("train", "FO-AdamW")]
    assert [c.id for c in cells] == [c.id for c in read_study(TINY).cells]  # the same file, the same folders
    assert len({c.id for c in cells}) == len(cells)
    mezo = [c for c in cells if c.label == "MeZO"]
    assert [c.config.lr for c in mezo] == [1e-3, 1e-2] and mezo[0].grid == {"lr": 1e-3}
    adamw = cells[-1].config
    assert adamw.noise is None and adamw.eps is None and adamw.steps == 4  # defaults' ZO-only fields left out
    book, ours = (c.config for c in cells[:2])
    assert (book.optimizer, ours.optimizer) == ("textbook-mezo", "mezo")
    assert book.noise == ours.noise == "gaussian"
    assert {k: v for k, v in book.to_dict().items() if k != "optimizer"} == \
           {k: v for k, v in ours.to_dict().items() if k != "optimizer"}


def test_grid_modes_overrides_and_a_changed_setting_make_new_cells(tmp_path):
    methods = [{"name": "ZO-Adam", "optimizer": "zo-adam", "modes": ["ft", "lora"], "grid": {"lr": [1e-4, 1e-3]},
                "opt": {"betas": [0.9, 0.99]}, "mode_overrides": {"lora": {"grid": {"lr": [1e-2]}}}},
               {"name": "SGD-mom", "optimizer": "zo-sgd-momentum", "grid": {"opt.momentum": [0.5, 0.9]}}]
    cells = read_study(_study(tmp_path, seeds=[0, 1], methods=methods)).cells
    adam = [(c.config.mode, c.config.lr, c.config.seed) for c in cells if c.label == "ZO-Adam"]
    assert adam == [("ft", 1e-4, 0), ("ft", 1e-4, 1), ("ft", 1e-3, 0), ("ft", 1e-3, 1), ("lora", 1e-2, 0),
                    ("lora", 1e-2, 1)]
    momentum = [c.config.optimizer_kwargs["momentum"] for c in cells if c.label == "SGD-mom"]
    assert momentum == [0.5, 0.5, 0.9, 0.9]
    narrowed = [{**methods[0], "task_overrides": {"sst2": {"modes": ["lora"], "grid": {"lr": [5e-3]}}}}]
    narrow = read_study(_study(tmp_path, "c.yaml", methods=narrowed)).cells
    assert [(c.config.mode, c.config.lr) for c in narrow] == [("lora", 5e-3)]  # the task's settings win
    changed = read_study(_study(tmp_path, "b.yaml", seeds=[0, 1], methods=methods,
                                defaults={**DEFAULTS, "steps": 5})).cells
    assert not {c.id for c in cells} & {c.id for c in changed}
    spelled_out = read_study(_study(tmp_path, "d.yaml", seeds=[0, 1], methods=methods,
                                    defaults={**DEFAULTS, "lora_r": 8, "grad_accum": 1})).cells  # the defaults
    assert [c.id for c in spelled_out] == [c.id for c in cells]
    # null in a grid is the optimizer's default: the same cell as the method without that grid key
    plain = read_study(_study(tmp_path, "e.yaml", methods=[{"name": "F", "optimizer": "fzoo"}])).cells
    nulled = read_study(_study(tmp_path, "f.yaml", methods=[{"name": "F", "optimizer": "fzoo",
                                                             "grid": {"lr": [None, 1e-4], "opt.num_directions": [None]}}])).cells
    assert [c.config.lr for c in nulled] == [None, 1e-4] and nulled[0].config.optimizer_kwargs == {}
    assert nulled[0].id == plain[0].id and nulled[1].id != plain[0].id


@pytest.mark.parametrize("change, phrase", [
    ({"methods": [{"name": "X", "optimizer": "mezzo"}]}, "unknown optimizer 'mezzo'"),
    ({"tasks": ["sst3"]}, "unknown task 'sst3'"),
    ({"methods": [{"name": "X", "optimizer": "mezo", "modes": ["full"]}]}, "unknown mode(s) ['full']"),
    ({"defaults": {**DEFAULTS, "stepz": 3}}, "unknown config field(s) 'stepz' in defaults"),
    ({"methods": [{"name": "X", "optimizer": "mezo", "grid": {"lr": ["fast"]}}]}, "config field 'lr' must be float"),
    ({"methods": [{"name": "X", "optimizer": "mezo", "opt": {"momentum": 0.9}}]}, "does not take ['momentum']"),
    ({"methods": [{"name": "X", "optimizer": "mezo", "config": {"optimizer": "sgd"}}]}, "sets optimizer"),
    ({"methods": [{"name": "X", "optimizer": "mezo"}, {"name": "X", "optimizer": "zo-adam"}]}, "used twice"),
    ({"method": []}, "unknown key(s) 'method'"),
    ({"tasks": ["rte"], "data_dir": "/nonexistent-data"}, "/nonexistent-data/RTE/val.jsonl not found"),
], ids=["optimizer", "task", "mode", "field", "value", "option", "owned field", "twice", "top key", "data"])
def test_a_bad_study_is_refused_before_anything_is_written(tmp_path, capsys, change, phrase):
    out = tmp_path / "out"
    assert main([str(_study(tmp_path, **change)), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert phrase in err and "Traceback" not in err
    assert not out.exists()


REQUIRED = {"adamw", "sgd", "mezo", "zo-sgd-sign", "zo-sgd-momentum", "zo-sgd-cons", "zo-adam", "forward-grad",
            "subzero", "lozo", "lezo", "sparse-zo", "helene", "mezo-gv", "mezo-greedy", "fzoo", "zo-muon",
            "sparse-mezo", "mezo-svrg", "adanaged"}


@pytest.mark.parametrize("name", ["smollm2-cpu", "smollm2-gpu"])
def test_shipped_studies_are_valid_and_cover_every_method(name):
    study = read_study(ROOT / "configs" / "study" / f"{name}.yaml")
    train = [c for c in study.cells if c.kind == "train"]
    assert {c.config.optimizer for c in train} == REQUIRED
    assert {c.config.mode for c in train} == {"ft", "lora", "prefix"}
    assert set(study.baselines) == {"zero-shot", "icl"} and study.sanity["task"] == "sst2"
    adanaged = {(c.config.lr, c.config.eps) for c in train if c.config.optimizer == "adanaged"}
    assert adanaged == {(None, None)}  # its defaults only
    if name == "smollm2-gpu":
        assert set(study.tasks) == {"sst2", "rte", "cb", "boolq", "wsc", "wic", "multirc", "copa", "squad"}
        assert study.seeds == [0, 1, 2]
    else:
        assert {c.config.task for c in train} == {"sst2", "copa", "cb"} and study.cost["s_per_example_forward"]


def test_malformed_yaml_and_a_foreign_out_folder_are_refused(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: tiny-llama\ntasks: [sst2\n")
    with pytest.raises(StudyError, match="cannot parse study file"):
        read_study(bad)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main([str(_study(tmp_path)), "--out", str(foreign)]) == 2
    assert "holds no study" in capsys.readouterr().err
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_dry_run_lists_cells_and_cost_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    study = _study(tmp_path, cost={"s_per_example_forward": {"sst2": 0.5}},
                   methods=[{"name": "MeZO", "optimizer": "mezo", "grid": {"lr": [1e-3]}},
                            {"name": "FZOO", "optimizer": "fzoo"}])
    assert main([str(study), "--out", str(out), "--dry-run", "--jobs", "2"]) == 0
    text = capsys.readouterr().out
    assert not out.exists()
    lines = {line.split()[0]: line.split() for line in text.splitlines() if line.startswith("sst2-")}
    mezo = next(v for k, v in lines.items() if "-mezo-" in k)
    fzoo = next(v for k, v in lines.items() if "-fzoo-" in k)
    # 3 steps x 2 closure calls (MeZO) and x (1 + 8 directions) (FZOO's defaults); examples: x 4,
    # plus the 8 test examples twice and the 8 dev examples of the one evaluation (at the end)
    assert (mezo[2], fzoo[2]) == ("6", "27")
    assert (mezo[3], fzoo[3]) == (str(6 * 4 + 16 + 8), str(27 * 4 + 16 + 8))
    assert "cell-hours" in text and "--jobs 2" in text
    from zotune.cli import main as zotune_main  # the same through `zotune bench study`

    assert zotune_main(["bench", "study", str(study), "--out", str(out), "--dry-run", "--jobs", "2"]) == 0
    assert capsys.readouterr().out == text and not out.exists()


# --------------------------------------------------------------------------- running

def test_study_runs_records_a_failure_reports_and_never_reruns_a_finished_cell(tmp_path, capsys):
    methods = [{"name": "MeZO", "optimizer": "mezo", "grid": {"lr": [1e-3]}},
               {"name": "Broken", "optimizer": "hybrid-zo", "opt": {"fo_params": "no-such-parameter"}}]
    study = _study(tmp_path, methods=methods, baselines=["zero-shot"], keep_weights=False,
                   sanity={"task": "sst2", "lr": 1e-3, "eps": 1e-3})
    out = tmp_path / "out"
    assert main([str(study), "--out", str(out), "--in-process"]) == 1  # one cell failed
    rows = _rows(out)
    broken = rows["Broken:train"]
    assert broken["status"] == "failed" and "matches no trainable parameter" in broken["error"]
    finished = [r for r in rows.values() if r["status"] == "done"]
    assert len(finished) == 4
    mezo = rows["MeZO:train"]
    assert mezo["steps"] == 3 and mezo["forward_passes"] == 6 and 0 <= mezo["test"] <= 1 and mezo["s_per_step"] > 0
    assert mezo["peak_memory_mb"] > 0 and mezo["state_bytes"] == 0 and mezo["trainable_parameters"] > 0
    assert rows["zero-shot:zero-shot"]["test"] == mezo["zero_shot"]  # the same test set, before training
    run = out / "cells" / mezo["id"]  # keep_weights: false leaves the trajectory and the records only
    assert (run / "trajectory.zot").is_file() and not (run / "model.safetensors").exists()
    assert not list(run.glob("checkpoint-*"))
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("id,kind,label") and len(csv_lines) == 1 + len(rows)
    for name in ("dev_vs_forward_passes.png", "loss_vs_forward_passes.png", "test_vs_peak_memory.png",
                 "step_time.png"):
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    verdict = json.loads((out / "results.json").read_text())["sanity"]
    assert verdict["n"] == 8 and verdict["agree"] == (verdict["difference"] <= verdict["tolerance"])
    assert ("agree within noise" if verdict["agree"] else "SANITY FAILED") in report
    assert broken["id"] in report and "## Reading" in report and "Not generated" in report
    assert "| MeZO | ft | lr=0.001" in report

    stamps = {r["id"]: (out / "cells" / r["id"] / "results.json").stat().st_mtime_ns for r in finished}
    capsys.readouterr()
    assert main([str(study), "--out", str(out), "--in-process"]) == 1  # the failed cell is tried again
    assert "4 of 5 cells already finished; 1 to run" in capsys.readouterr().err
    assert stamps == {i: (out / "cells" / i / "results.json").stat().st_mtime_ns for i in stamps}
    assert main([str(study), "--out", str(out), "--report-only"]) == 1
    assert stamps == {i: (out / "cells" / i / "results.json").stat().st_mtime_ns for i in stamps}

    # a reading written into the report survives a regeneration, and --publish copies report and plots
    text = (out / "report.md").read_text()
    (out / "report.md").write_text(text.split("\n## Reading\n")[0] + "\n## Reading\n\nMeZO wins here.\n")
    page = tmp_path / "docs" / "results.md"
    assert main([str(study), "--out", str(out), "--report-only", "--publish", str(page)]) == 1
    assert (out / "report.md").read_text().rstrip().endswith("## Reading\n\nMeZO wins here.")
    published = page.read_text()
    assert published.rstrip().endswith("MeZO wins here.") and "Not generated" not in published
    assert "](results/step_time.png)" in published and "](plots/" not in published
    assert (tmp_path / "docs" / "results" / "step_time.png").read_bytes()[:4] == b"\x89PNG"


def test_curves_read_the_metrics_the_run_logged_and_the_loss_is_smoothed_over_trailing_steps(tmp_path):
    from zotune.study_plots import _trailing_mean
    from zotune.study_table import curve

    records = [{"step": 1, "loss": 1.0, "forward_passes": 2}, {"step": 2, "loss": 3.0, "forward_passes": 4},
               {"step": 3, "loss": 2.0, "forward_passes": 6, "dev_accuracy": 0.5}, {"step": 4, "skipped": True}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    assert curve(tmp_path, "loss") == [(2, 1.0), (4, 3.0), (6, 2.0)]
    assert curve(tmp_path, "dev_accuracy") == [(6, 0.5)]
    assert _trailing_mean(curve(tmp_path, "loss"), 2) == [(2, 1.0), (4, 2.0), (6, 2.5)]
    assert curve(tmp_path / "missing", "loss") == []
    from zotune.study_plots import _styles

    styles = _styles([f"method {k}" for k in range(45)])  # more methods than colours: no two look alike
    assert len({(v["color"], v["marker"]) for v in styles.values()}) == 45


@pytest.mark.parametrize("code", [143, 130, -15, -2])
def test_a_cell_stopped_by_the_study_signal_is_reported_stopped_not_failed(tmp_path, code):
    """-15: SIGTERM reached the cell while it loaded, before its handler was installed."""
    from zotune.study_run import _outcome

    assert _outcome(tmp_path, code, 1.0).startswith("stopped by a signal")
    assert _outcome(tmp_path, 1, 1.0).startswith("FAILED")


def test_sanity_verdict_uses_the_standard_error_of_the_difference_and_a_failure_tops_the_report(tmp_path):
    """n = 100 dev examples: 0.52 against 0.50 is within 2·sqrt(2·0.25/100) ≈ 0.14; 0.90 against 0.50
    is not, and the report then opens with SANITY FAILED."""
    from zotune.study_report import render_report
    from zotune.study_table import COLUMNS, sanity_verdict

    study = read_study(_study(tmp_path, sanity={"task": "sst2", "lr": 1e-3, "steps": 2, "eval_examples": 100}))
    book, ours = study.cells[:2]

    def rows(p_book, p_ours):
        return [{**dict.fromkeys(COLUMNS), "id": c.id, "kind": "sanity", "label": c.label, "task": "sst2",
                 "status": "done", "final_dev": p, "best_dev": p, "test": p, "s_per_step": 1.0}
                for c, p in ((book, p_book), (ours, p_ours))]

    close = sanity_verdict(study, rows(0.52, 0.50))
    assert close["n"] == 100 and close["agree"]
    assert abs(close["tolerance"] - 2 * (0.2496 / 100 + 0.25 / 100) ** 0.5) < 1e-9
    far = sanity_verdict(study, rows(0.90, 0.50))
    assert far["agree"] is False
    table = {"rows": rows(0.90, 0.50), "best": [], "sanity": far}
    report = render_report(study, table, "zotune bench study x.yaml", [])
    assert report.splitlines()[2].startswith("> **SANITY FAILED**") and "DISAGREE beyond noise" in report
    assert "SANITY FAILED" not in render_report(study, {**table, "sanity": close}, "cmd", [])


def test_a_study_stopped_by_sigterm_keeps_finished_cells_and_continues_the_rest(tmp_path):
    """Two cells at a time in their own processes; SIGTERM to the study stops both after a step
    with a checkpoint; the rerun continues each from its own trajectory (the same file, appended)."""
    long = {**DEFAULTS, "steps": 40, "save_every": 10}
    study = _study(tmp_path, defaults=long,
                   methods=[{"name": "MeZO", "optimizer": "mezo", "grid": {"lr": [1e-3, 1e-4]}}])
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "zotune.study", str(study), "--out", str(out), "--jobs", "2"],
                            cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    cells = [c.id for c in read_study(study).cells]
    deadline = time.time() + 120
    while time.time() < deadline and not all((out / "cells" / c / "trajectory.zot").is_file() for c in cells):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    trajectories = {c: (out / "cells" / c / "trajectory.zot") for c in cells}
    stopped = [c for c in cells if not (out / "cells" / c / "results.json").exists()]
    assert stopped, "both cells finished before the signal: lengthen them"
    inodes = {c: trajectories[c].stat().st_ino for c in stopped}
    assert main([str(study), "--out", str(out), "--in-process"]) == 0
    assert {r["status"] for r in json.loads((out / "results.json").read_text())["rows"]} == {"done"}
    assert all(json.loads((out / "cells" / c / "results.json").read_text())["steps"] == 40 for c in cells)
    assert inodes == {c: trajectories[c].stat().st_ino for c in stopped}  # continued, not started again
