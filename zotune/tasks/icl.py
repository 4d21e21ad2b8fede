"""In-context learning: k solved training examples in front of every evaluated prompt.

MeZO's ICL baseline (Malladi et al. 2023, Table 1) prepends 32 demonstrations, each the prompt
followed by its gold answer, separated by a blank line. One set of demonstrations is drawn from
train with a fixed seed and shared by every evaluated example. When the whole text would not fit
the model's context, the demonstrations farthest from the question are dropped first (whole
demonstrations, never half of one); how many fit is reported, since it varies with prompt length.
"""

from __future__ import annotations

import random

from .base import Example, Task
from .data import SEED
from .encoding import continuation_ids, prompt_ids

SEPARATOR = "\n\n"


def draw_demonstrations(task: Task, train: list[Example], k: int, seed: int = SEED) -> list[str]:
    """``k`` demonstration texts drawn without replacement from ``train`` (all of it if smaller)."""
    if k < 0:
        raise ValueError(f"icl_shots must be >= 0, got {k}")
    picked = random.Random(seed).sample(train, min(k, len(train)))
    return [task.demonstration(ex) for ex in picked]


def _answer_room(task: Task, tokenizer, ex: Example) -> int:
    """Tokens the answer needs after the prompt: the longest candidate, or the generation budget."""
    if task.kind == "generation":
        return task.max_new_tokens
    return max(len(continuation_ids(tokenizer, ex.prompt, c)) for c in ex.candidates)


def with_demonstrations(task: Task, tokenizer, examples: list[Example], demos: list[str],
                        max_length: int) -> tuple[list[Example], list[int]]:
    """Each example with as many of ``demos`` in front as fit ``max_length`` tokens with its answer,
    and the number of demonstrations each one got."""
    if not demos:
        return list(examples), [0] * len(examples)
    sizes = [len(tokenizer(d + SEPARATOR, add_special_tokens=False)["input_ids"]) for d in demos]
    out, used = [], []
    for ex in examples:
        budget = max_length - _answer_room(task, tokenizer, ex) - len(prompt_ids(tokenizer, ex.prompt))
        m = len(demos)
        while m > 0 and sum(sizes[len(demos) - m:]) > budget:  # estimate from the pieces
            m -= 1
        while m > 0:  # exact check: tokens can merge across the pieces' boundaries
            text = SEPARATOR.join(demos[len(demos) - m:]) + SEPARATOR + ex.prompt
            if len(prompt_ids(tokenizer, text)) + _answer_room(task, tokenizer, ex) <= max_length:
                break
            m -= 1
        prompt = ex.prompt if m == 0 else SEPARATOR.join(demos[len(demos) - m:]) + SEPARATOR + ex.prompt
        out.append(Example(prompt=prompt, candidates=ex.candidates, label=ex.label, answers=ex.answers,
                           group=ex.group))
        used.append(m)
    return out, used


def shots_summary(requested: int, used: list[int], max_length: int) -> dict:
    """What results.json reports about the demonstrations actually shown."""
    return {"shots": requested, "shots_used_min": min(used), "shots_used_max": max(used),
            "shots_used_mean": round(sum(used) / len(used), 2), "max_length": max_length}
