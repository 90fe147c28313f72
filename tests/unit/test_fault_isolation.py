"""One request never hurts another: faults inside the decode loop, slot reuse, tenants (stub backend)."""

from __future__ import annotations

import threading

import pytest

from kvllama.errors import (
    ContextLostError,
    GrammarError,
    InternalEngineError,
    InvalidOptionError,
    InvalidRequestError,
)
from kvllama.events import TokenEvent


def test_a_bug_in_sampling_ends_that_request_only_and_the_loop_keeps_serving(stub_engine):
    engine, _ = stub_engine(n_ctx_seq=512, crash_sample_after=40)
    long_prompt = "x" * 45  # sampled at position >= 40: the stub's sampling raises
    with pytest.raises(InternalEngineError, match="ZeroDivisionError: stub sampling bug"):
        engine.complete("s", long_prompt, max_tokens=4, temperature=0)
    ok = engine.complete("s", "short", max_tokens=4, temperature=0)
    assert ok.finish_reason == "length" and len(ok.generated_tokens) == 4
    info = engine.model_info("s")
    assert info.healthy and info.in_flight == 0


def test_a_fatal_llama_error_rebuilds_the_context_and_fails_only_requests_in_flight(stub_engine):
    engine, backend = stub_engine(n_ctx_seq=512, fatal_token=ord("!"), decode_delay=0.001)
    reference = engine.complete("s", "hello", max_tokens=6, temperature=0).generated_tokens
    with pytest.raises(ContextLostError):
        engine.complete("s", "boom!", max_tokens=3, temperature=0)
    assert backend.rebuilds == 1
    assert engine.model_info("s").healthy
    again = engine.complete("s", "hello", max_tokens=6, temperature=0)
    assert again.generated_tokens == reference


def test_a_released_session_never_hands_a_held_id_to_a_new_request(stub_engine):
    # n_seq_max 4, parked sessions may hold 2 slots. Sessions a and b park on ids 0 and 1,
    # a long request L runs on id 2. Two new requests arrive together: one slot is free,
    # so the oldest session (a) is released, and the first newcomer used to be admitted
    # at len(running) + len(parked) == 2, which is L's sequence.
    engine, _ = stub_engine(n_ctx_seq=512, n_seq_max=4, decode_delay=0.001)
    loop = engine.models.get("s").loop
    engine.complete("s", "session a turn one", max_tokens=4, temperature=0, session_id="a")
    b1 = engine.complete("s", "session b turn one", max_tokens=4, temperature=0, session_id="b")
    long_one = engine.infer("s", "the long one", max_tokens=60, temperature=0)
    while long_one.request.timing.first_token_at is None:  # L holds its sequence and is decoding
        threading.Event().wait(0.001)
    gate = threading.Event()
    loop.call(gate.wait)  # hold the loop so that both newcomers arrive in one drain
    newcomers = [engine.infer("s", f"newcomer {i}", max_tokens=6, temperature=0) for i in range(2)]
    gate.set()
    for stream in newcomers:
        assert stream.result().finish_reason == "length"
    beside = long_one.result()
    assert beside.finish_reason == "length"
    alone = engine.complete("s", "the long one", max_tokens=60, temperature=0)
    assert beside.generated_tokens == alone.generated_tokens
    b_prompt = [*b1.context_tokens, *b" and b goes on"]
    b2 = engine.complete("s", b_prompt, max_tokens=5, temperature=0, session_id="b")
    assert b2.cache_hit_kind == "sticky"  # b's sequence survived intact
    assert b2.generated_tokens == engine.complete("s", b_prompt, max_tokens=5, temperature=0).generated_tokens


def test_sessions_are_scoped_by_tenant(stub_engine):
    engine, _ = stub_engine(n_ctx_seq=512, n_seq_max=4)
    mine = engine.complete("s", "tenant one's secret", max_tokens=4, temperature=0,
                           session_id="shared-id", cache_salt="tenant-1")
    theirs = engine.complete("s", "tenant one's guess", max_tokens=4, temperature=0,
                             session_id="shared-id", cache_salt="tenant-2")
    # The other tenant's turn neither resumed nor learnt the prefix it shares with mine.
    assert theirs.cache_hit_kind == "cold" and theirs.cache_delta.read == 0
    assert engine.end_session("shared-id", cache_salt="tenant-2") is True
    # Mine is still parked and resumes.
    again = engine.complete("s", [*mine.context_tokens, *b" more"], max_tokens=3, temperature=0,
                            session_id="shared-id", cache_salt="tenant-1")
    assert again.cache_hit_kind == "sticky"


def test_cancel_aborts_a_running_prefill_pass_and_the_others_go_on(stub_engine):
    engine, _backend = stub_engine(n_ctx_seq=512, n_batch=64, decode_delay=0.5)
    loop = engine.models.get("s").loop
    victim = engine.infer("s", "p" * 60, max_tokens=2, temperature=0)
    while victim.request not in loop.state.prefilling_now:  # the pass is running
        threading.Event().wait(0.001)
    victim.cancel()
    assert victim.result().finish_reason == "cancelled"
    assert engine.complete("s", "after", max_tokens=2, temperature=0).finish_reason == "length"


def test_values_llama_cpp_would_wrap_or_allocate_by_are_refused_or_clamped(stub_engine):
    engine, backend = stub_engine(n_ctx_seq=256)
    for name, value in (("top_k", 2**32 + 5), ("penalty_last_n", 2**31)):
        with pytest.raises(InvalidOptionError, match=name):
            engine.complete("s", "a", max_tokens=1, **{name: value})
    seen = []
    original = backend.new_sampler
    backend.new_sampler = lambda p: seen.append(p) or original(p)  # type: ignore[method-assign]
    engine.complete("s", "a", max_tokens=1, top_k=10**6, penalty_last_n=10**6, repetition_penalty=1.1)
    assert seen[0].top_k == backend.description.n_vocab
    assert seen[0].penalty_last_n == backend.shape.n_ctx_seq


def test_unpaired_surrogates_and_bad_grammars_are_typed_errors_before_queueing(stub_engine):
    engine, backend = stub_engine()
    with pytest.raises(InvalidRequestError, match="surrogate"):
        engine.complete("s", "bad \ud800 text", max_tokens=1)
    with pytest.raises(InvalidRequestError, match="surrogate"):
        engine.embed("s", ["fine", "bad \udfff"])
    with pytest.raises(GrammarError):
        engine.complete("s", "a", max_tokens=1, grammar="no rules here")
    assert engine.model_info("s").pending == 0 and backend.decode_log == []


def test_embeddings_never_run_on_the_decode_thread(stub_engine):
    engine, backend = stub_engine(n_ctx_seq=512, decode_delay=0.002)
    threads: set[str] = set()
    original = backend.embed

    def embed(tokens):  # type: ignore[no-untyped-def]
        threads.add(threading.current_thread().name)
        return original(tokens)

    backend.embed = embed  # type: ignore[method-assign]
    stream = engine.infer("s", "streaming", max_tokens=20, temperature=0)
    assert len(engine.embed("s", ["one", "two", "three"])) == 3
    assert not any(name.startswith("kvllama-loop") for name in threads)
    assert sum(isinstance(e, TokenEvent) for e in stream) == 20
    with pytest.raises(InvalidRequestError, match="at most"):
        engine.embed("s", ["x"] * 3000)
