"""DROP as generation, with MeZO's template; metric: DROP's F1 (numbers and span bags).

Official JSON: ``{passage_id: {"passage", "qa_pairs": [{"question", "answer", "validated_answers"}]}}``
where an answer is a ``number``, a ``date`` (day, month, year) or a list of ``spans``. Every
distinct gold answer counts; a multi-span answer is stored as its spans joined by " | ", which is
also how the model is taught to write one, and a prediction is split on "|" back into spans.
"""

from __future__ import annotations

from pathlib import Path

from .base import Example
from .benchmark import BenchmarkTask
from .data import field, read_json_object
from .metrics import drop_scores

SPAN_SEPARATOR = " | "


def answer_text(answer: dict, path: Path) -> str | None:
    """One official answer object as text (None when it is empty)."""
    if str(answer.get("number", "")).strip():
        return str(answer["number"]).strip()
    spans = [s.strip() for s in answer.get("spans") or [] if s.strip()]
    if spans:
        return SPAN_SEPARATOR.join(spans)
    date = answer.get("date") or {}
    parts = [str(date.get(k, "")).strip() for k in ("day", "month", "year")]
    text = " ".join(p for p in parts if p)
    return text or None


def spans(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split("|") if s.strip()) or ("",)


class DROPTask(BenchmarkTask):
    name, folder = "drop", "DROP"
    kind, metric = "generation", "f1"
    train_files = ("drop_dataset_train.json",)
    val_files = ("drop_dataset_dev.json",)
    stop, max_new_tokens = ("\n",), 50

    def read(self, path: Path) -> list[Example]:
        data = read_json_object(path, "DROP's JSON object of passages")
        out = []
        for pid, item in data.items():
            passage = field(item, "passage", path)
            for qa in field(item, "qa_pairs", path):
                golds = [field(qa, "answer", path)] + list(qa.get("validated_answers") or [])
                answers = tuple(dict.fromkeys(t for t in (answer_text(a, path) for a in golds) if t))
                if not answers:
                    continue  # DROP has a handful of questions without any usable answer
                question = field(qa, "question", path).strip()
                out.append(Example(prompt=f"Passage: {passage}\nQuestion: {question}\nAnswer:", answers=answers,
                                   group=qa.get("query_id", pid)))
        return out

    def score_answer(self, prediction: str, ex: Example) -> dict[str, float]:
        return drop_scores(spans(prediction), [spans(a) for a in ex.answers])
