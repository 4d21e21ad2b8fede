"""Kind scoring on tiny models: batched scoring equals a naive one-candidate-per-forward reference,
decoding with the KV cache equals decoding without it, the LM head sees only scored positions."""

import pytest
import torch

from zotune.models import load_model
from zotune.tasks import ClassificationTask, Example, Task, encode, evaluate, loss_fn
from zotune.tasks.batches import scores
from zotune.tasks.encoding import continuation_ids, drop_leading, pad_id, prompt_ids, special_prefix
from zotune.tasks.generation import greedy_decode
from zotune.tasks.icl import draw_demonstrations, fit, prefix_text
from zotune.tasks.scoring import Prefix

PROMPTS = ["the movie was long . It was", "a", "an utterly dull , lifeless and tired remake of a classic . It was",
           "fine acting\nIs it good? Yes or No?\n"]


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-opt"])
def tiny(request):
    return load_model(request.param, device="cpu")


class MultiToken(ClassificationTask):
    name = "multi-token-test"
    verbalizers = (" terrible", " quite great", " zqxj maybe")


class Choice(Task):
    name, kind = "choice-test", "multiple_choice"


class Gen(Task):
    name, kind, metric = "gen-test", "generation", "f1"
    max_new_tokens = 6


def naive_logprob(model, tok, prompt, cont):
    """Summed log-likelihood of ``cont`` after ``prompt``: one unpadded forward, full logits."""
    p, c = prompt_ids(tok, prompt), continuation_ids(tok, prompt, cont)
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return sum(float(logp[len(p) - 1 + i, t]) for i, t in enumerate(c)), len(c)


def test_multi_token_verbalizers_equal_naive_reference(tiny):
    model, tok = tiny
    task = MultiToken()
    assert any(len(tok(v, add_special_tokens=False)["input_ids"]) > 1 for v in task.verbalizers)
    examples = [task.example(p, i % 3) for i, p in enumerate(PROMPTS)]
    batch = encode(task, tok, examples)
    assert batch["kind"] == "choice"  # not the one-token fast path
    with torch.no_grad():
        got = scores(model, batch)
    want = torch.tensor([[naive_logprob(model, tok, ex.prompt, v)[0] for v in task.verbalizers] for ex in examples])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    with torch.no_grad():
        loss = loss_fn(model, batch)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(want, batch["labels"]), atol=1e-5, rtol=0)


def test_multiple_choice_equals_naive_reference_and_normalises(tiny):
    model, tok = tiny
    examples = [Example("The man turned on the faucet so", (" the toilet filled with water.", " water flowed."), 1),
                Example("It rained because", (" clouds", " the sky was grey and full", " of a dance"), 0)]
    with torch.no_grad():
        got = scores(model, encode(Choice(), tok, examples))
        norm = Choice()
        norm.normalize = True
        got_norm = scores(model, encode(norm, tok, examples))
    for i, ex in enumerate(examples):
        for j, cand in enumerate(ex.candidates):
            lp, n = naive_logprob(model, tok, ex.prompt, cand)
            assert got[i, j].item() == pytest.approx(lp, abs=1e-5)
            assert got_norm[i, j].item() == pytest.approx(lp / n, abs=1e-5)
    assert got[0, 2] == float("-inf")  # fewer candidates than the widest example: padding never wins


def test_single_token_fast_path_equals_general_path(tiny):
    model, tok = tiny

    class Sentiment(ClassificationTask):
        name, verbalizers = "fast-test", (" terrible", " great")

    examples = [Sentiment().example(p, i % 2) for i, p in enumerate(PROMPTS)]
    fast = encode(Sentiment(), tok, examples)
    assert fast["kind"] == "classification"
    general = encode(Choice(), tok, examples)
    with torch.no_grad():
        a, b = scores(model, fast), scores(model, general)
        torch.testing.assert_close(torch.log_softmax(a, -1), torch.log_softmax(b, -1), atol=1e-5, rtol=0)
        torch.testing.assert_close(loss_fn(model, fast), loss_fn(model, general), atol=1e-5, rtol=0)


