"""Task registry and the shared scoring helpers (see ``base`` for the prompt/candidate scheme)."""

from .base import Example, Task, candidate_ids, candidate_logits, encode, evaluate, loss_fn
from .sst2 import SST2Task

TASKS: dict[str, type[Task]] = {"sst2": SST2Task}


def get_task(name: str) -> Task:
    """Instantiate a registered task by name (case-insensitive, '-' and '_' ignored: 'SST-2' works)."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[key]()


__all__ = ["Example", "Task", "TASKS", "get_task", "encode", "candidate_ids", "candidate_logits",
           "loss_fn", "evaluate", "SST2Task"]
