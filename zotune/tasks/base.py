"""What a task is: formatted ``Example``s plus a ``Task`` that loads them.

A task only turns raw rows into text (a prompt, and what may follow it). How that text is scored,
turned into a loss, decoded or measured belongs to the task's *kind* (``classification``,
``multiple_choice``, ``generation``), shared by every task of that kind, so a new task is a loader
and a template, never new scoring code. Nothing here imports a model.
"""

from __future__ import annotations

from dataclasses import dataclass

from .metrics import squad_scores

KINDS = ("classification", "multiple_choice", "generation")


@dataclass(frozen=True)
class Example:
    """One formatted example: what the model reads and what counts as right.

    classification: ``candidates`` are the task's verbalizers (the same for every example) and
    ``label`` indexes the right one; multiple_choice: per-example ``candidates`` + ``label``
    (``answers``, when given, lists every candidate that counts as right, as in ReCoRD);
    generation: ``answers`` are the gold strings (any match counts) and ``candidates`` is empty.
    Candidates are continuations of the prompt, so they carry their own leading space.
    """

    prompt: str
    candidates: tuple[str, ...] = ()
    label: int | None = None
    answers: tuple[str, ...] = ()
    group: str | None = None


class Task:
    """A named task: a kind, a headline metric, its splits and a loader.

    Generation tasks also set ``stop`` (strings that end an answer) and ``max_new_tokens``.
    """

    name: str = ""
    kind: str = "classification"
    metric: str = "accuracy"
    splits: tuple[str, ...] = ("train", "dev", "test")
    stop: tuple[str, ...] = ("\n",)
    max_new_tokens: int = 50

    def load(self, split: str, data_dir: str | None = None) -> list[Example]:
        raise NotImplementedError

    def target(self, ex: Example) -> str:
        """The gold continuation of ``ex.prompt``: what teacher forcing trains on and what a
        demonstration shows. Generation answers get the space that follows ``Answer:`` and the
        stop string, so the model also learns where an answer ends."""
        if self.kind == "generation":
            if not ex.answers:
                raise ValueError(f"task {self.name!r}: a generation example needs at least one answer")
            return " " + ex.answers[0].strip() + (self.stop[0] if self.stop else "")
        if ex.label is None or not 0 <= ex.label < len(ex.candidates):
            raise ValueError(f"task {self.name!r}: example label {ex.label!r} does not index its "
                             f"{len(ex.candidates)} candidates")
        return ex.candidates[ex.label]

    def demonstration(self, ex: Example) -> str:
        """Prompt followed by the gold answer, for in-context learning."""
        return (ex.prompt + self.target(ex)).strip()

    def score_answer(self, prediction: str, ex: Example) -> dict[str, float]:
        """Exact match and F1 of a generated answer (SQuAD's normalisation; DROP overrides)."""
        return squad_scores(prediction, ex.answers)

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ValueError(f"task {self.name!r} has no split {split!r}; choose one of {', '.join(self.splits)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, kind={self.kind!r}, metric={self.metric!r})"


class ClassificationTask(Task):
    """A task whose examples all share one list of verbalizers (``verbalizers[label]`` is right)."""

    kind = "classification"
    metric = "accuracy"
    verbalizers: tuple[str, ...] = ()

    def example(self, prompt: str, label: int, group: str | None = None) -> Example:
        return Example(prompt=prompt, candidates=tuple(self.verbalizers), label=label, group=group)
