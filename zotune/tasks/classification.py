"""Classification with verbalizers: one-token fast path, or the candidate scoring of ``choice``.

When every verbalizer is one token (after every prompt of the batch) and the tokens differ, one
forward over the prompts with ``logits_to_keep=1`` gives each verbalizer's logit at the answer
position: MeZO's "train as classification". Restricted to the candidates, those logits differ from
the verbalizers' log-likelihoods by one constant per row, so predictions and the cross-entropy
are exactly those of the general path, which scores multi-token verbalizers by the summed
log-likelihood of their whole token sequence.
"""

from __future__ import annotations

import torch

from .base import Example
from .choice import encode_choices
from .encoding import continuation_ids, left_pad, pad_id, prompt_ids
from .scoring import cross_entropy, last_logits


def single_token_ids(tokenizer, examples: list[Example]) -> list[int] | None:
    """The verbalizers' token ids when each is one distinct token after every prompt, else None."""
    found = None
    for ex in examples:
        ids = [continuation_ids(tokenizer, ex.prompt, c) for c in ex.candidates]
        if any(len(t) != 1 for t in ids):
            return None
        flat = [t[0] for t in ids]
        if len(set(flat)) != len(flat) or (found is not None and flat != found):
            return None
        found = flat
    return found


def encode_classification(tokenizer, examples: list[Example], max_length: int | None) -> dict:
    cands = {ex.candidates for ex in examples}
    if len(cands) != 1:
        raise ValueError("a classification batch needs the same verbalizers in every example; "
                         f"found {len(cands)} different lists")
    ids = single_token_ids(tokenizer, examples)
    if ids is None:
        return encode_choices(tokenizer, examples, max_length)
    input_ids, attention_mask = left_pad([prompt_ids(tokenizer, ex.prompt, max_length) for ex in examples],
                                         pad_id(tokenizer))
    return {
        "kind": "classification",
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": torch.tensor([ex.label for ex in examples], dtype=torch.long),
        "candidate_ids": torch.tensor(ids, dtype=torch.long),
    }


def candidate_logits(model, batch: dict) -> torch.Tensor:
    """Float32 logits [B, C] of the verbalizer tokens at the answer (last) position."""
    logits = last_logits(model, batch["input_ids"], batch["attention_mask"], 1, batch.get("prefix"))[:, -1, :]
    return logits.index_select(-1, batch["candidate_ids"].to(logits.device)).float()


def classification_loss(model, batch: dict) -> torch.Tensor:
    """Cross-entropy of the label over the candidate logits (MeZO's classification objective)."""
    return cross_entropy(candidate_logits(model, batch), batch["labels"])
