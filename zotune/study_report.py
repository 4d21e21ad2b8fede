"""``report.md``: the study's markdown report, generated from its table (nothing typed by hand).

Setup (model, machine, command), the sanity row (marked SANITY FAILED at the top when textbook
MeZO and zotune's MeZO disagree beyond noise), per task the best grid point of each method (chosen
by dev, reporting test) beside the baselines, the grid each method searched, the plots, and the
cells that failed or are unfinished. The "Reading" section is the one part a person writes: it
starts as a placeholder, and a reading written into ``report.md`` is kept when the report is
regenerated. ``publish`` copies the report and its plots to a documentation page.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path

from zotune.run_folder import atomic_write
from zotune.study_plots import FILES, PLOTS_DIR
from zotune.study_spec import Study

READING_HEADING = "## Reading"
READING_PLACEHOLDER = ("_Not generated: a person writes the reading of these results here (what wins where, at "
                       "what cost, what surprised), after looking at the tables and plots._")


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _num(v, fmt: str = "{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def _mib(v) -> str:
    return "-" if v is None else f"{v / 2**20:.1f}"


def hardware() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:  # Linux names the model; platform gives only the architecture there
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    parts = [f"{platform.platform()}", f"CPU {cpu}, {os.cpu_count()} cores", f"torch {torch.__version__}"]
    if torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name(0)}")
    return "; ".join(parts)


def _value(v) -> str:
    return "default" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def _grid_text(grid: dict) -> str:
    return ", ".join(f"{k} ∈ {{{', '.join(_value(v) for v in vals)}}}" for k, vals in grid.items()) or "defaults only"


def _sanity_section(verdict: dict | None) -> list[str]:
    lines = ["## Sanity: textbook MeZO against zotune's MeZO", ""]
    if verdict is None:
        return lines + ["_This study has no `sanity:` entry._", ""]
    lines += [f"Both train on {verdict['task']} at equal settings (lr, eps, steps, batch, seed, Gaussian noise): "
              "the published step (`zotune/optim/textbook_mezo.py`, four passes that write the weights, "
              "`torch.normal` noise) and zotune's MeZO. They agree when their final dev metrics differ by at most "
              f"{verdict['z']:g}·sqrt(p₁(1−p₁)/n + p₂(1−p₂)/n) (the standard error of a difference of two "
              "proportions on n dev examples; at least 1/n).", ""]
    if verdict.get("problem"):
        return lines + [f"**Not decided:** {verdict['problem']}.", ""]
    book, ours = verdict["textbook"], verdict["zotune"]
    lines += ["| optimizer | final dev | best dev | test | s/step |", "|---|---|---|---|---|"]
    for name, r in (("textbook MeZO (`textbook-mezo`)", book), ("zotune MeZO (`mezo`)", ours)):
        lines.append(f"| {name} | {_pct(r['final_dev'])} | {_pct(r['best_dev'])} | {_pct(r['test'])} | "
                     f"{_num(r['s_per_step'])} |")
    word = "agree within noise" if verdict["agree"] else "DISAGREE beyond noise"
    lines += ["", f"n = {verdict['n']} dev examples: |Δ| = {_pct(verdict['difference'])} points, tolerance "
                  f"{_pct(verdict['tolerance'])} points: **{word}**.", ""]
    return lines


def _task_section(task: str, table: dict, study: Study) -> list[str]:
    best = sorted((b for b in table["best"] if b["task"] == task), key=lambda b: -b["test"])
    rows = [r for r in table["rows"] if r["task"] == task]
    metric = next((r["metric"] for r in rows if r["metric"]), "accuracy")
    lines = [f"### {task} ({metric}, %)", "",
             "| method | mode | best grid point (by dev) | seeds | test | ± | dev | forward passes | s/step | "
             "peak MB | state MiB | trainable |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] in ("zero-shot", "icl") and r["status"] == "done":
            name = "zero-shot" if r["kind"] == "zero-shot" else f"ICL ({r['icl_shots']} shots)"
            peak = _num(r["peak_memory_mb"], "{:.0f}")
            lines.append(f"| {name} | - | - | - | {_pct(r['test'])} | - | - | 0 | - | {peak} | - | - |")
    for b in best:
        grid = ", ".join(f"{k}={_value(v)}" for k, v in json.loads(b["grid"]).items()) or "defaults"
        lines.append(f"| {b['label']} | {b['mode']} | {grid} ({b['points_searched']} searched) | {b['seeds']} | "
                     f"{_pct(b['test'])} | {_pct(b['test_std'])} | {_pct(b['dev'])} | {b['forward_passes']:.0f} | "
                     f"{_num(b['s_per_step'])} | {_num(b['peak_memory_mb'], '{:.0f}')} | {_mib(b['state_bytes'])} | "
                     f"{b['trainable_parameters']:,} |")
    if not best:
        lines.append("| _no finished training cell yet_ | | | | | | | | | | | |")
    return lines + [""]


def render_report(study: Study, table: dict, command: str, plots: list[Path], reading: str | None = None) -> str:
    """The report's markdown; ``reading`` (a person's text) replaces the Reading placeholder."""
    rows, verdict = table["rows"], table["sanity"]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "stopped", "failed", "partial", "pending")}
    lines = [f"# Benchmark study: {study.name}", ""]
    if verdict is not None and verdict.get("agree") is False:
        lines += ["> **SANITY FAILED**: zotune's MeZO and the textbook MeZO step reached different dev metrics "
                  "(beyond noise) at equal settings. Do not trust the comparisons below until this is explained.", ""]
    elif verdict is not None and verdict.get("agree") is None:
        lines += ["> **Sanity not yet decided**: the textbook/zotune MeZO pair has not finished.", ""]
    lines += [f"Generated by `zotune bench study` on {time.strftime('%Y-%m-%d %H:%M')} from `results.json`; "
              "regenerate with `--report-only` rather than editing (the Reading section is the exception).", "",
              "## Setup", "",
              f"- model: `{study.model}`; tasks: {', '.join(study.tasks)}; seeds: {', '.join(map(str, study.seeds))}",
              f"- shared settings: `{json.dumps(study.defaults, default=str)}`"
              + (f"; per task: `{json.dumps(study.task_overrides, default=str)}`" if study.task_overrides else ""),
              f"- machine: {hardware()}",
              f"- command: `{command}`",
              f"- cells: {len(rows)} ({', '.join(f'{v} {k}' for k, v in counts.items() if v)})",
              "- selection: per method, task and mode, the grid point with the best mean final dev metric over "
              "seeds; test is the final weights' test metric (mean, ± its standard deviation over seeds)",
              "- forward passes: training closure calls (a first-order step counts one, plus its backward); "
              "s/step: median time between logged steps, dev evaluations left out; peak MB: the cell process's "
              "peak (max RSS on a CPU, loading the model included; CUDA's max allocated on a GPU)", ""]
    lines += _sanity_section(verdict)
    lines += ["## Results", ""]
    for task in study.tasks:
        lines += _task_section(task, table, study)
    lines += ["## Grids searched", "", "| method | optimizer | modes | grid | options | tasks |",
              "|---|---|---|---|---|---|"]
    for m in study.methods:
        modes = ", ".join(m.modes) + "".join(
            f"; {mode}: " + ", ".join(([_grid_text(o["grid"])] if o.get("grid") else [])
                                      + ([json.dumps({**o.get("opt", {}), **o.get("config", {})}, default=str)]
                                         if o.get("opt") or o.get("config") else []))
            for mode, o in m.mode_overrides.items() if o.get("grid") or o.get("opt") or o.get("config"))
        modes += "".join(f"; {task}: {', '.join(o['modes'])}" + (f", {_grid_text(o['grid'])}" if o["grid"] else "")
                         for task, o in m.task_overrides.items())
        lines.append(f"| {m.name} | `{m.optimizer}` | {modes} | {_grid_text(m.grid)} | "
                     f"{json.dumps({**m.opt, **m.config}, default=str) if (m.opt or m.config) else '-'} | "
                     f"{', '.join(m.tasks or study.tasks)} |")
    lines += ["", "## Plots", ""]
    lines += [f"![{p.stem}]({PLOTS_DIR}/{p.name})" for p in plots if p.name in FILES] or ["_No plots yet._"]
    bad = [r for r in rows if r["status"] in ("failed", "stopped")]
    lines += ["", "## Failed and stopped cells", ""]
    lines += [f"- `{r['id']}` ({r['status']}): {r['error']}" for r in bad] or ["None."]
    unfinished = [r for r in rows if r["status"] in ("partial", "pending")]
    if unfinished:
        lines += ["", f"{len(unfinished)} cell(s) not finished: rerun the same command to continue them."]
    lines += ["", READING_HEADING, "", reading.strip() if reading else READING_PLACEHOLDER, ""]
    return "\n".join(lines)


def written_reading(path: Path) -> str | None:
    """The Reading a person wrote into an existing report (None: no report, or still the placeholder)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    _, found, reading = text.partition(f"\n{READING_HEADING}\n")
    reading = reading.strip()
    return reading if found and reading and reading != READING_PLACEHOLDER else None


def write_report(study: Study, table: dict, out: Path, command: str, plots: list[Path]) -> Path:
    """Write ``<out>/report.md``, keeping the Reading a person wrote into the previous one."""
    path = Path(out) / "report.md"
    text = render_report(study, table, command, plots, written_reading(path))
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))
    return path


def publish(report: Path, plots: list[Path], page: Path) -> Path:
    """Copy the report to ``page`` (e.g. docs/results.md) and its plots into the folder named like the
    page without its suffix (docs/results/), the links rewritten to point there."""
    page = Path(page)
    folder = page.with_suffix("")
    folder.mkdir(parents=True, exist_ok=True)
    for plot in plots:
        atomic_write(folder / plot.name, lambda p, src=plot: shutil.copyfile(src, p))
    text = report.read_text(encoding="utf-8").replace(f"]({PLOTS_DIR}/", f"]({folder.name}/")
    atomic_write(page, lambda p: p.write_text(text, encoding="utf-8"))
    return page
