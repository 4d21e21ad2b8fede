"""Tasks: packaged SST-2 data, prompt encoding, candidate scoring and the loss."""

from importlib import resources
from pathlib import Path

import pytest
import torch

from zotune.models import load_model
from zotune.tasks import Example, TASKS, candidate_logits, encode, evaluate, get_task, loss_fn
from zotune.tasks.sst2 import Row, SST2Task, read_tsv

GLUE_SST2 = Path("/work/shared/data/SST-2")


@pytest.fixture(scope="module")
def sst2():
    return get_task("sst2")


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-opt"])
def tiny(request):
    return load_model(request.param, device="cpu")


def test_registry():
    assert "sst2" in TASKS and isinstance(get_task("SST-2"), SST2Task)
    with pytest.raises(ValueError, match="known tasks: .*sst2"):
        get_task("mnli")
    with pytest.raises(ValueError, match="takes no task spec"):
        get_task("sst2", spec={"template": "{x}"})


def test_sst2_prompt_and_verbalizers(sst2, tmp_path):
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\na fine movie . \t1\n")
    ex = sst2.load("glue-dev", data_dir=str(tmp_path))[0]
    assert ex == Example("a fine movie . It was", (" terrible", " great"), 1)
    assert sst2.demonstration(ex) == "a fine movie . It was great"
    assert sst2.verbalizers == (" terrible", " great") and (sst2.kind, sst2.metric) == ("classification", "accuracy")


def test_packaged_splits(sst2, monkeypatch):
    monkeypatch.delenv("ZOTUNE_DATA", raising=False)
    splits = {s: sst2.load(s) for s in ("train", "dev", "test")}
    assert {s: len(v) for s, v in splits.items()} == {"train": 1000, "dev": 500, "test": 1000}
    texts = {s: {ex.prompt for ex in v} for s, v in splits.items()}
    assert all(len(texts[s]) == len(splits[s]) for s in splits)  # no duplicates inside a split
    assert not (texts["train"] & texts["dev"] or texts["train"] & texts["test"] or texts["dev"] & texts["test"])
    for v in splits.values():
        assert {ex.label for ex in v} == {0, 1}
    for split in splits:  # found through importlib.resources, as in an installed wheel
        assert (resources.files("zotune") / "data" / "sst2" / f"{split}.tsv").is_file()
    with pytest.raises(ValueError, match="choose one of .*glue-dev"):
        sst2.load("validation")
    with pytest.raises(ValueError, match="data-dir"):
        sst2.load("glue-dev")


def test_data_dir_redraws_the_protocol_sample(tmp_path, sst2):
    rows = [f"sentence number {i} \t{i % 2}" for i in range(3000)] + ["sentence number 7 \t1"]  # one repeat
    (tmp_path / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\nok \t1\n")
    splits = {s: sst2.load(s, data_dir=str(tmp_path)) for s in ("train", "dev", "test")}
    assert [len(v) for v in splits.values()] == [1000, 500, 1000]
    assert len({ex.prompt for v in splits.values() for ex in v}) == 2500
    assert splits["train"] == sst2.load("train", data_dir=str(tmp_path))  # deterministic
    assert sst2.load("glue-dev", data_dir=str(tmp_path)) == [sst2.example("ok It was", 1)]
    assert sst2.rows("glue-dev", data_dir=str(tmp_path)) == [Row("ok", 1)]


@pytest.mark.skipif(not (GLUE_SST2 / "train.tsv").is_file(), reason="GLUE SST-2 folder not present")
def test_packaged_files_match_redraw_from_glue(sst2):
    for split in ("train", "dev", "test"):
        assert sst2.load(split, data_dir=str(GLUE_SST2)) == sst2.load(split)
    assert len(sst2.load("glue-dev", data_dir=str(GLUE_SST2))) == 872


@pytest.mark.parametrize("content,match", [
    ("text\tlabel\nfine\t1\n", r"line 1: header"),
    ("sentence\tlabel\nfine\t1\nno tab here\n", r"line 3: expected 'sentence<TAB>label'"),
    ("sentence\tlabel\nfine\t1\nbad\tpositive\n", r"line 3: label must be 0 or 1"),
])
def test_malformed_tsv_names_file_line_and_fix(tmp_path, content, match):
    path = tmp_path / "train.tsv"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as err:
        read_tsv(path)
    assert str(path) in str(err.value) and "make_sst2_sample.py" in str(err.value)


def test_missing_tsv(tmp_path, sst2):
    with pytest.raises(FileNotFoundError, match="train.tsv"):
        sst2.load("train", data_dir=str(tmp_path))


def test_encode_left_pads_and_keeps_prompt_suffix(sst2, tiny):
    _, tok = tiny
    short, long = sst2.example("good . It was", 1), sst2.example("word " * 300 + "bad . It was", 0)
    batch = encode(sst2, tok, [short, long], max_length=32)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == (2, 32)
    assert mask[:, -1].all() and mask[1].all() and not mask[0, 0]  # padding on the left only
    assert batch["labels"].tolist() == [1, 0]
    assert batch["kind"] == "classification"  # both verbalizers are one token: the fast path
    assert batch["candidate_ids"].tolist() == [tok(w, add_special_tokens=False)["input_ids"][0]
                                               for w in sst2.verbalizers]
    # the long sentence lost words from its left, but BOS and the "bad . It was" suffix survive
    assert ids[1, 0].item() == tok.bos_token_id
    assert tok.decode(ids[1, 1:]).endswith("word bad . It was")


def test_batched_matches_single_example_logits(sst2, tiny):
    model, tok = tiny
    examples = sorted(sst2.load("dev")[:6], key=lambda ex: len(ex.prompt))  # different lengths
    batched = candidate_logits(model, encode(sst2, tok, examples))
    single = torch.cat([candidate_logits(model, encode(sst2, tok, [ex])) for ex in examples])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)


