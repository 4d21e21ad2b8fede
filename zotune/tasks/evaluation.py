"""Evaluation shared by every task: the task's metric over examples, batched, without gradients."""

from __future__ import annotations

import torch

from ..models import autocast_context
from .base import Example, Task
from .batches import encode, hits, scores
from .encoding import drop_leading, model_context, pad_id, special_prefix
from .generation import generate_answers
from .scoring import Prefix, cross_entropy, model_device

MIN_LENGTH = 8  # the shortest max_length a run may use (config.validate checks the same bound)
PREFIX_MEMORY = 2**30  # bytes of shared-prefix keys/values one batch may hold (the prefix copied per row)


def evaluate(model, tokenizer, task: Task, examples: list[Example], batch_size: int = 32,
             autocast: str | None = None, device=None, max_length: int | None = None,
             prefix_ids: list[int] | None = None) -> dict:
    """The task's metric on ``examples``.

    Returns ``metric`` (the task's headline metric), ``score`` (its value), ``n`` and the kind's
    metrics: ``accuracy`` and the mean cross-entropy ``loss`` for classification and multiple
    choice, ``em`` and ``f1`` for generation. Examples are batched in order of prompt length so
    padding stays small; left padding makes rows independent, so the order does not matter.
    ``max_length`` None means the model's context length. ``prefix_ids`` (the token ids of text
    read before every prompt, e.g. ICL demonstrations) is run once and its keys and values reused.
    """
    if not examples:
        raise ValueError("evaluate() needs at least one example")
    if batch_size < 1:
        raise ValueError(f"batch_size (--batch-size) must be >= 1 (got {batch_size}); evaluation uses 32 by default")
    if max_length is not None and max_length < MIN_LENGTH:
        raise ValueError(f"max_length (--max-length) must be >= {MIN_LENGTH} tokens (got {max_length}); shorter prompts lose "
                         "all their words. Omit it to use the run's, else the model's context length")
    device = torch.device(device) if device is not None else model_device(model)
    max_length = max_length or model_context(model)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].prompt))
    totals: dict[str, float] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast_context(device, autocast):
            prefix = Prefix.build(model, prefix_ids) if prefix_ids else None
            if prefix is not None:
                batch_size = max(1, min(batch_size, PREFIX_MEMORY // max(prefix.bytes_per_row, 1)))
                window = getattr(getattr(model, "config", None), "sliding_window", None)
                if window and window < max_length:
                    # a row's left padding would sit between prefix and prompt, inside a sliding
                    # attention window (Gemma 3: 512), and push real prefix tokens out of it
                    batch_size = 1
                max_length -= prefix.length
            for start in range(0, len(order), batch_size):
                chunk = [examples[i] for i in order[start:start + batch_size]]
                batch = encode(task, tokenizer, chunk, max_length=max_length)
                if prefix is not None:
                    after_prefix(batch, prefix, len(special_prefix(tokenizer)), pad_id(tokenizer))
                for key, value in _batch_totals(model, tokenizer, task, chunk, batch).items():
                    totals[key] = totals.get(key, 0.0) + value
    finally:
        model.train(was_training)
    n = len(examples)
    out = {k: v / n for k, v in totals.items()}
    return {"metric": task.metric, "score": out[task.metric], "n": n, **out}


def after_prefix(batch: dict, prefix: Prefix, n_special: int, pad: int) -> None:
    """Make a batch read after ``prefix``: its rows lose their own special prefix (BOS)."""
    for ids, mask in (("input_ids", "attention_mask"), ("prompt_ids", "prompt_mask")):
        if ids in batch:
            batch[ids], batch[mask] = drop_leading(batch[ids], batch[mask], n_special, pad)
    batch["prefix"] = prefix


def combine(parts: list[dict]) -> dict:
    """One result from evaluations of disjoint example sets (metrics weighted by their sizes)."""
    n = sum(p["n"] for p in parts)
    keys = [k for k in parts[0] if isinstance(parts[0][k], float)]
    out = {k: sum(p[k] * p["n"] for p in parts) / n for k in keys}
    return {**out, "metric": parts[0]["metric"], "score": out["score"], "n": n}


def _batch_totals(model, tokenizer, task: Task, chunk: list[Example], batch: dict) -> dict[str, float]:
    if batch["kind"] == "generation":
        preds = generate_answers(model, tokenizer, task, batch)
        results = [task.score_answer(p, ex) for p, ex in zip(preds, chunk)]
        return {"em": sum(r["em"] for r in results), "f1": sum(r["f1"] for r in results)}
    s = scores(model, batch)
    return {"accuracy": float(hits(s, batch).sum()),
            "loss": float(cross_entropy(s, batch["labels"], reduction="sum"))}
