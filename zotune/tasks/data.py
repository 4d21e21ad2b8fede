"""Finding and reading task data files, and MeZO's sampling protocol.

The data folder is laid out like the benchmark release (``<root>/RTE/train.jsonl``, ...); it is
``data_dir`` when given, else ``$ZOTUNE_DATA``. Every reader fails on the first bad line with the
file, the line number and what to do about it.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Sequence, TypeVar

DATA_ENV = "ZOTUNE_DATA"
SEED = 0  # the sample is part of a task's definition, so it does not follow the run's --seed
SIZES = {"train": 1000, "dev": 500, "test": 1000}  # MeZO (Malladi et al. 2023), Sec. 3 / App. E

T = TypeVar("T")


def data_root(data_dir: str | None) -> Path | None:
    """``data_dir`` if given, else ``$ZOTUNE_DATA``, else None."""
    root = data_dir or os.environ.get(DATA_ENV)
    return Path(root).expanduser() if root else None


def task_file(task: str, folder: str, names: Sequence[str], data_dir: str | None) -> Path:
    """The first existing ``<root>/<folder>/<name>``, or a FileNotFoundError naming what to provide."""
    root = data_root(data_dir)
    if root is None:
        raise FileNotFoundError(
            f"task {task!r} needs its data files: pass --data-dir FOLDER (or set ${DATA_ENV}) where FOLDER "
            f"holds {folder}/{names[0]} (laid out like the benchmark folder; see docs/tasks.md)")
    for name in names:
        path = root / folder / name
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"task {task!r}: {root / folder / names[0]} not found; put the official {folder} file there "
        f"(or point --data-dir / ${DATA_ENV} at the folder that holds {folder}/)")


def jsonl_objects(path: Path, text: str, fix: str) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line of JSON-lines ``text`` read from ``path``;
    a line that is not one JSON object fails with its number and ``fix``."""
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {lineno}: not valid JSON ({e.msg} at column {e.colno}); {fix}") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}, line {lineno}: expected a JSON object {{...}}, got {type(row).__name__}; {fix}")
        rows.append((lineno, row))
    return rows


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a benchmark's JSON-lines file."""
    fix = "replace the file with an unmodified copy of the official release"
    rows = jsonl_objects(path, path.read_text(encoding="utf-8"), fix)
    if not rows:
        raise ValueError(f"{path} holds no rows; {fix}")
    return rows


def read_json_object(path: Path, what: str) -> dict:
    """A JSON file holding one object (``what`` says which, for the error message)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON (line {e.lineno}: {e.msg}); "
                         "replace the file with an unmodified copy of the official release") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected {what}, got a JSON {type(data).__name__}")
    return data


def field(row: dict, key: str, path: Path, lineno: int | None = None):
    """``row[key]``, or a ValueError naming the file, the row and the missing field."""
    if key not in row:
        where = f"{path}, line {lineno}" if lineno is not None else str(path)
        raise ValueError(f"{where}: row lacks the field {key!r} (has {', '.join(map(repr, row))}); "
                         "is this the official file of this task?")
    return row[key]


def mezo_splits(train: Sequence[T] | None, val: Sequence[T], dev_size: int = SIZES["dev"],
                seed: int = SEED) -> dict[str, list[T]]:
    """MeZO's protocol: train and dev drawn (disjoint) from the official train split, test from
    the official validation split; each capped at 1000 / ``dev_size`` / 1000, fewer where a split
    has fewer rows (train gets what dev leaves). Without a train split (BoolQ here) the test
    sample is drawn first and train/dev come from the validation rows it left.
    """
    rng = random.Random(seed)
    val = list(val)
    if len(val) > SIZES["test"]:
        test_idx = sorted(rng.sample(range(len(val)), SIZES["test"]))
    else:
        test_idx = list(range(len(val)))
    test = [val[i] for i in test_idx]
    if train is None:
        taken = set(test_idx)
        train = [row for i, row in enumerate(val) if i not in taken]
    train = list(train)
    n = min(len(train), SIZES["train"] + dev_size)
    pool = random.Random(seed).sample(train, n)
    dev_n = min(dev_size, n // 2)
    return {"train": pool[dev_n:dev_n + SIZES["train"]], "dev": pool[:dev_n], "test": test}
