"""Canonical decoding on the stub: 2-row decode steps, replies kept on resume, 2-token tails."""

from __future__ import annotations

from kvllama.decoding.scheduler import SeqProgress, plan


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


def test_speculation_needs_verify_passes_computed_as_decode_steps(stub_engine):
    import pytest

    from kvllama.errors import InvalidOptionError
    # A stock build without canonical decoding: a verify pass is not a decode step's class.
    with pytest.raises(InvalidOptionError, match=r"speculative_draft.*patched llama\.cpp"):
        stub_engine(load={"speculative_draft": 4})


def test_speculation_on_the_patched_build_verifies_in_decode_passes(stub_engine):
    # Per-pass kernels: speculation runs on the default engine (no canonical decoding); its
    # verify passes are decode passes (the conftest check: every row of one wants logits).
    engine, _backend = stub_engine(n_ctx_seq=512, per_pass_kernels=True)
    spec, spec_backend = stub_engine(n_ctx_seq=512, per_pass_kernels=True, load={"speculative_draft": 4})
    prompt = "abcabcabcabcabcabcabc"
    plain = engine.complete("s", prompt, max_tokens=24, temperature=0)
    fast = spec.complete("s", prompt, max_tokens=24, temperature=0)
    assert fast.generated_tokens == plain.generated_tokens
    assert fast.stats.drafted_tokens > 0
    # Verify passes: several rows of one sequence, every one sampled (a prompt chunk or a
    # settle pass samples at most its last row).
    verify = [only for only, rows in zip(spec_backend.decode_only_log, spec_backend.decode_log, strict=True)
              if len(rows) > 1 and len({r[2] for r in rows}) == 1 and all(r[3] for r in rows)]
    assert verify and all(verify)


def test_draft_tokens_and_verify_primitives(stub_engine):
    engine, _ = stub_engine(n_ctx_seq=512)
    assert engine.draft_tokens("s", [5, 6, 7, 8, 5, 6, 7], 3) == [8, 5, 6]
    assert engine.draft_tokens("s", [1, 2, 3], 4) == []
    prompt = engine.tokenize("s", "verify me please")
    greedy = engine.complete("s", prompt, max_tokens=4, temperature=0).generated_tokens
    assert engine.verify("s", prompt, list(greedy[:3])) == (3, greedy[3])
    wrong = [greedy[0], (greedy[1] + 1) % 200 + 32, greedy[2]]
    assert engine.verify("s", prompt, wrong) == (1, greedy[1])


def test_verify_on_the_patched_build_is_one_decode_pass_on_the_kept_prefix(stub_engine):
    engine, backend = stub_engine(n_ctx_seq=512, per_pass_kernels=True)
    prompt = engine.tokenize("s", "verify me in one pass, please")
    greedy = engine.complete("s", prompt, max_tokens=9, temperature=0).generated_tokens
    draft = list(greedy[:8])
    # The first call computes the prefix once (a one-token completion leaves it in its slot)...
    assert engine.verify("s", prompt, draft) == (8, greedy[8])
    # ...later calls take one decode pass over the draft, nothing else.
    passes = len(backend.decode_log)
    assert engine.verify("s", prompt, draft) == (8, greedy[8])
    assert len(backend.decode_log) == passes + 1 and backend.decode_only_log[-1]
    assert [r[0] for r in backend.decode_log[-1]] == draft
    wrong = [greedy[0], (greedy[1] + 1) % 200 + 32, *greedy[2:5]]
    assert engine.verify("s", prompt, wrong) == (1, greedy[1])
    # A first token that differs needs no pass at all.
    passes = len(backend.decode_log)
    other = (greedy[0] + 1) % 200 + 32
    assert engine.verify("s", prompt, [other]) == (0, greedy[0])
    assert len(backend.decode_log) == passes
    # The slot still holds exactly the prefix: a completion of it reuses it.
    again = engine.complete("s", prompt, max_tokens=9, temperature=0)
    assert again.generated_tokens == greedy and again.cache_delta.read == len(prompt) - 8