def test_loss_is_finite_and_differentiable(sst2, tiny):
    model, tok = tiny
    model.zero_grad()
    loss = loss_fn(model, encode(sst2, tok, sst2.load("train")[:8]))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    model.zero_grad()


def test_scoring_goes_through_module_calls(sst2, tiny):
    """The ZO engine perturbs weights in forward pre-hooks; scoring must see those hooks."""
    model, tok = tiny
    batch = encode(sst2, tok, sst2.load("dev")[:3])
    with torch.no_grad():
        before = candidate_logits(model, batch)
        handle = model.lm_head.register_forward_pre_hook(lambda mod, args: (args[0] * 2,))
        try:
            hooked = candidate_logits(model, batch)
        finally:
            handle.remove()
    torch.testing.assert_close(hooked, before * 2, atol=1e-5, rtol=1e-4)


def test_candidate_logits_without_logits_to_keep(sst2, tiny):
    model, tok = tiny

    class Plain(torch.nn.Module):  # a model whose forward has no logits_to_keep argument
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, input_ids, attention_mask, position_ids):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)

    batch = encode(sst2, tok, sst2.load("dev")[:3])
    with torch.no_grad():
        torch.testing.assert_close(candidate_logits(Plain(), batch), candidate_logits(model, batch))


def test_evaluate(sst2, tiny):
    model, tok = tiny
    examples = sst2.load("dev")[:40]
    r = evaluate(model, tok, sst2, examples, batch_size=16)
    assert r["n"] == 40 and 0.0 <= r["accuracy"] <= 1.0 and r["loss"] > 0
    assert r["metric"] == "accuracy" and r["score"] == r["accuracy"]
    r1 = evaluate(model, tok, sst2, examples, batch_size=40, autocast="bf16")
    assert abs(r1["accuracy"] - r["accuracy"]) <= 0.1  # bf16 may flip near-ties only
    assert not model.training


def test_forward_closure_autocasts_the_forward_and_trains():
    """The quickstart's closure: bf16 matmuls (fp32 weights), the loss a MeZO step reads."""
    import zotune
    from zotune.models import load_model
    from zotune.tasks import encode, forward_closure, get_task, loss_fn

    model, tok = load_model("tiny-llama")
    task = get_task("sst2")
    batch = encode(task, tok, task.load("train")[:8], max_length=48)
    fast, exact = forward_closure(model, batch)(), forward_closure(model, batch, autocast=None)()
    assert fast.dtype == torch.float32 and torch.equal(exact, loss_fn(model, batch))
    assert not torch.equal(fast, exact) and abs(fast.item() - exact.item()) < 0.05  # bf16 rounding only
    opt = zotune.optim.MeZO(model.named_parameters(), lr=1e-3, eps=1e-3, noise="rademacher")
    before = [p.detach().clone() for p in model.parameters()]
    opt.step(forward_closure(model, batch))
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert all(p.dtype == torch.float32 for p in model.parameters())
