"""The study's plots (PNG, matplotlib's Agg backend, no display needed), from its table:

- ``dev_vs_forward_passes.png``: per task, the dev metric against training forward passes of each
  method at its best grid point (mean over seeds), the zero-shot score dashed;
- ``loss_vs_forward_passes.png``: per task, the training loss each method logs (a trailing mean over
  ``LOSS_WINDOW`` steps, mean over seeds) against forward passes: finer-grained than the dev points,
  it shows how many forward passes a method needs to reach another's loss;
- ``test_vs_peak_memory.png``: per task, each method's final test metric against its peak memory;
- ``step_time.png``: seconds per optimizer step of each method on each task (median over its
  finished cells there): a cell slowed by another job on the machine shows against the other tasks.

Each method keeps one colour and marker in every panel and plot, named once in a shared legend.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from zotune.run_folder import atomic_write
from zotune.study_cell import cell_folder
from zotune.study_table import curve

PLOTS_DIR = "plots"
FILES = ("dev_vs_forward_passes.png", "loss_vs_forward_passes.png", "test_vs_peak_memory.png", "step_time.png")
LOSS_WINDOW = 16
MARKERS = "os^vD<>ph*"


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


def _trailing_mean(points: list[tuple[int, float]], window: int) -> list[tuple[int, float]]:
    ys = [y for _, y in points]
    return [(x, statistics.fmean(ys[max(0, k - window + 1):k + 1])) for k, (x, _) in enumerate(points)]


def _mean_curve(out: Path, ids: list[str], key: str, window: int = 1) -> list[tuple[float, float]]:
    """The seeds' curves of ``key`` averaged at the records they share (same steps, same count)."""
    curves = [_trailing_mean(curve(cell_folder(out, i), key), window) for i in ids]
    curves = [c for c in curves if c]
    if not curves:
        return []
    n = min(len(c) for c in curves)
    return [(statistics.fmean(c[k][0] for c in curves), statistics.fmean(c[k][1] for c in curves)) for k in range(n)]


def _styles(names: list[str]) -> dict[str, dict]:
    """One colour (tab20) and marker per method, the same in every panel."""
    import matplotlib

    colors = matplotlib.colormaps["tab20"].colors
    # the marker shifts by one each time the colours wrap round, so no two methods share both
    return {n: {"color": colors[k % len(colors)], "marker": MARKERS[(k + k // len(colors)) % len(MARKERS)]}
            for k, n in enumerate(names)}


def _legend(fig, axes) -> None:
    """One legend for the figure, under its panels, from every panel's labelled artists."""
    entries = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if entries:
        # below the figure; savefig's bbox_inches="tight" grows the image to hold it
        fig.legend(list(entries.values()), list(entries), loc="upper center", ncol=min(5, len(entries)),
                   fontsize=7, frameon=False, bbox_to_anchor=(0.5, 0.0))


def _curves_figure(out: Path, best: list[dict], tasks: list[str], styles: dict, zero_shot: dict,
                   key: str, window: int, ylabel: str):
    fig, axes = _grid(len(tasks))
    for ax, task in zip(axes, tasks):
        for b in (b for b in best if b["task"] == task):
            points = _mean_curve(out, b["ids"], key, window)
            if points:
                style = styles[_name(b)]
                ax.plot([x for x, _ in points], [y for _, y in points], color=style["color"], marker=style["marker"],
                        markersize=3, markevery=max(1, len(points) // 8), linewidth=1, label=_name(b))
        if key == "dev_accuracy" and task in zero_shot:
            ax.axhline(zero_shot[task], color="grey", linestyle="--", linewidth=1, label="zero-shot (test)")
        metric = next(b["metric"] for b in best if b["task"] == task)
        ax.set(title=task, xlabel="training forward passes", ylabel=ylabel.format(metric=metric))
    return fig, axes


def _save(fig, path: Path, tight: bool = True) -> None:
    import matplotlib.pyplot as plt

    if tight:
        fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png", bbox_inches="tight"))
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
    styles = _styles(list(dict.fromkeys(_name(b) for b in best)))
    written = []

    fig, axes = _curves_figure(out, best, tasks, styles, zero_shot, "dev_accuracy", 1, "dev {metric}")
    fig.tight_layout()
    _legend(fig, axes)
    _save(fig, folder / FILES[0], tight=False)
    written.append(folder / FILES[0])

    fig, axes = _curves_figure(out, best, tasks, styles, zero_shot, "loss", LOSS_WINDOW,
                               f"training loss (trailing mean of {LOSS_WINDOW} steps)")
    fig.tight_layout()
    _legend(fig, axes)
    _save(fig, folder / FILES[1], tight=False)
    written.append(folder / FILES[1])

    fig, axes = _grid(len(tasks))
    for ax, task in zip(axes, tasks):
        for b in (b for b in best if b["task"] == task):
            style = styles[_name(b)]
            ax.scatter(b["peak_memory_mb"], b["test"], s=24, color=style["color"], marker=style["marker"])
            ax.annotate(_name(b), (b["peak_memory_mb"], b["test"]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
        metric = next(b["metric"] for b in best if b["task"] == task)
        ax.set(title=task, xlabel="peak memory (MB)", ylabel=f"test {metric} (final weights)")
    _save(fig, folder / FILES[2])
    written.append(folder / FILES[2])

    import matplotlib.pyplot as plt

    times: dict[str, dict[str, list[float]]] = {}
    for r in table["rows"]:
        if r["kind"] == "train" and r["s_per_step"] is not None:
            times.setdefault(_name(r), {}).setdefault(r["task"], []).append(r["s_per_step"])
    if times:
        def overall(name):
            return statistics.median(t for per_task in times[name].values() for t in per_task)

        names = sorted(times, key=overall)
        height = 0.8 / len(tasks)
        fig, ax = plt.subplots(figsize=(7, 0.18 * len(names) * len(tasks) + 1.6))
        for k, task in enumerate(tasks):
            ys = [i + (k - (len(tasks) - 1) / 2) * height for i in range(len(names))]
            ax.barh(ys, [statistics.median(times[n][task]) if task in times[n] else 0 for n in names],
                    height=height, label=task)
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.set(xlabel="seconds per step (median over grid points and seeds)", title="step time per task")
        ax.tick_params(axis="y", labelsize=8)
        ax.legend(fontsize=8)
        _save(fig, folder / FILES[3])
        written.append(folder / FILES[3])
    return written
