"""A task made from the user's own data: a JSONL/CSV/TSV file (or files, or a ``datasets`` object) plus
a short spec (see ``custom_spec``) that says how a row becomes a prompt and what the right answer is.

The task produces the same ``Example``s as the built-in tasks, so the kind's shared scoring, loss,
decoding and metrics apply unchanged. The first ``load()`` (or ``check()``) reads and validates
every file and split at once; the training harness loads all splits before the model, so a bad row
fails in milliseconds with the file, the line and the fix, instead of minutes into a run.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, TypeVar

from .base import Example, Task
from .custom_files import (Row, dataset_splits, is_data_file, is_dataset, is_saved_dataset, load_saved_dataset,
                           read_rows, split_files_in)
from .custom_spec import SPLITS, SplitFractions, TaskSpec, label_key, load_spec

T = TypeVar("T")


class CustomTask(Task):
    """The user's data as a task of the kind its spec implies (``label`` -> classification,
    ``choices`` -> multiple_choice, ``completion`` -> generation)."""

    splits = SPLITS

    def __init__(self, source: str | Path | Any, spec: str | Path | dict | TaskSpec | None):
        self.spec = spec if isinstance(spec, TaskSpec) else load_spec(spec)
        self.source = source
        self.kind = self.spec.kind
        self.metric = self.spec.metric
        self.name = self.spec.name or _default_name(source)
        self.separator = self.spec.separator
        self.normalize = self.spec.normalize  # read by the multiple-choice scoring
        if self.spec.stop is not None:
            self.stop = self.spec.stop
        if self.spec.max_new_tokens is not None:
            self.max_new_tokens = self.spec.max_new_tokens
        self.verbalizers = tuple(self.separator + w for _, w in self.spec.verbalizers)
        self._label_index = {key: i for i, (key, _) in enumerate(self.spec.verbalizers)}
        self._examples: dict[str, tuple[Example, ...]] | None = None
        if self.kind == "generation":
            clash = [s for s in self.stop if s in self.separator]
            if clash:
                raise ValueError(f"{self.spec.where}: the separator {self.separator!r} contains the stop string "
                                 f"{clash[0]!r}, so decoding would end before the answer; change one of them")

    # ------------------------------------------------------------------ the Task interface

    def load(self, split: str, data_dir: str | None = None) -> list[Example]:
        self.check_split(split)
        if data_dir is not None:
            raise ValueError("--data-dir is for the built-in tasks; your own data's files come from --task "
                             "(a file or a folder) and the spec's files:; drop --data-dir")
        return list(self._all()[split])

    def check(self) -> dict[str, int]:
        """Read, split and validate all the data now; the number of examples per split.

        Raises ValueError (FileNotFoundError for a missing file) on the first problem, naming the
        file, the line and the fix."""
        return {split: len(exs) for split, exs in self._all().items()}

    def target(self, ex: Example) -> str:
        """As the base, but a generation answer follows the spec's ``separator`` (default: a space)."""
        if self.kind == "generation" and ex.answers:
            return self.separator + ex.answers[0].strip() + (self.stop[0] if self.stop else "")
        return super().target(ex)

    # ------------------------------------------------------------------ rows -> splits

    def _all(self) -> dict[str, tuple[Example, ...]]:
        if self._examples is None:
            # Validate in file order (so the first complaint is about the first bad line), then split.
            given = {split: self._examples_of(rows) for split, rows in self._rows_per_split().items()}
            carved = carve_splits(given, self.spec.split, self._describe())
            self._examples = {split: tuple(carved[split]) for split in SPLITS}
        return self._examples

    def _describe(self) -> str:
        return "the Dataset" if is_dataset(self.source) else str(self.source)

    def _rows_per_split(self) -> dict[str, list[Row]]:
        source = self.source
        if is_dataset(source):
            self._refuse_files("a datasets object")
            return dataset_splits(source, "the Dataset")
        path = Path(source).expanduser()
        if path.is_dir() and is_saved_dataset(path):
            self._refuse_files("a datasets folder")
            return dataset_splits(load_saved_dataset(path), str(path))
        if path.is_dir():
            files, base = split_files_in(path), path
        elif not is_data_file(path):
            return {"train": read_rows(path)}  # raises: it explains the supported file types
        elif not path.is_file():
            raise FileNotFoundError(f"data file not found: {path}; --task takes a .jsonl, .csv or .tsv file, "
                                    "a folder of train/dev/test files, or a built-in task name")
        else:
            files, base = {"train": path}, path.parent
        for split, name in self.spec.files.items():
            given = base / Path(name).expanduser()
            if split == "train" and not path.is_dir() and given.resolve() != path.resolve():
                raise ValueError(f"{self.spec.where}: files.train is {given} but --task names {path}; the --task "
                                 "file is the training file, so drop files.train or make them the same")
            files[split] = given
        return {split: read_rows(p) for split, p in files.items()}

    def _refuse_files(self, what: str) -> None:
        if self.spec.files:
            raise ValueError(f"{self.spec.where}: files: applies to data files, but --task is {what}, which "
                             "brings its own splits; remove files: from the spec")

    # ------------------------------------------------------------------ rows -> examples

    def _examples_of(self, rows: list[Row]) -> list[Example]:
        seen: set[str] = set()
        out = []
        for row in rows:
            if row.source not in seen:  # the spec against the first row of each file: one clear message
                seen.add(row.source)
                self._check_fields(row)
            out.append(self._example(row))
        return out

    def _needed_fields(self) -> list[tuple[str, str]]:
        """(field, the spec key that names it) for every field a row must have."""
        spec = self.spec
        needed = [(f, "template") for f in spec.template_fields]
        if spec.kind == "classification":
            needed.append((spec.label, "label"))
        elif spec.kind == "generation":
            needed.append((spec.completion, "completion"))
        else:
            fields = (spec.choices,) if isinstance(spec.choices, str) else spec.choices
            needed += [(f, "choices") for f in fields] + [(spec.answer, "answer")]
        return needed

    def _check_fields(self, row: Row) -> None:
        have = ", ".join(row.values) or "none"
        for f, key in self._needed_fields():
            if f not in row.values:
                what = f"the template names {{{f}}}" if key == "template" else f"{key}: names the field {f!r}"
                raise ValueError(f"{self.spec.where}: {what}, but the rows of {row.source} have no such field "
                                 f"(first row, {row.where.rsplit(', ', 1)[-1]}, has: {have}); fix the spec's "
                                 f"{key} or the data")

    def _value(self, row: Row, f: str, key: str) -> Any:
        if f not in row.values:
            raise ValueError(f"{row.where}: no field {f!r} (needed by the spec's {key}; this row has: "
                             f"{', '.join(row.values) or 'none'}); add it to the row")
        v = row.values[f]
        if v is None:
            raise ValueError(f"{row.where}: field {f!r} is null; give it a value (the spec's {key} needs it)")
        return v

    def _prompt(self, row: Row) -> str:
        parts = []
        for literal, f in self.spec.template:
            parts.append(literal)
            if f is not None:
                v = self._value(row, f, "template")
                if isinstance(v, (list, dict)):
                    raise ValueError(f"{row.where}: field {f!r} holds a {type(v).__name__}, but the template can "
                                     "only show text or numbers; make it a string or leave it out of the template")
                parts.append(str(v))
        return "".join(parts)

    def _example(self, row: Row) -> Example:
        prompt = self._prompt(row)
        if self.kind == "classification":
            return Example(prompt=prompt, candidates=self.verbalizers, label=self._label(row))
        if self.kind == "multiple_choice":
            choices = self._choices(row)
            return Example(prompt=prompt, candidates=tuple(self.separator + c for c in choices),
                           label=self._answer(row, choices))
        return Example(prompt=prompt, answers=self._completions(row))

    def _label(self, row: Row) -> int:
        value = self._value(row, self.spec.label, "label")
        key = label_key(value)
        if key not in self._label_index:
            known = ", ".join(repr(k) for k in self._label_index)
            raise ValueError(f"{row.where}: label {value!r} is not one of the verbalizers' labels ({known}); "
                             f"add it to verbalizers: in {self.spec.where}, or fix the row")
        return self._label_index[key]

    def _choices(self, row: Row) -> list[str]:
        spec = self.spec
        if isinstance(spec.choices, str):
            raw = self._value(row, spec.choices, "choices")
            if not isinstance(raw, list):
                raise ValueError(f"{row.where}: field {spec.choices!r} holds {type(raw).__name__}, not a list of "
                                 "choices; in CSV/TSV give one column per choice and list them: "
                                 "choices: [choice1, choice2]")
        else:
            raw = [self._value(row, f, "choices") for f in spec.choices]
        choices = [label_key(c) for c in raw]
        if len(choices) < 2 or any(not c for c in choices):
            raise ValueError(f"{row.where}: choices must be at least two non-empty texts, got {raw!r}; fix the row")
        if len(set(choices)) != len(choices):
            raise ValueError(f"{row.where}: two choices are the same text ({choices}); the model could not tell "
                             "them apart; make them differ")
        return choices

    def _answer(self, row: Row, choices: list[str]) -> int:
        """The right choice: a JSON integer is an index; text is matched against the choices first,
        then read as an index (CSV has only text)."""
        value = self._value(row, self.spec.answer, "answer")
        index = None
        if isinstance(value, int) and not isinstance(value, bool):
            index = value
        elif isinstance(value, str):
            if value.strip() in choices:
                return choices.index(value.strip())
            if value.strip().lstrip("-").isdigit():
                index = int(value)
        if index is None:
            raise ValueError(f"{row.where}: answer {value!r} is neither one of the choices ({choices}) nor a "
                             "0-based index; give the index or the exact text of the right choice")
        if not 0 <= index < len(choices):
            raise ValueError(f"{row.where}: answer {index} is out of range for {len(choices)} choices (0 to "
                             f"{len(choices) - 1}); answers are 0-based indices")
        return index

    def _completions(self, row: Row) -> tuple[str, ...]:
        value = self._value(row, self.spec.completion, "completion")
        items = value if isinstance(value, list) else [value]
        texts = [label_key(v) for v in items]
        if not texts or any(not t for t in texts):
            raise ValueError(f"{row.where}: completion {value!r} must be a non-empty string or a list of them; "
                             "fix the row")
        for t in texts:
            hit = next((s for s in self.stop if s in t), None)
            if hit is not None:
                raise ValueError(f"{row.where}: completion {t!r} contains the stop string {hit!r}, so decoding "
                                 "would end before the answer could match; set stop: in the spec to a string the "
                                 "completions never contain, or shorten the completion")
        return tuple(texts)


