"""Tasks: registry, formatted examples, and the scoring, loss and evaluation shared per kind.

``get_task(name)`` returns a registered task; a path to the user's own data (a .jsonl/.csv/.tsv
file, or a folder saved by ``datasets``), or a ``datasets.Dataset``, becomes a ``CustomTask``
built with ``spec`` (see ``custom.py`` and docs/tasks.md).
"""

from __future__ import annotations

from pathlib import Path

from .base import KINDS, ClassificationTask, Example, Task
from .batches import OBJECTIVES, check_objective, encode, forward_closure, loss_fn
from .classification import candidate_logits
from .evaluation import evaluate
from .copa import COPATask
from .custom import CustomTask
from .drop import DROPTask
from .record import ReCoRDTask
from .squad import SQuADTask
from .sst2 import SST2Task
from .superglue import BoolQTask, CBTask, MultiRCTask, RTETask, WiCTask, WSCTask

TASKS: dict[str, type[Task]] = {t.name: t for t in (SST2Task, RTETask, CBTask, BoolQTask, WSCTask, WiCTask,
                                                     MultiRCTask, COPATask, ReCoRDTask, SQuADTask, DROPTask)}
DATA_SUFFIXES = (".jsonl", ".csv", ".tsv")


def looks_like_data(name) -> bool:
    """Whether ``name`` names the user's own data rather than a registered task."""
    if not isinstance(name, (str, Path)):
        return True  # e.g. a datasets.Dataset object
    path = Path(str(name)).expanduser()
    return path.suffix.lower() in DATA_SUFFIXES or path.is_dir() or any(s in str(name) for s in ("/", "\\"))


def get_task(name, spec=None) -> Task:
    """A registered task by name (case-insensitive, '-' and '_' ignored: 'SST-2' works), or the
    user's own data (a path or a ``datasets.Dataset``) described by ``spec``."""
    if looks_like_data(name):
        return CustomTask(name, spec)
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}, "
                         "or a path to your own .jsonl/.csv/.tsv data with --task-spec")
    if spec is not None:
        raise ValueError(f"task {name!r} is built in and takes no task spec; a spec describes your own data file")
    return TASKS[key]()


__all__ = ["Example", "Task", "ClassificationTask", "KINDS", "OBJECTIVES", "TASKS", "get_task", "looks_like_data",
           "encode", "loss_fn", "forward_closure", "evaluate", "candidate_logits", "check_objective", "SST2Task"]
