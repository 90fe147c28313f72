"""Generation on the real model: determinism, sampling, grammar, stops, cancel, UTF-8."""

from __future__ import annotations

import json

import pytest

from kvllama.errors import GrammarError
from kvllama.events import DoneEvent, TextEvent, TokenEvent

MODEL = "gemma"  # loaded once per session by tests/model/conftest.py

PROMPT = "The history of the printing press begins"


def test_greedy_is_deterministic_and_equals_argmax(engine):
    a = engine.complete(MODEL, PROMPT, max_tokens=24, temperature=0)
    b = engine.complete(MODEL, PROMPT, max_tokens=24, temperature=0)
    assert a.generated_tokens == b.generated_tokens
    assert len(a.generated_tokens) == 24 and a.finish_reason == "length"
    # top_k=1 keeps only the argmax token, whatever the temperature and seed.
    argmax = engine.complete(MODEL, PROMPT, max_tokens=24, temperature=1.5, top_k=1, seed=7)
    assert argmax.generated_tokens == a.generated_tokens
    assert a.context_tokens == tuple(engine.tokenize(MODEL, PROMPT)) + a.generated_tokens
    assert a.reply == engine.detokenize(MODEL, list(a.generated_tokens))


def test_same_seed_same_tokens_different_seed_different_tokens(engine):
    params = {"max_tokens": 32, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}
    a = engine.complete(MODEL, PROMPT, seed=1234, **params)
    b = engine.complete(MODEL, PROMPT, seed=1234, **params)
    c = engine.complete(MODEL, PROMPT, seed=4321, **params)
    assert a.generated_tokens == b.generated_tokens and a.seed == 1234
    assert a.generated_tokens != c.generated_tokens


def test_penalties_change_the_output(engine):
    base = engine.complete(MODEL, "one one one one one", max_tokens=16, temperature=0)
    penalised = engine.complete(
        MODEL, "one one one one one", max_tokens=16, temperature=0,
        repetition_penalty=1.5, presence_penalty=1.0,
    )
    assert base.generated_tokens != penalised.generated_tokens


JSON_GRAMMAR = r'''
root   ::= "{" ws pair ws "," ws pair ws "}"
pair   ::= string ws ":" ws value
value  ::= string | number | "true" | "false"
string ::= "\"" [a-zA-Z0-9 ]{1,16} "\""
number ::= [0-9]{1,6}
ws     ::= [ ]?
'''


def test_grammar_constrained_output_parses_as_a_json_object(engine):
    r = engine.complete(MODEL, "A cat described as JSON:", max_tokens=80, temperature=0.7,
                        seed=3, grammar=JSON_GRAMMAR)
    assert r.finish_reason == "stop"  # the grammar ends, so the model must stop
    assert isinstance(json.loads(r.reply), dict)


def test_bad_grammar_is_a_typed_error_and_the_model_keeps_serving(engine):
    with pytest.raises(GrammarError):
        engine.complete(MODEL, "x", max_tokens=4, grammar='root ::= "unterminated')
    assert len(engine.complete(MODEL, "x", max_tokens=4, temperature=0).generated_tokens) == 4


def test_multibyte_characters_split_over_byte_tokens_stream_intact(engine):
    text = "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ☃"
    grammar = 'root ::= "' + text + '"'
    events = list(engine.infer(MODEL, "Fancy text:", max_tokens=64, temperature=0,
                               grammar=grammar))
    chunks = [e.text for e in events if isinstance(e, TextEvent)]
    tokens = [e.token for e in events if isinstance(e, TokenEvent)]
    assert "".join(chunks).strip() == text
    assert all("\ufffd" not in c for c in chunks)
    # The characters really were split: more tokens than visible text chunks.
    assert len(tokens) > len(chunks)


def test_stop_sequence_spanning_tokens_is_trimmed_from_stream_and_reply(engine):
    free = engine.complete(MODEL, PROMPT, max_tokens=40, temperature=0)
    pieces = [engine.detokenize(MODEL, [t]) for t in free.generated_tokens]
    # Choose a stop that starts inside one token and ends inside a later one.
    start = len(pieces[0]) + len(pieces[1]) + 1
    stop = free.reply[start : start + len(pieces[2]) + 2]
    assert len(stop) >= 3
    expected = free.reply[: free.reply.index(stop)]
    events = list(engine.infer(MODEL, PROMPT, max_tokens=40, temperature=0, stop=[stop]))
    streamed = "".join(e.text for e in events if isinstance(e, TextEvent))
    done = events[-1]
    assert isinstance(done, DoneEvent)
    assert (done.finish_reason, done.stop_sequence) == ("stop", stop)
    assert streamed == expected and stop not in streamed
    result = engine.complete(MODEL, PROMPT, max_tokens=40, temperature=0, stop=[stop])
    assert result.reply == expected and result.stop_sequence == stop


