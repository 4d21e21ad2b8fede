"""Prompt-based classification tasks, scored MeZO-style.

A task turns an example into a prompt whose *next token* is the answer, and names one
verbalizer word per label. The model is then a classifier over those candidate tokens:
we read the logits at the last prompt position only, restricted to the candidate ids
(MeZO's "train as classification"). Everything here computes outputs by *calling*
modules, never by reading ``module.weight``: the ZO engine perturbs weights through
forward pre-hooks, and direct weight reads would silently bypass the perturbation.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Example:
    text: str
    label: int


class Task:
    """Base class: subclasses set ``name``/``verbalizers`` and implement ``prompt``/``load``."""

    name: str = ""
    verbalizers: list[str] = []
    splits: tuple[str, ...] = ("train", "dev", "test")

    def prompt(self, ex: Example) -> str:
        raise NotImplementedError

    def load(self, split: str, data_dir: str | None = None) -> list[Example]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, verbalizers={self.verbalizers!r})"


_warned_multitoken: set[tuple[str, str]] = set()


def candidate_ids(task: Task, tokenizer) -> torch.Tensor:
    """First token id of each verbalizer (no BOS), warning once if a word splits into several tokens.

    Only the first token is scored, so a multi-token verbalizer is still usable, but two
    verbalizers sharing a first token would be indistinguishable - hence the error below.
    """
    ids = []
    for word in task.verbalizers:
        toks = tokenizer(word, add_special_tokens=False)["input_ids"]
        if not toks:
            raise ValueError(f"verbalizer {word!r} of task {task.name!r} encodes to no tokens")
        key = (task.name, word)
        if len(toks) > 1 and key not in _warned_multitoken:
            _warned_multitoken.add(key)
            warnings.warn(f"verbalizer {word!r} is {len(toks)} tokens {toks}; scoring its first token only")
        ids.append(toks[0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"verbalizers {task.verbalizers!r} share a first token: {ids}")
    return torch.tensor(ids, dtype=torch.long)


def _special_prefix(tokenizer) -> list[int]:
    """Special tokens the tokenizer puts *before* the text (e.g. BOS), which truncation must keep."""
    with_special = tokenizer("x", add_special_tokens=True)["input_ids"]
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    n = len(with_special) - len(plain)
    if n > 0 and with_special[n:] == plain:
        return with_special[:n]
    return []


def encode(task: Task, tokenizer, examples: list[Example], max_length: int = 128) -> dict:
    """Tokenize prompts into a left-padded batch.

    Left padding puts every answer position in the last column, so one ``logits_to_keep=1``
    forward serves the whole batch. Over-long prompts lose tokens from the *left* of the
    sentence (after any BOS): the prompt suffix ("It was") must survive or the task breaks.
    Padding is done here, not by the tokenizer, so it holds whatever ``padding_side`` says.
    """
    if not examples:
        raise ValueError("encode() needs at least one example")
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    prefix = _special_prefix(tokenizer)
    if max_length <= len(prefix):
        raise ValueError(f"max_length={max_length} leaves no room for text")
    rows = []
    for ex in examples:
        ids = tokenizer(task.prompt(ex), add_special_tokens=True)["input_ids"]
        if len(ids) > max_length:
            ids = prefix + ids[len(ids) - (max_length - len(prefix)):]
        rows.append(ids)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        attention_mask[i, width - len(r):] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": torch.tensor([ex.label for ex in examples], dtype=torch.long),
        "candidate_ids": candidate_ids(task, tokenizer),
    }


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def candidate_logits(model, batch: dict) -> torch.Tensor:
    """Float32 logits [B, C] of the candidate tokens at the answer (last) position.

    ``logits_to_keep=1`` applies the LM head to the last position only (the full-vocab
    head dominates the cost of short prompts). Position ids are derived from the mask so
    left padding does not shift positions, for models with absolute position embeddings.
    """
    dev = _model_device(model)
    mask = batch["attention_mask"].to(dev)
    kwargs = dict(
        input_ids=batch["input_ids"].to(dev),
        attention_mask=mask,
        position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
    )
    try:
        logits = model(**kwargs, logits_to_keep=1).logits
    except TypeError:  # older / custom models without logits_to_keep
        logits = model(**kwargs).logits
    return logits[:, -1, :].index_select(-1, batch["candidate_ids"].to(dev)).float()


def loss_fn(model, batch: dict) -> torch.Tensor:
    """Cross-entropy of the label over the candidate logits (MeZO's classification objective)."""
    logits = candidate_logits(model, batch)
    return F.cross_entropy(logits, batch["labels"].to(logits.device))


def evaluate(model, tokenizer, task: Task, examples: list[Example], batch_size: int = 32,
             autocast: str | None = None, device=None, max_length: int = 128) -> dict:
    """Accuracy (argmax over candidates) and mean loss, batched, without gradients.

    Examples are batched in order of prompt length so padding stays small; the result
    does not depend on the order because left padding makes rows independent.
    """
    from ..models import autocast_context  # local import: models pulls in transformers

    if not examples:
        raise ValueError("evaluate() needs at least one example")
    device = torch.device(device) if device is not None else _model_device(model)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].text))
    correct, loss_sum = 0, 0.0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast_context(device, autocast):
            for start in range(0, len(order), batch_size):
                chunk = [examples[i] for i in order[start:start + batch_size]]
                batch = encode(task, tokenizer, chunk, max_length=max_length)
                logits = candidate_logits(model, batch)
                labels = batch["labels"].to(logits.device)
                correct += int((logits.argmax(-1) == labels).sum())
                loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
    finally:
        model.train(was_training)
    n = len(examples)
    return {"accuracy": correct / n, "loss": loss_sum / n, "n": n}
