"""Forward passes that apply the LM head only where something is scored.

Everything here *calls* modules (the model, and through it its LM head), never reads
``module.weight``: the ZO engine perturbs weights in forward hooks, which a direct weight read
would silently bypass. ``logits_to_keep`` makes Hugging Face causal LMs run the LM head on the
last positions only (``lm_head(hidden[:, -k:])``), so a batch costs B x k x vocab, not
B x sequence x vocab; the rows are left-padded, so those last positions are the scored ones.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that ignore left padding (models with absolute positions need them)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def cache_argument(model) -> str:
    """The name of the KV-cache argument and output: ``cache`` in recent transformers (which
    deprecates ``past_key_values``), ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def call(model, keep: int, **kwargs):
    """``model(**kwargs)`` with the LM head on the last ``keep`` positions where the model supports
    ``logits_to_keep`` (older or custom models compute all positions; callers slice)."""
    try:
        return model(**kwargs, logits_to_keep=keep)
    except TypeError:
        return model(**kwargs)


@dataclass
class Prefix:
    """Keys and values of a text shared by every row (the ICL demonstrations), computed once.

    Rows then run on top of a copy of it, so a prefix of P tokens costs one forward instead of
    one per example; the result equals reading prefix + row in one sequence (tested).
    """

    cache: object
    length: int
    bytes_per_row: int

    @classmethod
    def build(cls, model, ids: list[int]) -> "Prefix":
        dev = model_device(model)
        x = torch.tensor([ids], device=dev)
        with torch.no_grad():
            out = call(model, 1, input_ids=x, attention_mask=torch.ones_like(x), use_cache=True)
        cache = getattr(out, cache_argument(model))
        size = sum(t.numel() * t.element_size() for layer in getattr(cache, "layers", [])
                   for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if torch.is_tensor(t))
        return cls(cache, len(ids), size)

    def inputs(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
        """Forward arguments for rows read after the prefix (the cache copied to the batch size)."""
        n = input_ids.shape[0]
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(n)
        full = torch.cat([attention_mask.new_ones((n, self.length)), attention_mask], dim=1)
        return {"input_ids": input_ids, "attention_mask": full, "position_ids": positions(full)[:, self.length:],
                cache_argument(model): cache}


def last_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: int,
                prefix: Prefix | None = None) -> torch.Tensor:
    """Logits [B, keep, V] of the last ``keep`` positions (rows read after ``prefix`` when given)."""
    dev = model_device(model)
    mask = attention_mask.to(dev)
    if prefix is not None:
        kwargs = prefix.inputs(model, input_ids.to(dev), mask)
    else:
        kwargs = dict(input_ids=input_ids.to(dev), attention_mask=mask, position_ids=positions(mask))
    return call(model, keep, **kwargs).logits[:, -keep:, :]


def continuation_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          cont_lens: torch.Tensor, prefix: Prefix | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-likelihoods [B, L] of each row's last ``cont_lens[i]`` tokens given what precedes
    them, and the mask [B, L] of the positions that belong to a continuation (L = max length).

    Token t is predicted at position t-1, so the last L+1 positions are kept and the final one
    (which predicts past the end) dropped. Float32, whatever the autocast dtype.
    """
    span = int(cont_lens.max())
    logits = last_logits(model, input_ids, attention_mask, span + 1, prefix)[:, :-1].float()
    targets = input_ids[:, -span:].to(logits.device)
    token_lp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    lens = cont_lens.to(logits.device)
    mask = torch.arange(span, device=logits.device).unsqueeze(0) >= (span - lens).unsqueeze(1)
    return token_lp.masked_fill(~mask, 0.0), mask


def nll_mean(token_lp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over the masked tokens (teacher-forced cross-entropy)."""
    return -(token_lp * mask).sum() / mask.sum().clamp(min=1)


def cross_entropy(scores: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of ``labels`` over candidate scores (padding candidates are -inf)."""
    return F.cross_entropy(scores, labels.to(scores.device), reduction=reduction)
