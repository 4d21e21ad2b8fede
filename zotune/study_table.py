"""The study's results table, read back from its cell folders: one row per cell, the best grid
point of each method, and the sanity verdict. Written as ``results.csv`` and ``results.json``.

Every number comes from a cell's own files (``results.json``, ``metrics.jsonl``, ``error.json``),
so the table can be rebuilt at any time (``--report-only``) and never holds a hand-typed value.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path

from zotune.run_folder import atomic_write, write_json
from zotune.study_cell import ERROR_FILE, RESULTS_FILE, cell_folder
from zotune.study_spec import Cell, Study

COLUMNS = ("id", "kind", "label", "optimizer", "task", "metric", "mode", "grid", "lr", "eps", "seed", "status",
           "test", "best_dev", "final_dev", "steps", "forward_passes", "train_time_s", "wall_time_s", "s_per_step",
           "peak_memory_mb", "peak_memory_kind", "state_bytes", "trainable_parameters", "zero_shot", "icl_shots",
           "error")
TRAINING = ("train", "sanity")
SANITY_Z = 2.0  # the sanity tolerance in standard errors


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _metrics(folder: Path) -> list[dict]:
    """The records of a cell's ``metrics.jsonl`` (none when it is missing or unreadable)."""
    try:
        return [json.loads(line) for line in (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    except (OSError, ValueError):
        return []


def step_seconds(folder: Path) -> float | None:
    """Median seconds per optimizer step from ``metrics.jsonl``: the time between consecutive logged
    steps, leaving out the intervals that end with a dev evaluation (``elapsed`` is taken after it)."""
    records = [r for r in _metrics(folder) if isinstance(r.get("elapsed"), (int, float)) and not r.get("skipped")]
    rates = [(b["elapsed"] - a["elapsed"]) / (b["step"] - a["step"]) for a, b in zip(records, records[1:])
             if b["step"] > a["step"] and "dev_accuracy" not in b and b["elapsed"] >= a["elapsed"]]
    return round(statistics.median(rates), 4) if rates else None


def curve(folder: Path, key: str) -> list[tuple[int, float]]:
    """(forward passes, ``key``) at each ``metrics.jsonl`` record of a training cell that has both:
    ``dev_accuracy`` at the dev evaluations, ``loss`` (the training loss the optimizer logs) at every step."""
    return [(r["forward_passes"], r[key]) for r in _metrics(folder)
            if r.get(key) is not None and r.get("forward_passes") is not None]


def cell_row(out: Path, cell: Cell) -> dict:
    folder = cell_folder(out, cell)
    c = cell.config
    row = dict.fromkeys(COLUMNS)
    row.update(id=cell.id, kind=cell.kind, label=cell.label, task=c.task, grid=json.dumps(cell.grid, sort_keys=True),
               icl_shots=c.icl_shots if cell.kind == "icl" else None)
    if cell.kind in TRAINING:
        row.update(optimizer=c.optimizer, mode=c.mode, lr=c.lr, eps=c.eps, seed=c.seed)
    results, error = _read(folder / RESULTS_FILE), _read(folder / ERROR_FILE)
    if results is None:
        started = (folder / "config.yaml").is_file() or (folder / "baseline.json").is_file()
        row["status"] = "failed" if error else "partial" if started else "pending"
        row["error"] = (error or {}).get("error")
        return row
    row.update(status="stopped" if results.get("stopped") else "done", error=results.get("stopped"),
               metric=results.get("metric"), test=results.get("test_accuracy"),
               wall_time_s=results.get("wall_time_s"), peak_memory_mb=results.get("peak_memory_mb"),
               peak_memory_kind=results.get("peak_memory_kind", "max_rss"))
    if cell.kind in TRAINING:
        row.update(best_dev=results.get("best_dev_accuracy"), final_dev=results.get("final_dev_accuracy"),
                   steps=results.get("steps"), forward_passes=results.get("train_forward_passes"),
                   train_time_s=results.get("train_time_s"), s_per_step=step_seconds(folder),
                   state_bytes=results.get("state_bytes"), trainable_parameters=results.get("trainable_parameters"),
                   zero_shot=results.get("zero_shot_test_accuracy"))
    return row


def best_points(rows: list[dict]) -> list[dict]:
    """Per (method, task, mode): the grid point with the highest mean final dev metric over its
    finished seeds (the dev score of the weights whose test score is reported), with the test
    metric's mean and standard deviation over those seeds."""
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in rows:
        if r["kind"] == "train" and r["status"] == "done" and r["final_dev"] is not None:
            groups.setdefault((r["label"], r["task"], r["mode"]), {}).setdefault(r["grid"], []).append(r)
    best = []
    for (label, task, mode), points in groups.items():
        grid, runs = max(points.items(), key=lambda kv: statistics.fmean(r["final_dev"] for r in kv[1]))
        tests = [r["test"] for r in runs]
        best.append({
            "label": label, "task": task, "mode": mode, "optimizer": runs[0]["optimizer"], "metric": runs[0]["metric"],
            "grid": grid, "seeds": len(runs), "points_searched": len(points),
            "dev": statistics.fmean(r["final_dev"] for r in runs),
            "test": statistics.fmean(tests), "test_std": statistics.stdev(tests) if len(tests) > 1 else None,
            "forward_passes": statistics.fmean(r["forward_passes"] or 0 for r in runs),
            "s_per_step": _median([r["s_per_step"] for r in runs]),
            "peak_memory_mb": max(r["peak_memory_mb"] or 0 for r in runs),
            "state_bytes": max(r["state_bytes"] or 0 for r in runs),
            "trainable_parameters": runs[0]["trainable_parameters"],
            "ids": [r["id"] for r in runs],
        })
    return best


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def dev_examples(study: Study, task: str, eval_examples: int | None) -> int | None:
    """How many dev examples a run of ``task`` evaluates (the split capped at ``eval_examples``)."""
    from zotune.tasks import get_task

    try:
        return len(get_task(task).load("dev", data_dir=study.data_dir)[:eval_examples])
    except (OSError, ValueError):
        return None


def sanity_verdict(study: Study, rows: list[dict]) -> dict | None:
    """Textbook MeZO against zotune's MeZO: their final dev metrics agree when they differ by at most
    ``SANITY_Z`` standard errors of a difference of two proportions on n dev examples,
    2·sqrt(p₁(1−p₁)/n + p₂(1−p₂)/n), with at least 1/n. None without a sanity entry."""
    pair = {r["label"]: r for r in rows if r["kind"] == "sanity"}
    if not pair:
        return None
    book, ours = pair.get("textbook-mezo"), pair.get("mezo")
    verdict = {"textbook": book, "zotune": ours, "task": study.sanity["task"], "z": SANITY_Z,
               "n": None, "difference": None, "tolerance": None, "agree": None}
    if not (book and ours and book["status"] == ours["status"] == "done"):
        verdict["problem"] = "the sanity pair has not finished: " + ", ".join(
            f"{r['label']} {r['status']}" + (f" ({r['error']})" if r.get("error") else "")
            for r in (book, ours) if r)
        return verdict
    cell = next(c for c in study.cells if c.id == ours["id"])
    n = dev_examples(study, cell.config.task, cell.config.eval_examples)
    p1, p2 = book["final_dev"], ours["final_dev"]
    if n is None or p1 is None or p2 is None:
        verdict["problem"] = "no dev metric to compare"
        return verdict
    tolerance = max(SANITY_Z * math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / n), 1 / n)
    verdict.update(n=n, difference=abs(p1 - p2), tolerance=tolerance, agree=abs(p1 - p2) <= tolerance)
    return verdict


def build_table(study: Study, out: Path) -> dict:
    rows = [cell_row(out, c) for c in study.cells]
    return {"study": study.name, "model": study.model, "rows": rows, "best": best_points(rows),
            "sanity": sanity_verdict(study, rows)}


def write_table(table: dict, out: Path) -> None:
    """``results.json`` (everything) and ``results.csv`` (the rows), each written whole or not at all."""
    write_json(out / "results.json", table)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table["rows"])
    atomic_write(out / "results.csv", lambda p: p.write_text(buffer.getvalue(), encoding="utf-8"))
