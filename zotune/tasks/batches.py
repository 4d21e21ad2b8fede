"""One batch builder and one loss for every task: both dispatch on the task's kind.

``encode`` turns examples into the tensors their kind scores; ``loss_fn(model, batch)`` is the
training objective. With ``objective="loss"`` that is the kind's cross-entropy; ``"accuracy"`` and
``"f1"`` train on the batch's negative metric instead, which has no gradient: zeroth-order methods
only need loss *values*, which is how MeZO trains on SQuAD F1 (Malladi et al. 2023, Sec. 3.3).
"""

from __future__ import annotations

import torch

from .base import KINDS, Example, Task
from .choice import choice_loss, choice_scores, encode_choices
from .classification import candidate_logits, classification_loss, encode_classification
from .generation import encode_generation, generate_answers, generation_loss

OBJECTIVES = ("loss", "accuracy", "f1")


def check_objective(task: Task, objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)} (got {objective!r})")
    if objective == "f1" and task.kind != "generation":
        raise ValueError(f"objective 'f1' scores generated answers; task {task.name!r} is {task.kind}: "
                         "use --objective accuracy (or loss)")


def encode(task: Task, tokenizer, examples: list[Example], max_length: int | None = None,
           objective: str = "loss") -> dict:
    """The batch of ``examples`` for the task's kind (``max_length`` caps each sequence, None: no cap)."""
    if not examples:
        raise ValueError("encode() needs at least one example")
    if task.kind not in KINDS:
        raise ValueError(f"task {task.name!r} has kind {task.kind!r}; known kinds: {', '.join(KINDS)}")
    check_objective(task, objective)
    if task.kind == "classification":
        batch = encode_classification(tokenizer, examples, max_length)
    elif task.kind == "multiple_choice":
        batch = encode_choices(tokenizer, examples, max_length, normalize=getattr(task, "normalize", False))
    else:
        batch = encode_generation(task, tokenizer, examples, max_length)
    if batch["kind"] != "generation" and "correct" not in batch:
        batch["correct"] = torch.nn.functional.one_hot(batch["labels"], len(examples[0].candidates)).bool()
    batch["objective"] = objective
    if objective != "loss" and task.kind == "generation":
        batch["decoder"] = (tokenizer, task, examples)
    return batch


def scores(model, batch: dict) -> torch.Tensor:
    """[B, C] candidate scores of a classification / multiple-choice batch (argmax = prediction)."""
    if batch["kind"] == "classification":
        return candidate_logits(model, batch)
    return choice_scores(model, batch)


def kind_loss(model, batch: dict) -> torch.Tensor:
    kind = batch["kind"]
    if kind == "classification":
        return classification_loss(model, batch)
    if kind == "choice":
        return choice_loss(model, batch)
    return generation_loss(model, batch)


def hits(score_matrix: torch.Tensor, batch: dict) -> torch.Tensor:
    """[B] 1.0 where the best-scoring candidate counts as right."""
    pred = score_matrix.argmax(-1).cpu()
    return batch["correct"].gather(1, pred.unsqueeze(1)).squeeze(1).float()


def loss_fn(model, batch: dict) -> torch.Tensor:
    """The training objective of the batch (lower is better)."""
    objective = batch.get("objective", "loss")
    if objective == "loss":
        return kind_loss(model, batch)
    if batch["kind"] != "generation":
        return -hits(scores(model, batch), batch).mean()
    tokenizer, task, examples = batch["decoder"]
    preds = generate_answers(model, tokenizer, task, batch)
    key = "em" if objective == "accuracy" else "f1"
    return -torch.tensor([task.score_answer(p, ex)[key] for p, ex in zip(preds, examples)]).mean()


def forward_closure(model, batch: dict, autocast: str | None = "bf16"):
    """The closure a ZO optimizer's ``step`` takes: ``loss_fn(model, batch)``, its matmuls in bf16
    autocast by default while the weights stay fp32 (the optimizer runs it under no_grad).

    Why the default: on CPUs with AVX-512 bf16 (and on GPUs) bf16 matmuls are 3-4× faster than fp32
    ones, and a ZO step is mostly forward passes; the weights stay fp32 because bf16 *weights* would
    round away most ε-sized perturbations. The trade-off: the losses carry bf16 rounding (relative
    ~1e-3 per matmul), which the two-point difference sees as noise; ``autocast=None`` computes in
    fp32 (about 3× slower on this CPU), as ``zotune train --autocast none`` does.
    """
    from zotune.models import autocast_context

    device = next(model.parameters()).device

    def closure():
        with autocast_context(device, autocast):
            return loss_fn(model, batch)

    return closure