def test_lm_head_sees_only_scored_positions(tiny):
    model, tok = tiny
    seen = []
    head = model.get_output_embeddings()
    handle = head.register_forward_hook(lambda mod, args, out: seen.append(tuple(args[0].shape)))
    try:
        examples = [Example(p, (" a b c", " d"), 0) for p in PROMPTS]
        batch = encode(Choice(), tok, examples)
        with torch.no_grad():
            scores(model, batch)
            gen = encode(Gen(), tok, [Example(p, answers=("x",)) for p in PROMPTS])
            loss_fn(model, gen)
    finally:
        handle.remove()
    width = batch["input_ids"].shape[1]
    assert seen[0][1] == int(batch["cont_lens"].max()) + 1 < width
    assert seen[1][1] == int(gen["cont_lens"].max()) + 1 < gen["input_ids"].shape[1]


def test_scores_go_through_module_calls(tiny):
    """The ZO engine perturbs weights in forward hooks: scoring must run them."""
    model, tok = tiny
    batch = encode(Choice(), tok, [Example(p, (" yes", " no way"), 0) for p in PROMPTS])
    head = model.get_output_embeddings()
    with torch.no_grad():
        before = scores(model, batch)
        handle = head.register_forward_pre_hook(lambda mod, args: (args[0] * 0,))  # all logits 0: uniform
        try:
            flat = scores(model, batch)
        finally:
            handle.remove()
    assert not torch.allclose(before, flat)
    n_tokens = torch.tensor([[len(continuation_ids(tok, p, c)) for c in (" yes", " no way")] for p in PROMPTS])
    torch.testing.assert_close(flat, -n_tokens * torch.log(torch.tensor(float(model.config.vocab_size))))


def test_generation_loss_is_teacher_forced_on_answer_tokens_only(tiny):
    model, tok = tiny
    task = Gen()
    examples = [Example(p, answers=(a,)) for p, a in zip(PROMPTS, ["great", "b c", "terrible film", "Yes"])]
    with torch.no_grad():
        got = loss_fn(model, encode(task, tok, examples))
    total, count = 0.0, 0
    for ex in examples:
        lp, n = naive_logprob(model, tok, ex.prompt, task.target(ex))
        total, count = total - lp, count + n
    assert got.item() == pytest.approx(total / count, abs=1e-5)


def test_greedy_decoding_with_cache_equals_without(tiny):
    model, tok = tiny
    batch = encode(Gen(), tok, [Example(p, answers=("x",)) for p in PROMPTS])
    args = (model, tok, batch["prompt_ids"], batch["prompt_mask"], 12)
    cached_text, cached_ids = greedy_decode(*args, stop=("\n",), use_cache=True)
    plain_text, plain_ids = greedy_decode(*args, stop=("\n",), use_cache=False)
    assert cached_ids == plain_ids and cached_text == plain_text
    assert all(0 < len(ids) <= 12 for ids in cached_ids)
    # each row alone (no padding) decodes the same tokens as in the padded batch
    for i, p in enumerate(PROMPTS):
        ids = torch.tensor([prompt_ids(tok, p)])
        _, alone = greedy_decode(model, tok, ids, torch.ones_like(ids), 12, stop=("\n",))
        assert alone[0] == cached_ids[i]


