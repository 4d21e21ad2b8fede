"""Generation: greedy decoding with the KV cache, and teacher-forced training on the answer.

Training reads the gold answer after the prompt and takes the cross-entropy of the answer tokens
only (the prompt is context, not a target), as MeZO does for SQuAD and DROP (Malladi et al. 2023).
Evaluation decodes greedily: the prompt once, then one token per step reusing the cached keys and
values, until every row has produced a stop string or EOS, or the token budget is spent.
"""

from __future__ import annotations

import torch

from .base import Example, Task
from .encoding import join, left_pad, pad_id, prompt_ids
from .scoring import Prefix, cache_argument, call, continuation_logprobs, model_device, nll_mean, positions


def encode_generation(task: Task, tokenizer, examples: list[Example], max_length: int | None) -> dict:
    """Teacher-forcing rows (prompt + gold target) and, for decoding, the prompts alone (cut so
    that the token budget still fits in ``max_length``)."""
    rows, lens = [], []
    for ex in examples:
        ids, n = join(tokenizer, ex.prompt, task.target(ex), max_length)
        rows.append(ids)
        lens.append(n)
    input_ids, attention_mask = left_pad(rows, pad_id(tokenizer))
    limit = None if max_length is None else max(max_length - task.max_new_tokens, 2)
    prompt_rows = [prompt_ids(tokenizer, ex.prompt, limit) for ex in examples]
    p_ids, p_mask = left_pad(prompt_rows, pad_id(tokenizer))
    return {
        "kind": "generation",
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "cont_lens": torch.tensor(lens, dtype=torch.long),
        "prompt_ids": p_ids,
        "prompt_mask": p_mask,
        "answers": [ex.answers for ex in examples],
    }


def generation_loss(model, batch: dict) -> torch.Tensor:
    token_lp, mask = continuation_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["cont_lens"],
                                           batch.get("prefix"))
    return nll_mean(token_lp, mask)


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


@torch.no_grad()
def greedy_decode(model, tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  max_new_tokens: int, stop: tuple[str, ...] = ("\n",), use_cache: bool = True,
                  prefix: Prefix | None = None) -> tuple[list[str], list[list[int]]]:
    """Greedy continuations of left-padded prompts: (texts cut at the first stop string, token ids).

    Without the cache every step re-reads the whole sequence (the reference the cache must equal).
    Only the last position goes through the LM head. With ``prefix`` the rows continue its cache.
    """
    dev = model_device(model)
    ids, mask = input_ids.to(dev), attention_mask.to(dev)
    eos = tokenizer.eos_token_id
    n = ids.shape[0]
    out_ids: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    past, step_ids, step_pos = None, ids, positions(mask)
    cache_arg = cache_argument(model)
    if prefix is not None:
        if not use_cache:
            raise ValueError("decoding after a cached prefix needs use_cache=True")
        first = prefix.inputs(model, ids, mask)
        past, mask, step_pos = first[cache_arg], first["attention_mask"], first["position_ids"]
    for _ in range(max_new_tokens):
        kwargs = dict(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, use_cache=use_cache)
        if past is not None:
            kwargs[cache_arg] = past
        out = call(model, 1, **kwargs)
        nxt = out.logits[:, -1, :].argmax(-1)
        for i, t in enumerate(nxt.tolist()):
            if done[i]:
                continue
            if t == eos:
                done[i] = True
                continue
            out_ids[i].append(t)
            done[i] = cut_at_stop(tokenizer.decode(out_ids[i], skip_special_tokens=True), stop)[1]
        if all(done):
            break
        mask = torch.cat([mask, mask.new_ones((n, 1))], dim=1)
        if use_cache:
            past, step_ids = getattr(out, cache_arg), nxt.unsqueeze(1)
            step_pos = positions(mask)[:, -1:]
        else:
            ids = torch.cat([ids, nxt.unsqueeze(1)], dim=1)
            step_ids, step_pos = ids, positions(mask)
    texts = [cut_at_stop(tokenizer.decode(t, skip_special_tokens=True), stop)[0].strip() for t in out_ids]
    return texts, out_ids


def generate_answers(model, tokenizer, task: Task, batch: dict, use_cache: bool = True) -> list[str]:
    texts, _ = greedy_decode(model, tokenizer, batch["prompt_ids"], batch["prompt_mask"], task.max_new_tokens,
                             task.stop, use_cache=use_cache, prefix=batch.get("prefix"))
    return texts
