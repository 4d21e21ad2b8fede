"""SQuAD v1.1 as generation, with MeZO's template; metric: SQuAD F1 (and exact match).

The official JSON (``data[].paragraphs[].qas[]``) is flattened to one example per question; all of
a question's distinct gold answers count (the dev file has up to a few per question). Train and
dev come from ``train-v1.1.json`` (or the ``train-v1.1.first11articles.json`` slice), test from
``dev-v1.1.json``.
"""

from __future__ import annotations

from pathlib import Path

from .base import Example
from .benchmark import BenchmarkTask
from .data import field, read_json_object


class SQuADTask(BenchmarkTask):
    name, folder = "squad", "SQuAD"
    kind, metric = "generation", "f1"
    train_files = ("train-v1.1.json", "train-v1.1.first11articles.json")
    val_files = ("dev-v1.1.json",)
    stop, max_new_tokens = ("\n",), 50

    def read(self, path: Path) -> list[Example]:
        data = read_json_object(path, "SQuAD's JSON object with a 'data' list")
        out = []
        for article in field(data, "data", path):
            title = field(article, "title", path)
            for para in field(article, "paragraphs", path):
                context = field(para, "context", path)
                for qa in field(para, "qas", path):
                    answers = tuple(dict.fromkeys(field(a, "text", path).strip() for a in field(qa, "answers", path)))
                    if not answers:
                        raise ValueError(f"{path}: question {qa.get('id')!r} has no answers (SQuAD v2's unanswerable "
                                         "questions are not supported; use the v1.1 files)")
                    question = field(qa, "question", path).strip()
                    out.append(Example(prompt=f"Title: {title}\nContext: {context}\nQuestion: {question}\nAnswer:",
                                       answers=answers, group=qa.get("id")))
        return out