def test_stop_strings_cut_the_answer(tiny):
    model, tok = tiny
    batch = encode(Gen(), tok, [Example(PROMPTS[0], answers=("x",))])
    _, ids = greedy_decode(model, tok, batch["prompt_ids"], batch["prompt_mask"], 8, stop=())
    full = tok.decode(ids[0], skip_special_tokens=True)
    chars = [ch for ch in full[1:] if ch.strip()]
    assert chars, f"greedy text {full!r} too short to test stop strings"
    stop = chars[len(chars) // 2]  # a character the greedy text contains after its first
    text, short = greedy_decode(model, tok, batch["prompt_ids"], batch["prompt_mask"], 8, stop=(stop,))
    assert text[0] == full[:full.index(stop)].strip() and len(short[0]) <= len(ids[0])


def test_objectives_are_negative_batch_metrics(tiny):
    model, tok = tiny
    examples = [MultiToken().example(p, i % 3) for i, p in enumerate(PROMPTS)]
    with torch.no_grad():
        acc_batch = encode(MultiToken(), tok, examples, objective="accuracy")
        pred = scores(model, acc_batch).argmax(-1)
        want = (pred == acc_batch["labels"]).float().mean()
        assert loss_fn(model, acc_batch).item() == pytest.approx(-want.item())
        gen_examples = [Example(p, answers=("a",)) for p in PROMPTS]
        f1 = loss_fn(model, encode(Gen(), tok, gen_examples, objective="f1")).item()
        ev = evaluate(model, tok, Gen(), gen_examples, batch_size=2)
    assert f1 == pytest.approx(-ev["f1"]) and ev["metric"] == "f1" and ev["score"] == ev["f1"]
    with pytest.raises(ValueError, match="objective 'f1' scores generated answers"):
        encode(MultiToken(), tok, examples, objective="f1")


def test_long_prompts_lose_their_left_and_keep_the_answer(tiny):
    _, tok = tiny
    batch = encode(Choice(), tok, [Example("word " * 400 + "end so", (" it rained", " no"), 0)], max_length=32)
    assert batch["input_ids"].shape[1] == 32
    assert tok.decode(batch["input_ids"][0]).endswith("end so it rained")


def test_icl_fits_demonstrations_into_the_context(tiny):
    _, tok = tiny
    task = MultiToken()
    train = [task.example(p, i % 3) for i, p in enumerate(PROMPTS * 10)]
    demos = draw_demonstrations(task, train, 32)
    assert len(demos) == 32 and demos == draw_demonstrations(task, train, 32)  # fixed seed
    assert all(d.endswith(task.verbalizers) for d in demos)
    test = [task.example(PROMPTS[2], 0), task.example(PROMPTS[1], 1)]

    def length(ex, m):  # prefix + prompt without its BOS + the longest verbalizer
        pre = len(tok(prefix_text(demos, m), add_special_tokens=True)["input_ids"]) if m else len(special_prefix(tok))
        longest = max(len(continuation_ids(tok, ex.prompt, c)) for c in ex.candidates)
        return pre + len(prompt_ids(tok, ex.prompt)) - len(special_prefix(tok)) + longest

    for limit in (64, 256):
        used = fit(task, tok, test, demos, limit)
        assert 0 < max(used) < 32
        for ex, m in zip(test, used):
            assert length(ex, m) <= limit < length(ex, m + 1)  # as many as fit, not one more
    assert sum(fit(task, tok, test, demos, 64)) < sum(fit(task, tok, test, demos, 256))


def test_icl_prefix_cache_equals_reading_prefix_and_prompt_at_once(tiny):
    model, tok = tiny
    n_special = len(special_prefix(tok))
    task = MultiToken()
    demos = draw_demonstrations(task, [task.example(p, i % 3) for i, p in enumerate(PROMPTS)], 3)
    pre = tok(prefix_text(demos, 3), add_special_tokens=True)["input_ids"]
    examples = [task.example(p, i % 3) for i, p in enumerate(PROMPTS)]
    got = evaluate(model, tok, task, examples, batch_size=3, prefix_ids=pre)
    ce, correct = 0.0, 0
    for ex in examples:
        row = []
        for v in task.verbalizers:
            ids = torch.tensor([pre + prompt_ids(tok, ex.prompt)[n_special:] + continuation_ids(tok, ex.prompt, v)])
            n = len(continuation_ids(tok, ex.prompt, v))
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            row.append(sum(float(logp[ids.shape[1] - n - 1 + i, ids[0, ids.shape[1] - n + i]]) for i in range(n)))
        row = torch.tensor(row)
        ce += float(torch.nn.functional.cross_entropy(row[None], torch.tensor([ex.label])))
        correct += int(row.argmax()) == ex.label
    assert got["loss"] == pytest.approx(ce / len(examples), abs=1e-5)
    assert got["accuracy"] == correct / len(examples)
    # decoding after the cached prefix = decoding the whole sequence without any cache
    gen = encode(Gen(), tok, [Example(p, answers=("x",)) for p in PROMPTS])
    ids, mask = drop_leading(gen["prompt_ids"], gen["prompt_mask"], n_special, pad_id(tok))
    assert ids.shape[1] == gen["prompt_ids"].shape[1] - n_special
    with torch.no_grad():
        _, cached = greedy_decode(model, tok, ids, mask, 6, stop=(), prefix=Prefix.build(model, pre))
    for i, p in enumerate(PROMPTS):
        ids = torch.tensor([pre + prompt_ids(tok, p)[n_special:]])
        _, plain = greedy_decode(model, tok, ids, torch.ones_like(ids), 6, stop=(), use_cache=False)
        assert plain[0] == cached[i]
