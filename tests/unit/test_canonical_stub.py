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
