"""Canonical decoding on the stub: 2-row decode steps, replies kept on resume, 2-token tails."""

from __future__ import annotations

from kvllama.engine.scheduler import SeqProgress, plan


def test_a_canonical_decode_step_recomputes_the_token_before():
    seqs = [SeqProgress(0, 0, 10, 12, True), SeqProgress(1, 1, 40, 8, False)]
    tick = plan(seqs, n_batch=64, chunk_size=64, align=64, min_rows=2, decode_rows=2)
    decode = [s for s in tick.slices if s.decoding]
    assert [(s.start, s.count, s.sample) for s in decode] == [(11, 2, True)]
    prompt = [s for s in tick.slices if not s.decoding]
    assert prompt[0].count == 32 and tick.n_rows == 34  # the 2-row rule leaves a 2-row tail possible


def test_generation_and_a_resumed_session_keep_the_reply(stub_engine):
    engine, backend = stub_engine(n_ctx_seq=512, canonical_decode=True)
    stock, _ = stub_engine(n_ctx_seq=512)
    first = engine.complete("s", "hello " * 20, max_tokens=6, temperature=0, session_id="c")
    assert first.generated_tokens == stock.complete("s", "hello " * 20, max_tokens=6,
                                                    temperature=0).generated_tokens
    decode_rows = [rows for rows in backend.decode_log if len(rows) == 2]
    assert len(decode_rows) == 5 and all(rows[0][1] + 1 == rows[1][1] for rows in decode_rows)
    follow = [*first.context_tokens, *engine.tokenize("s", " more", add_special=False)]
    second = engine.complete("s", follow, max_tokens=4, temperature=0, session_id="c")
    assert second.cache_delta.read == len(first.context_tokens) - 1  # the reply too, not re-prefilled
    cold = stock.complete("s", follow, max_tokens=4, temperature=0)
    assert second.generated_tokens == cold.generated_tokens


def test_speculative_drafts_never_change_the_tokens(stub_engine):
    spec, backend = stub_engine(n_ctx_seq=512, canonical_decode=True,
                                load={"canonical_decode": True, "speculative_draft": 4})
    plain, _ = stub_engine(n_ctx_seq=512, canonical_decode=True, load={"canonical_decode": True})
    prompt = "abcabcabcabc" * 6  # the stub's output may repeat the context: drafts get proposed
    a = spec.complete("s", prompt, max_tokens=40, temperature=0)
    b = plain.complete("s", prompt, max_tokens=40, temperature=0)
    assert a.generated_tokens == b.generated_tokens
    assert a.stats.drafted_tokens > 0 and a.stats.accepted_tokens <= a.stats.drafted_tokens
    assert b.stats.drafted_tokens == 0
    assert any(len(rows) > 2 for rows in backend.decode_log if rows[0][1] != 0)
    seeded = spec.complete("s", prompt, max_tokens=10, temperature=0.9, seed=3)
    assert seeded.stats.drafted_tokens == 0  # only plain greedy requests speculate


def test_speculation_needs_canonical_decoding(stub_engine):
    import pytest

    from kvllama.errors import InvalidOptionError
    with pytest.raises(InvalidOptionError, match="canonical_decode"):
        stub_engine(load={"speculative_draft": 4})


def test_draft_tokens_and_verify_primitives(stub_engine):
    engine, _ = stub_engine(n_ctx_seq=512)
    assert engine.draft_tokens("s", [5, 6, 7, 8, 5, 6, 7], 3) == [8, 5, 6]
    assert engine.draft_tokens("s", [1, 2, 3], 4) == []
    prompt = engine.tokenize("s", "verify me please")
    greedy = engine.complete("s", prompt, max_tokens=4, temperature=0).generated_tokens
    assert engine.verify("s", prompt, list(greedy[:3])) == (3, greedy[3])
    wrong = [greedy[0], (greedy[1] + 1) % 200 + 32, greedy[2]]
    assert engine.verify("s", prompt, wrong) == (1, greedy[1])