def test_cancel_mid_stream_keeps_partial_output(engine):
    stream = engine.infer(MODEL, PROMPT, max_tokens=500, temperature=0)
    seen = 0
    events = []
    for event in stream:
        events.append(event)
        if isinstance(event, TokenEvent):
            seen += 1
            if seen == 5:
                engine.cancel(stream)
                engine.cancel(stream.id)  # idempotent
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.finish_reason == "cancelled"
    assert 5 <= done.stats.generated_tokens < 500


def test_token_prompt_equals_text_prompt(engine):
    tokens = engine.tokenize(MODEL, PROMPT)
    a = engine.complete(MODEL, PROMPT, max_tokens=8, temperature=0)
    b = engine.complete(MODEL, tokens, max_tokens=8, temperature=0)
    assert a.generated_tokens == b.generated_tokens
    assert b.stats.prompt_tokens == len(tokens)


def test_stats_are_consistent(engine):
    r = engine.complete(MODEL, PROMPT, max_tokens=12, temperature=0)
    s = r.stats
    assert s.prompt_tokens == len(engine.tokenize(MODEL, PROMPT))
    assert s.generated_tokens == 12
    assert s.time_to_first_token > 0 and s.prefill_seconds > 0 and s.decode_seconds > 0
    assert s.tokens_per_second > 1
    assert r.committed_tokens == s.prompt_tokens + 11  # the last token is sampled, not decoded
    assert r.cache_hit_kind == "cold" and r.cache_delta.read == 0


def test_async_infer_streams_the_same_tokens(engine):
    import asyncio

    sync = engine.complete(MODEL, PROMPT, max_tokens=10, temperature=0)

    async def run():
        return await engine.acomplete(MODEL, PROMPT, max_tokens=10, temperature=0)

    assert asyncio.run(run()).generated_tokens == sync.generated_tokens


def test_alone_equals_beside_others_greedy_and_seeded(engine):
    greedy = {"max_tokens": 24, "temperature": 0}
    seeded = {"max_tokens": 24, "temperature": 0.9, "seed": 77}
    alone_g = engine.complete(MODEL, PROMPT, **greedy)
    alone_s = engine.complete(MODEL, PROMPT, **seeded)
    others = [engine.infer(MODEL, f"Story number {i}: once", max_tokens=30, temperature=0.8)
              for i in range(3)]
    g = engine.infer(MODEL, PROMPT, **greedy)
    s = engine.infer(MODEL, PROMPT, **seeded)
    assert g.result().generated_tokens == alone_g.generated_tokens
    assert s.result().generated_tokens == alone_s.generated_tokens
    for o in others:
        assert len(o.result().generated_tokens) <= 30


@pytest.mark.slow
def test_alone_equals_beside_others_for_every_stream_count(engine):
    # Every stream count from 1 to n_seq_max: passes of 1..7 rows, and (at 8) the decode-row
    # cap that keeps a K-quant model's rows in one CPU kernel class (docs/measured/exactness.md).
    n_seq_max = engine.model_info(MODEL).context["n_seq_max"]
    prompts = [f"Entry {i}: the {('river', 'harbor', 'orchard')[i % 3]} was" for i in range(n_seq_max)]
    params = [{"max_tokens": 12, "temperature": 0} if i % 2 == 0 else
              {"max_tokens": 12, "temperature": 0.9, "seed": 100 + i} for i in range(n_seq_max)]
    alone = [engine.complete(MODEL, p, **kw).generated_tokens for p, kw in zip(prompts, params, strict=True)]
    for k in range(2, n_seq_max + 1):
        streams = [engine.infer(MODEL, prompts[i], **params[i]) for i in range(k)]
        assert [s.result().generated_tokens for s in streams] == alone[:k], f"{k} streams"
