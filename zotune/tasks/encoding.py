"""Text to token ids: prompts, their continuations, left-truncation and left-padding.

Rows are left-padded so every sequence ends in the last column: the positions to score (the
prompt's last token, or a continuation's tokens) then sit in the last few columns of every row,
and one forward with ``logits_to_keep`` covers the whole batch. Over-long prompts lose tokens
from their *left* (after any BOS): the end of a prompt ("It was", "Answer:") must survive.
"""

from __future__ import annotations

import torch


def pad_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0


def special_prefix(tokenizer) -> list[int]:
    """Special tokens the tokenizer puts *before* the text (e.g. BOS), which truncation must keep."""
    with_special = tokenizer("x", add_special_tokens=True)["input_ids"]
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    n = len(with_special) - len(plain)
    if n > 0 and with_special[n:] == plain:
        return with_special[:n]
    return []


def model_context(model, fallback: int = 2048) -> int:
    """The longest sequence the model's positions allow (``max_position_embeddings``)."""
    config = getattr(model, "config", None)
    n = getattr(config, "max_position_embeddings", None)
    return int(n) if n else fallback


def prompt_ids(tokenizer, prompt: str, limit: int | None = None) -> list[int]:
    """Token ids of ``prompt`` with the tokenizer's special prefix, cut on the left to ``limit``."""
    ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if limit is not None and len(ids) > limit:
        prefix = special_prefix(tokenizer)
        if limit <= len(prefix):
            raise ValueError(f"a length limit of {limit} tokens leaves no room for text; raise --max-length")
        ids = prefix + ids[len(ids) - (limit - len(prefix)):]
    return ids


def continuation_ids(tokenizer, prompt: str, continuation: str) -> list[int]:
    """Ids of ``continuation`` as the tokenizer splits it *after* ``prompt``.

    Tokenizing prompt+continuation and removing the prompt's ids gives the split a model saw in
    training (it matters for tokenizers that mark word starts); when the joint split does not
    start with the prompt's ids (a merge across the boundary), the continuation is tokenized alone.
    """
    head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full = tokenizer(prompt + continuation, add_special_tokens=False)["input_ids"]
    if full[:len(head)] == head and len(full) > len(head):
        return full[len(head):]
    ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"continuation {continuation!r} encodes to no tokens")
    return ids


def join(tokenizer, prompt: str, continuation: str, max_length: int | None) -> tuple[list[int], int]:
    """(prompt ids + continuation ids, number of continuation ids), at most ``max_length`` long.

    The continuation is what gets scored, so the prompt gives way first; a continuation longer than
    the whole budget keeps its beginning.
    """
    cont = continuation_ids(tokenizer, prompt, continuation)
    if max_length is not None:
        room = max_length - len(special_prefix(tokenizer)) - 1
        if room < 1:
            raise ValueError(f"max_length={max_length} leaves no room for text")
        cont = cont[:room]
        return prompt_ids(tokenizer, prompt, max_length - len(cont)) + cont, len(cont)
    return prompt_ids(tokenizer, prompt) + cont, len(cont)


def drop_leading(input_ids: torch.Tensor, attention_mask: torch.Tensor, n: int, pad: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded rows without their first ``n`` real tokens: rows read after a shared prefix
    drop their own BOS (the prefix has one), leaving no gap between prefix and text."""
    if not n:
        return input_ids, attention_mask
    starts = (attention_mask == 0).sum(-1).tolist()
    return left_pad([input_ids[i, s + n:].tolist() for i, s in enumerate(starts)], pad)


def left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each row right-aligned. Done here, not by the tokenizer, so it
    holds whatever ``padding_side`` says."""
    if not rows:
        raise ValueError("cannot build a batch from no rows")
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        attention_mask[i, width - len(r):] = 1
    return input_ids, attention_mask

