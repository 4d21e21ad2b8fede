"""COPA as multiple choice, with MeZO's template (Malladi et al. 2023, App. E).

The premise loses its final period and gains " so" (the question asks for an effect) or
" because" (a cause); each choice continues that sentence with its first word lower-cased
(except "I"). The space between them starts the candidate, so the prompt's last token is the
conjunction and each candidate is tokenized as it would read in running text.
"""

from __future__ import annotations

from pathlib import Path

from .base import Example
from .benchmark import BenchmarkTask
from .data import field, read_jsonl

CONJUNCTIONS = {"effect": "so", "cause": "because"}


def continue_sentence(choice: str) -> str:
    words = choice.strip().split(" ")
    if words[0] != "I":
        words[0] = words[0].lower()
    return " " + " ".join(words)


class COPATask(BenchmarkTask):
    name, folder = "copa", "COPA"
    kind, metric = "multiple_choice", "accuracy"
    dev_size = 100  # MeZO: COPA's 400 training rows give 100 dev, 300 train

    def read(self, path: Path) -> list[Example]:
        out = []
        for n, row in read_jsonl(path):
            question = field(row, "question", path, n)
            if question not in CONJUNCTIONS:
                raise ValueError(f"{path}, line {n}: question must be 'cause' or 'effect', got {question!r}")
            premise = field(row, "premise", path, n).rstrip()
            if premise.endswith("."):
                premise = premise[:-1]
            label = field(row, "label", path, n)
            if label not in (0, 1):
                raise ValueError(f"{path}, line {n}: label must be 0 (choice1) or 1 (choice2), got {label!r}")
            choices = (continue_sentence(field(row, "choice1", path, n)),
                       continue_sentence(field(row, "choice2", path, n)))
            out.append(Example(prompt=f"{premise} {CONJUNCTIONS[question]}", candidates=choices, label=label))
        return out
