"""One cell of a study, run in its own folder: ``python -m zotune.study_cell <cells/ID>``.

The folder holds ``cell.json`` (what to run, written by the study before it starts the cell) and,
for a training cell, the run folder's own files (``zotune.run_folder``): a cell with
``results.json`` is finished and never run again; one with a ``config.yaml`` but no results was
stopped and is continued with ``resume`` (bit-identical to an uninterrupted run); any other is
(re)started. A cell that raises leaves ``error.json`` (the message and the traceback) and exits 1,
so the study records it and goes on; the next study run tries it again. Each cell in its own
process gives each its own peak memory, and a crash or a leak stays in its cell.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import shutil
import sys
import time
import traceback
from pathlib import Path

import torch

from zotune.run_folder import CHECKPOINT_PREFIX, write_json
from zotune.study_spec import Cell

CELL_FILE = "cell.json"
ERROR_FILE = "error.json"
RESULTS_FILE = "results.json"
LOG_FILE = "cell.log"
CELLS_DIR = "cells"


def cell_folder(out: Path, cell: Cell | str) -> Path:
    """``<out>/cells/<id>``: the cell's folder (a training cell's run folder)."""
    return Path(out) / CELLS_DIR / (cell if isinstance(cell, str) else cell.id)


def read_cell(folder: Path) -> Cell:
    return Cell.from_dict(json.loads((Path(folder) / CELL_FILE).read_text(encoding="utf-8")))


def is_done(folder: Path) -> bool:
    return (Path(folder) / RESULTS_FILE).is_file()


def peak_memory_mb(device: torch.device) -> float:
    """This process's peak: CUDA's max allocated bytes, else its max RSS (Linux KiB, macOS bytes)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def drop_weights(folder: Path) -> None:
    """Delete a finished run's checkpoints and saved weights (``keep_weights: false``): the study's
    table reads only results.json and metrics.jsonl, and a replayable ZO run's weights are rebuilt
    bit for bit from its trajectory by ``zotune replay``. Hundreds of 0.5-1.5 GB runs fit no disk."""
    for ckpt in folder.glob(CHECKPOINT_PREFIX + "*"):
        shutil.rmtree(ckpt, ignore_errors=True)
    (folder / "model.safetensors").unlink(missing_ok=True)


def _train(cell: Cell, folder: Path) -> dict:
    from zotune.train import resume, train

    if (folder / "config.yaml").is_file():  # stopped after its first step: continue it
        return resume(folder, progress=False)
    return train(dataclasses.replace(cell.config, out=str(folder)), overwrite=True, progress=False)


def _evaluate(cell: Cell, folder: Path) -> dict:
    """A baseline: the test metric of the model zero-shot or with ``icl_shots`` demonstrations."""
    from zotune.models import resolve_device
    from zotune.train import evaluate_run

    c = cell.config
    t0 = time.perf_counter()
    result = evaluate_run(model=c.model, task=c.task, task_spec=c.task_spec, split="test", examples=c.test_examples,
                          data_dir=c.data_dir, dtype=c.dtype, autocast=c.autocast, device=c.device,
                          max_length=c.max_length, max_new_tokens=c.max_new_tokens, icl_shots=c.icl_shots)
    device = resolve_device(c.device)
    result.update(kind=cell.kind, test_accuracy=result["accuracy"], test_examples=result["n"],
                  wall_time_s=round(time.perf_counter() - t0, 3), peak_memory_mb=round(peak_memory_mb(device), 1),
                  device=str(device))
    write_json(folder / RESULTS_FILE, result)
    return result


def run_cell(folder: str | Path) -> int:
    """Run (or continue) the cell in ``folder``; 0 when finished, 1 on an error (``error.json``),
    128 + the signal's number when stopped by SIGINT/SIGTERM (resumable)."""
    folder = Path(folder)
    if is_done(folder):
        return 0
    cell = read_cell(folder)
    (folder / ERROR_FILE).unlink(missing_ok=True)
    try:
        result = _train(cell, folder) if cell.kind in ("train", "sanity") else _evaluate(cell, folder)
    except Exception as e:  # recorded; the study goes on with the other cells
        write_json(folder / ERROR_FILE, {"error": f"{type(e).__name__}: {e}",
                                         "traceback": traceback.format_exc()[-4000:]})
        print(f"zotune study: cell {cell.id} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1
    if result.get("interrupted"):
        return int(result.get("exit_code", 0))
    if cell.kind in ("train", "sanity") and not cell.keep_weights:
        drop_weights(folder)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m zotune.study_cell STUDY_OUT/cells/ID")
    sys.exit(run_cell(sys.argv[1]))
