"""The study's plots (PNG, matplotlib's Agg backend, no display needed), from its table:

- ``dev_vs_forward_passes.png``: per task, the dev metric against training forward passes of each
  method at its best grid point (mean over seeds), the zero-shot score dashed;
- ``test_vs_peak_memory.png``: per task, each method's final test metric against its peak memory;
- ``step_time.png``: seconds per optimizer step of each method (median over its finished cells).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from zotune.run_folder import atomic_write
from zotune.study_cell import cell_folder
from zotune.study_table import dev_curve

PLOTS_DIR = "plots"
FILES = ("dev_vs_forward_passes.png", "test_vs_peak_memory.png", "step_time.png")


def _name(b: dict) -> str:
    return b["label"] if b["mode"] == "ft" else f"{b['label']} ({b['mode']})"


def _grid(n: int):
    import matplotlib.pyplot as plt

    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def _mean_curve(out: Path, ids: list[str]) -> list[tuple[float, float]]:
    """The seeds' dev curves averaged at the evaluations they share (same steps, same count)."""
    curves = [dev_curve(cell_folder(out, i)) for i in ids]
    curves = [c for c in curves if c]
    if not curves:
        return []
    n = min(len(c) for c in curves)
    return [(statistics.fmean(c[k][0] for c in curves), statistics.fmean(c[k][1] for c in curves)) for k in range(n)]


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)


def write_plots(table: dict, out: Path) -> list[Path]:
    """Write the plots into ``<out>/plots``; returns the files written (none without results)."""
    import matplotlib

    matplotlib.use("Agg")
    best = table["best"]
    if not best:
        return []
    folder = Path(out) / PLOTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    tasks = list(dict.fromkeys(b["task"] for b in best))
    zero_shot = {r["task"]: r["test"] for r in table["rows"] if r["kind"] == "zero-shot" and r["test"] is not None}
    written = []

    fig, axes = _grid(len(tasks))
    for ax, task in zip(axes, tasks):
        for b in (b for b in best if b["task"] == task):
            curve = _mean_curve(out, b["ids"])
            if curve:
                ax.plot([x for x, _ in curve], [y for _, y in curve], marker="o", markersize=3, label=_name(b))
        if task in zero_shot:
            ax.axhline(zero_shot[task], color="grey", linestyle="--", linewidth=1, label="zero-shot (test)")
        metric = next(b["metric"] for b in best if b["task"] == task)
        ax.set(title=task, xlabel="training forward passes", ylabel=f"dev {metric}")
        ax.legend(fontsize=7)
    _save(fig, folder / FILES[0])
    written.append(folder / FILES[0])

    fig, axes = _grid(len(tasks))
    for ax, task in zip(axes, tasks):
        for b in (b for b in best if b["task"] == task):
            ax.scatter(b["peak_memory_mb"], b["test"], s=24)
            ax.annotate(_name(b), (b["peak_memory_mb"], b["test"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        metric = next(b["metric"] for b in best if b["task"] == task)
        ax.set(title=task, xlabel="peak memory (MB)", ylabel=f"test {metric} (final weights)")
    _save(fig, folder / FILES[1])
    written.append(folder / FILES[1])

    import matplotlib.pyplot as plt

    times: dict[str, list[float]] = {}
    for r in table["rows"]:
        if r["kind"] == "train" and r["s_per_step"] is not None:
            times.setdefault(_name(r), []).append(r["s_per_step"])
    if times:
        names = sorted(times, key=lambda n: statistics.median(times[n]))
        fig, ax = plt.subplots(figsize=(7, 0.32 * len(names) + 1.4))
        ax.barh(names, [statistics.median(times[n]) for n in names])
        ax.set(xlabel="seconds per step (median over tasks, grid points, seeds)", title="step time")
        ax.tick_params(axis="y", labelsize=8)
        _save(fig, folder / FILES[2])
        written.append(folder / FILES[2])
    return written
