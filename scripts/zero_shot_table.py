"""Zero-shot (and ICL) scores of real models on every task with data, one `zotune eval` per cell.

Resumable: a cell whose JSON exists is not rerun, so the table can be filled over several sittings.
Each cell records the exact command and its wall time; the markdown table is printed at the end.

    python scripts/zero_shot_table.py --data-dir ../shared/data --out runs/zero-shot \
        --models smollm2 gemma3 --tasks sst2 rte cb boolq wsc wic multirc copa squad
    python scripts/zero_shot_table.py ... --models smollm2 --tasks sst2 rte copa --icl-shots 32
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path


def run_cell(model: str, task: str, shots: int, args) -> dict:
    out = Path(args.out) / f"{model}-{task}{f'-icl{shots}' if shots else ''}.json"
    if out.is_file():
        return json.loads(out.read_text())
    cmd = [sys.executable, "-m", "zotune.cli", "eval", "--model", model, "--task", task, "--data-dir", args.data_dir,
           "--examples", str(args.examples), "--json", "--batch-size", str(args.batch_size)]
    if shots:
        cmd += ["--icl-shots", str(shots)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(f"FAILED {model} {task}: {proc.stderr[-2000:]}", file=sys.stderr)
        return {}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(command="zotune " + shlex.join(cmd[3:]), wall_time_s=round(wall, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{model} {task} shots={shots}: {result}", flush=True)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", default="runs/zero-shot")
    p.add_argument("--models", nargs="+", default=["smollm2", "gemma3"])
    p.add_argument("--tasks", nargs="+", default=["sst2", "rte", "cb", "boolq", "wsc", "wic", "multirc", "copa", "squad"])
    p.add_argument("--icl-shots", type=int, default=0)
    p.add_argument("--examples", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()
    rows = []
    for model in args.models:
        for task in args.tasks:
            r = run_cell(model, task, args.icl_shots, args)
            if r:
                rows.append((model, task, r))
    print("\n| model | task | shots | metric | score | n | wall time | command |\n|---|---|---|---|---|---|---|---|")
    for model, task, r in rows:
        metric = r.get("metric", "accuracy")
        score = r.get(metric, r.get("accuracy"))
        print(f"| {model} | {task} | {r.get('icl_shots', args.icl_shots)} | {metric} | {100 * score:.1f} | {r['n']} "
              f"| {r['wall_time_s'] / 60:.1f} min | `{r['command']}` |")


if __name__ == "__main__":
    main()
