"""Issue 10's plot and table: dev accuracy against forward passes for the evidence runs, and the
final test accuracy of each (``runs/evidence/*/results.json``).

    python scripts/plot_evidence.py [--runs runs/evidence] [--out docs/adanaged-evidence.png]

Forward passes per step are read from each run's results (train_forward_passes / steps), so methods
with different costs per step share one x-axis. The zero-shot point (step 0) is the test accuracy
before training, the only accuracy measured there; it is drawn apart (hollow marker).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from zotune.cli import read_metrics  # noqa: E402

CURVES = ["mezo-1e-5", "mezo-3e-5", "mezo-1e-4", "zo-sgd-mmt-3e-6", "adanaged"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="runs/evidence")
    ap.add_argument("--out", default="docs/adanaged-evidence.png")
    args = ap.parse_args()
    root = Path(args.runs)
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.2))
    print("| run | steps | forward passes | dev accuracy (last) | best dev | test accuracy | zero-shot test | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for folder in sorted(p.parent for p in root.glob("*/metrics.jsonl")):
        # a run stopped early (e.g. a diverged grid point) has no results: its curve, no test point
        done = folder / "results.json"
        res = json.loads(done.read_text()) if done.exists() else {}
        passes = res.get("train_forward_passes")
        _, recs = read_metrics(folder)
        per_step = passes / max(1, max(r["step"] for r in recs)) if passes else 2.0
        print(f"| {folder.name} | {max(r['step'] for r in recs)} | {passes} | {res.get('final_dev_accuracy')} | "
              f"{res.get('best_dev_accuracy')} | {res.get('test_accuracy')} | {res.get('zero_shot_test_accuracy')} | "
              f"{res.get('train_time_s')} |")
        if folder.name not in CURVES:
            continue
        acc = [(r["step"] * per_step, r["dev_accuracy"]) for r in recs if r.get("dev_accuracy") is not None]
        (line,) = ax_acc.plot(*zip(*acc), marker="o", markersize=3, label=folder.name)
        if res.get("test_accuracy") is not None:
            ax_acc.plot([acc[-1][0]], [res["test_accuracy"]], marker="*", markersize=9, color=line.get_color(),
                        linestyle="none")
        loss = [(r["step"] * per_step, r["loss"]) for r in recs if isinstance(r.get("loss"), (int, float))]
        xs, ys = zip(*loss)
        ema, m = [], 0.0
        for i, y in enumerate(ys, 1):
            m = 0.95 * m + 0.05 * y
            ema.append(m / (1 - 0.95 ** i))
        ax_loss.plot(xs, ema, color=line.get_color(), label=folder.name)
        if res.get("zero_shot_test_accuracy") is not None:
            ax_acc.plot([0], [res["zero_shot_test_accuracy"]], marker="o", fillstyle="none", color="gray")
    ax_acc.set(title="SST-2 dev accuracy (300 ex.; ★ = test, 1000 ex.; ○ = zero-shot test)",
               xlabel="forward passes", ylabel="accuracy")
    ax_loss.set(title="training loss (EMA 0.95, log scale)", xlabel="forward passes", ylabel="loss", yscale="log")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
