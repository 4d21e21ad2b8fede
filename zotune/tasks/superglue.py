"""SuperGLUE classification tasks with MeZO's prompts (Malladi et al. 2023, App. E, from PromptSource).

Each prompt ends in a newline and the verbalizer (Yes / No / Maybe) starts the next line, so the
verbalizers carry no leading space. Labels index the verbalizers as MeZO maps them.
"""

from __future__ import annotations

from pathlib import Path

from .base import ClassificationTask, Example
from .benchmark import BenchmarkTask
from .data import field, read_jsonl


def _label(value, mapping: dict, path: Path, lineno: int) -> int:
    if value not in mapping:
        raise ValueError(f"{path}, line {lineno}: label {value!r} is not one of {', '.join(map(repr, mapping))}; "
                         "is this the official file of this task?")
    return mapping[value]


class RowTask(BenchmarkTask, ClassificationTask):
    """A task with one example per line: ``format`` turns a row into (prompt, label)."""

    labels: dict = {}

    def format(self, row: dict, path: Path, lineno: int) -> str:
        raise NotImplementedError

    def read(self, path: Path) -> list[Example]:
        return [self.example(self.format(row, path, n), _label(field(row, "label", path, n), self.labels, path, n))
                for n, row in read_jsonl(path)]


class RTETask(RowTask):
    name, folder = "rte", "RTE"
    verbalizers = ("Yes", "No")
    labels = {"entailment": 0, "not_entailment": 1}

    def format(self, row, path, n):
        premise, hypothesis = field(row, "premise", path, n), field(row, "hypothesis", path, n)
        return f'{premise}\nDoes this mean that "{hypothesis}" is true? Yes or No?\n'


class CBTask(RowTask):
    name, folder = "cb", "CB"
    verbalizers = ("Yes", "No", "Maybe")
    labels = {"entailment": 0, "contradiction": 1, "neutral": 2}
    dev_size = 100  # MeZO: CB's 250 training rows give 100 dev, 150 train

    def format(self, row, path, n):
        premise, hypothesis = field(row, "premise", path, n), field(row, "hypothesis", path, n)
        return f'Suppose {premise} Can we infer that "{hypothesis}"? Yes, No, or Maybe?\n'


class BoolQTask(RowTask):
    """BoolQ with MeZO's default template (V3). Only the validation file is available here: when
    ``BoolQ/train.jsonl`` is missing, test is 1000 validation rows and train/dev are drawn from the rest."""

    name, folder = "boolq", "BoolQ"
    verbalizers = ("No", "Yes")
    labels = {False: 0, True: 1}
    needs_train_file = False

    def format(self, row, path, n):
        passage, question = field(row, "passage", path, n), field(row, "question", path, n).strip()
        if not question.endswith("?"):
            question += "?"
        return f"{passage} {question[:1].upper()}{question[1:]}\n"


class WSCTask(RowTask):
    name, folder = "wsc", "WSC"
    verbalizers = ("No", "Yes")
    labels = {False: 0, True: 1}
    dev_size = 100  # 554 training rows: MeZO's 500 dev would leave 54 to train on

    def format(self, row, path, n):
        target = field(row, "target", path, n)
        span1, span2 = field(target, "span1_text", path, n), field(target, "span2_text", path, n)
        text = field(row, "text", path, n)
        return f'{text}\nIn the previous sentence, does the pronoun "{span2.lower()}" refer to {span1}? Yes or No?\n'


class WiCTask(RowTask):
    name, folder = "wic", "WiC"
    verbalizers = ("No", "Yes")
    labels = {False: 0, True: 1}

    def format(self, row, path, n):
        word = field(row, "word", path, n)
        s1, s2 = field(row, "sentence1", path, n), field(row, "sentence2", path, n)
        return f'Does the word "{word}" have the same meaning in these two sentences? Yes, No?\n{s1}\n{s2}\n'


class MultiRCTask(BenchmarkTask, ClassificationTask):
    """MultiRC as MeZO trains it: one yes/no example per (paragraph, question, answer option); the
    paragraph-question pair is the example's ``group``. The metric is per-option accuracy."""

    name, folder = "multirc", "MultiRC"
    verbalizers = ("No", "Yes")

    def read(self, path: Path) -> list[Example]:
        out = []
        for n, row in read_jsonl(path):
            passage = field(row, "passage", path, n)
            text = field(passage, "text", path, n)
            for q in field(passage, "questions", path, n):
                question = field(q, "question", path, n)
                group = f"{row.get('idx', n)}-{q.get('idx', len(out))}"
                for a in field(q, "answers", path, n):
                    answer = field(a, "text", path, n)
                    label = _label(field(a, "label", path, n), {0: 0, 1: 1}, path, n)
                    prompt = f'{text}\nQuestion: {question}\nI found this answer "{answer}". Is that correct? Yes or No?\n'
                    out.append(self.example(prompt, label, group=group))
        return out