def carve_splits(given: dict[str, list[T]], fractions: SplitFractions, source: str) -> dict[str, list[T]]:
    """Give dev and test their rows: their own file's when they have one, else a seeded draw from train.

    One shuffle with ``random.Random(seed)`` decides the draw, so the splits are disjoint and the same
    on every machine; rows keep their file order inside each split.
    """
    missing = [s for s in ("dev", "test") if s not in given]
    if not missing:
        return given
    train = given["train"]
    counts = {s: max(1, round(getattr(fractions, s) * len(train))) for s in missing}
    if len(train) - sum(counts.values()) < 1:
        wanted = " and ".join(f"{s} ({getattr(fractions, s):.0%})" for s in missing)
        raise ValueError(f"{source}: {len(train)} row(s) are too few to draw {wanted} and keep training rows; "
                         "add rows, or give dev/test their own files (files: in the spec)")
    order = list(range(len(train)))
    random.Random(fractions.seed).shuffle(order)
    out = dict(given)
    start = 0
    for s in missing:
        out[s] = [train[i] for i in sorted(order[start:start + counts[s]])]
        start += counts[s]
    out["train"] = [train[i] for i in sorted(order[start:])]
    return out


def _default_name(source: Any) -> str:
    if is_dataset(source):
        return "custom"
    path = Path(source)
    return (path.name if path.is_dir() else path.stem) or "custom"
