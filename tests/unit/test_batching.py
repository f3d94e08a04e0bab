"""The built-in server's decoding step by step, in-process: how the next token is drawn (temperature, top_p) and
how much of a streamed answer is held back while a stop sequence may still be forming."""

from __future__ import annotations

import pytest
import torch

from tasks import inference
from tasks.servers.batching import GenRequest, _Row, pick
from tests.support.paths import TINY_MODEL


def draws(logits: list[float], n: int, **sampling) -> list[int]:
    generator = torch.Generator().manual_seed(7)
    req = GenRequest([1], 1, seed=7, **sampling)
    return [pick(torch.tensor(logits), req, generator) for _ in range(n)]


def test_a_low_temperature_sharpens_the_draw_and_a_high_one_flattens_it():
    # softmax([0, 2] / 0.25) gives the second token 0.9997; multiplied by 0.25 instead, 0.62.
    assert draws([0.0, 2.0], 200, temperature=0.25).count(1) >= 195
    # softmax([0, 4] / 2) gives it 0.88; multiplied by 2 instead, 0.9997.
    assert 300 <= draws([0.0, 4.0], 400, temperature=2.0).count(1) <= 385


def test_top_p_keeps_the_smallest_set_that_reaches_it():
    # Two tokens of 0.5 each: top_p 0.5 is reached by the first alone, so one token only is ever drawn.
    assert len(set(draws([0.0, 0.0], 100, temperature=1.0, top_p=0.5))) == 1
    assert set(draws([0.0, 0.0], 100, temperature=1.0, top_p=0.51)) == {0, 1}
    assert set(draws([0.0, 0.0], 100, temperature=1.0)) == {0, 1}


def test_greedy_is_the_argmax():
    assert draws([0.0, 3.0, 1.0], 5) == [1] * 5


@pytest.fixture(scope="module")
def tokenizer():
    return inference.load_tokenizer(str(TINY_MODEL))


@pytest.mark.parametrize("stop, held", [([], 0), (["X"], 0), (["XYZ"], 2), (["XY", "WXYZ"], 3)])
def test_a_stream_holds_back_only_what_a_stop_sequence_could_still_become(tokenizer, stop, held):
    """After each token the text streamed so far is the answer less the last ``len(longest stop) - 1``
    characters, which a stop sequence could still begin with; at the end, all of it."""
    ids = tokenizer("the cat sat on the mat", add_special_tokens=False).input_ids
    req = GenRequest([1], 100, stop=stop)
    streamed: list[str] = []
    req.on_event = lambda kind, value: streamed.append(value) if kind == "text" else None
    row = _Row(req, tokenizer)
    for token in ids:
        row.add(token, eos=None)
        assert "".join(streamed) == req.text[:max(0, len(req.text) - held)], (req.text, streamed)
    row.finish("length")
    assert "".join(streamed) == req.text == "the cat sat on the mat"


def fed(tokenizer, ids: list[int], stop: list[str]) -> tuple[GenRequest, list[str]]:
    """A request's row fed ``ids`` one by one until it finishes: the request and the pieces it streamed."""
    req, streamed = GenRequest([1], 100, stop=stop), []
    req.on_event = lambda kind, value: streamed.append(value) if kind == "text" else None
    row = _Row(req, tokenizer)
    for token in ids:
        if row.add(token, eos=tokenizer.eos_token_id):
            break
    return req, streamed


def test_a_stop_sequence_ends_the_answer_where_it_first_begins(tokenizer):
    ids = tokenizer("the cat sat on the mat", add_special_tokens=False).input_ids
    req, streamed = fed(tokenizer, ids, ["on", "mat"])
    assert (req.text, req.finish_reason, "".join(streamed)) == ("the cat sat ", "stop", "the cat sat ")
    assert all(streamed)  # no empty piece
    # At the very start: nothing is answered.
    req, streamed = fed(tokenizer, ids, ["th"])
    assert (req.text, req.finish_reason, streamed) == ("", "stop", [])


