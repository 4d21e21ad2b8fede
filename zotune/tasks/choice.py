"""Scoring a set of candidate continuations: multiple choice, and verbalizers of several tokens.

Each candidate is scored by its summed log-likelihood given the prompt (or its mean per token,
when the task asks for length normalisation); the loss is the cross-entropy of the right
candidate over those scores, which is MeZO's multiple-choice objective (Malladi et al. 2023,
App. E) and, for one-token verbalizers, equals the classification loss over their logits.
All candidates of all examples of a batch go through one forward pass, one row per candidate.
"""

from __future__ import annotations

import torch

from .base import Example
from .encoding import join, left_pad, pad_id
from .scoring import continuation_logprobs, cross_entropy


def correct_mask(examples: list[Example], width: int) -> torch.Tensor:
    """[B, width] True where a candidate counts as right: the label, and every candidate listed in
    ``answers`` (ReCoRD accepts any mention of the answer entity)."""
    out = torch.zeros((len(examples), width), dtype=torch.bool)
    for i, ex in enumerate(examples):
        for j, cand in enumerate(ex.candidates):
            if j == ex.label or (ex.answers and cand.strip() in {a.strip() for a in ex.answers}):
                out[i, j] = True
    return out


def encode_choices(tokenizer, examples: list[Example], max_length: int | None, normalize: bool = False) -> dict:
    """One row per (example, candidate): prompt ids + candidate ids, left-padded."""
    rows, lens, owner, slot = [], [], [], []
    for i, ex in enumerate(examples):
        if not ex.candidates:
            raise ValueError(f"example {i} has no candidates to score (prompt {ex.prompt[:60]!r})")
        for j, cand in enumerate(ex.candidates):
            ids, n = join(tokenizer, ex.prompt, cand, max_length)
            rows.append(ids)
            lens.append(n)
            owner.append(i)
            slot.append(j)
    input_ids, attention_mask = left_pad(rows, pad_id(tokenizer))
    width = max(len(ex.candidates) for ex in examples)
    return {
        "kind": "choice",
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "cont_lens": torch.tensor(lens, dtype=torch.long),
        "owner": torch.tensor(owner, dtype=torch.long),
        "slot": torch.tensor(slot, dtype=torch.long),
        "shape": (len(examples), width),
        "labels": torch.tensor([ex.label if ex.label is not None else -1 for ex in examples], dtype=torch.long),
        "correct": correct_mask(examples, width),
        "normalize": normalize,
    }


def choice_scores(model, batch: dict) -> torch.Tensor:
    """[B, C] float32 candidate scores; -inf where an example has fewer candidates than C."""
    token_lp, mask = continuation_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["cont_lens"],
                                           batch.get("prefix"))
    per_row = token_lp.sum(-1)
    if batch["normalize"]:
        per_row = per_row / mask.sum(-1).clamp(min=1)
    scores = torch.full(batch["shape"], float("-inf"), device=per_row.device, dtype=per_row.dtype)
    return scores.index_put((batch["owner"].to(per_row.device), batch["slot"].to(per_row.device)), per_row)


def choice_loss(model, batch: dict) -> torch.Tensor:
    return cross_entropy(choice_scores(model, batch), batch["labels"])
