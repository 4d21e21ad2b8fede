"""In-context learning: k solved training examples in front of every evaluated prompt.

MeZO's ICL baseline (Malladi et al. 2023, Table 1) prepends 32 demonstrations, each the prompt
followed by its gold answer, separated by a blank line. One set of demonstrations is drawn from
train with a fixed seed and shared by every evaluated example, so its keys and values are computed
once and reused (``evaluate(prefix_ids=...)``). When the whole text would not fit the model's
context, the demonstrations farthest from the question are dropped first (whole demonstrations,
never half of one); how many fit is reported, since it varies with prompt length.
"""

from __future__ import annotations

import random

from .base import Example, Task
from .data import SEED
from .encoding import continuation_ids, prompt_ids, special_prefix
from .evaluation import combine, evaluate

SEPARATOR = "\n\n"


def draw_demonstrations(task: Task, train: list[Example], k: int, seed: int = SEED) -> list[str]:
    """``k`` demonstration texts drawn without replacement from ``train`` (all of it if smaller)."""
    if k < 0:
        raise ValueError(f"icl_shots must be >= 0, got {k}")
    picked = random.Random(seed).sample(train, min(k, len(train)))
    return [task.demonstration(ex) for ex in picked]


def prefix_text(demos: list[str], m: int) -> str:
    """The last ``m`` demonstrations, each followed by the separator."""
    return "".join(d + SEPARATOR for d in demos[len(demos) - m:])


def _answer_room(task: Task, tokenizer, ex: Example) -> int:
    """Tokens the answer needs after the prompt: the longest candidate, or the generation budget."""
    if task.kind == "generation":
        return task.max_new_tokens
    return max(len(continuation_ids(tokenizer, ex.prompt, c)) for c in ex.candidates)


def fit(task: Task, tokenizer, examples: list[Example], demos: list[str], max_length: int) -> list[int]:
    """How many demonstrations fit in front of each example: prefix tokens + prompt tokens (without
    the prompt's own BOS) + the answer's room <= ``max_length``."""
    prefix_len = [0] + [len(tokenizer(prefix_text(demos, m), add_special_tokens=True)["input_ids"])
                        for m in range(1, len(demos) + 1)]
    n_special = len(special_prefix(tokenizer))
    used = []
    for ex in examples:
        need = len(prompt_ids(tokenizer, ex.prompt)) - n_special + _answer_room(task, tokenizer, ex)
        used.append(max([m for m in range(len(demos) + 1) if prefix_len[m] + need <= max_length] or [0]))
    return used


def evaluate_in_context(model, tokenizer, task: Task, examples: list[Example], demos: list[str],
                        max_length: int, **kwargs) -> tuple[dict, list[int]]:
    """``evaluate`` with as many of ``demos`` in front of each example as fit, and how many each got.
    Examples that fit the same number share one cached prefix."""
    used = fit(task, tokenizer, examples, demos, max_length)
    parts = []
    for m in sorted(set(used), reverse=True):
        group = [ex for ex, u in zip(examples, used) if u == m]
        ids = tokenizer(prefix_text(demos, m), add_special_tokens=True)["input_ids"] if m else None
        parts.append(evaluate(model, tokenizer, task, group, max_length=max_length, prefix_ids=ids, **kwargs))
    return combine(parts), used


def shots_summary(requested: int, used: list[int], max_length: int) -> dict:
    """What results.json reports about the demonstrations actually shown."""
    return {"shots": requested, "shots_used_min": min(used), "shots_used_max": max(used),
            "shots_used_mean": round(sum(used) / len(used), 2), "max_length": max_length}