def test_a_token_holding_the_stop_twice_is_cut_at_the_first(tokenizer):
    # A token of the vocabulary in which one character comes twice, that character the stop sequence.
    text, first = next((t, t.index(c)) for t in (tokenizer.decode([i]) for i in range(len(tokenizer)))
                       if t.isalpha() and len(t) >= 3 for c in t if t.count(c) == 2)
    req, _ = fed(tokenizer, tokenizer(text, add_special_tokens=False).input_ids, [text[first]])
    assert req.text == text[:first] and req.finish_reason == "stop", text


def test_special_tokens_are_not_part_of_the_answer(tokenizer):
    ids = tokenizer("the cat", add_special_tokens=False).input_ids
    req, streamed = fed(tokenizer, [ids[0], tokenizer.pad_token_id, *ids[1:]], [])
    assert req.text == "the cat" and "".join(streamed) == "the cat" and "<pad>" not in req.text
    # The end-of-sequence token ends it, with the reason.
    req, _ = fed(tokenizer, [*ids, tokenizer.eos_token_id, ids[0]], [])
    assert (req.text, req.finish_reason) == ("the cat", "stop")


@pytest.fixture(scope="module")
def tiny():
    return inference.load_model(str(TINY_MODEL))


def greedy(tiny, prompts: list[str], tokens: int = 6) -> list[GenRequest]:
    from tasks.servers.batching import generate_batch

    model, tok = tiny
    reqs = [GenRequest(tok(tok.bos_token + p, add_special_tokens=False).input_ids, tokens, ignore_eos=True)
            for p in prompts]
    generate_batch(model, tok, reqs)
    return reqs


def test_rows_of_different_lengths_decode_together_as_each_alone(tiny):
    """The shorter prompt is padded on the left: the mask keeps the padding out of its attention at every step."""
    prompts = ["the cat sat on the mat and the dog ran to the old barn by the sea", "saw saw", "red"]
    together = [r.text for r in greedy(tiny, prompts)]
    assert together == [greedy(tiny, [p])[0].text for p in prompts]


def test_a_cancelled_row_stops_with_its_reason_and_a_failing_one_alone(tiny):
    from tasks.servers.batching import generate_batch

    model, tok = tiny
    ids = tok(tok.bos_token + "the cat", add_special_tokens=False).input_ids
    cancelled, broken, kept = (GenRequest(list(ids), 6, ignore_eos=True) for _ in range(3))

    def cancel_after_first(kind, value):
        cancelled.cancelled = True

    def fail(kind, value):
        raise RuntimeError("the client's callback broke")

    cancelled.on_event, broken.on_event = cancel_after_first, fail
    generate_batch(model, tok, [cancelled, broken, kept])
    assert (cancelled.finish_reason, cancelled.completion_tokens) == ("cancelled", 1)
    assert isinstance(broken.error, RuntimeError) and broken.completion_tokens == 1
    assert kept.error is None and kept.completion_tokens == 6 and kept.finish_reason == "length"


@pytest.fixture(scope="module")
def absolute_positions(tiny):
    """A small GPT-2 (learned absolute position embeddings, random weights) on the tiny model's tokenizer: unlike
    the tiny Llama's rotary positions, which shifting a whole row leaves unchanged, its answers depend on each
    token's own position."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tiny[1]
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return GPT2LMHeadModel(config).eval(), tok


def test_a_left_padded_row_keeps_its_own_positions(absolute_positions):
    """A padded row's first token is at position 0, as alone and as the model numbers an unpadded prompt itself:
    the positions come from the row's mask, not the batch's width."""
    from tests.support.models import greedy_by_hand

    prompts = ["the cat sat on the mat and the dog ran to the old barn by the sea", "saw saw", "red"]
    together = [r.text for r in greedy(absolute_positions, prompts)]
    alone = [greedy(absolute_positions, [p])[0].text for p in prompts]
    assert together == alone == [greedy_by_hand(*absolute_positions, p, 6) for p in prompts], (together, alone)
    assert len(set(alone)) == 3
