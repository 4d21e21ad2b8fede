"""ReCoRD as multiple choice over the passage's entities, with MeZO's template.

Official SuperGLUE rows (one passage per line): ``passage.text`` with ``passage.entities``
(character ``start``/``end``, end inclusive) and ``qas``, each a ``query`` holding
``@placeholder`` and its ``answers``. Every distinct entity string is a candidate; every one that
equals a gold answer counts as right (``Example.answers``). A gold answer that is not among the
marked entities is added as a candidate, so every example has a right one.
"""

from __future__ import annotations

from pathlib import Path

from .base import Example
from .benchmark import BenchmarkTask
from .data import field, read_jsonl


class ReCoRDTask(BenchmarkTask):
    name, folder = "record", "ReCoRD"
    kind, metric = "multiple_choice", "accuracy"

    def read(self, path: Path) -> list[Example]:
        out = []
        for n, row in read_jsonl(path):
            passage = field(row, "passage", path, n)
            text = field(passage, "text", path, n)
            entities = []
            for e in field(passage, "entities", path, n):
                name = text[field(e, "start", path, n): field(e, "end", path, n) + 1]
                if name and name not in entities:
                    entities.append(name)
            for q in field(row, "qas", path, n):
                query = field(q, "query", path, n)
                answers = tuple(dict.fromkeys(field(a, "text", path, n) for a in field(q, "answers", path, n)))
                if not answers:
                    raise ValueError(f"{path}, line {n}: a query has no answers; use the labelled train/val files")
                names = entities + [a for a in answers if a not in entities]
                out.append(Example(prompt=f'{text}\n{query}\nQuestion: what is the "@placeholder"\nAnswer:',
                                   candidates=tuple(" " + e for e in names), label=names.index(answers[0]),
                                   answers=answers, group=str(row.get("idx", n))))
        return out
