"""Sticky sessions over the stub backend."""

from __future__ import annotations

import pytest

from kvllama.decoding.sessions import Session, SessionPolicy, SessionTable
from kvllama.errors import SessionBusyError


def test_turn_two_continues_the_live_sequence(stub_engine):
    engine, _backend = stub_engine(n_ctx_seq=512)
    t1 = engine.complete("s", "hello there", max_tokens=6, temperature=0, session_id="a")
    prompt2 = [*t1.context_tokens, *b" and more"]
    t2 = engine.complete("s", prompt2, max_tokens=5, temperature=0, session_id="a")
    # The session keeps the prompt's KV; the reply (decode rows) is prefilled again.
    n_prompt1 = len(t1.context_tokens) - len(t1.generated_tokens)
    assert t2.cache_hit_kind == "sticky" and t2.cache_delta.read == n_prompt1
    plain = engine.complete("s", prompt2, max_tokens=5, temperature=0)
    assert plain.cache_hit_kind == "cold" and plain.generated_tokens == t2.generated_tokens


def test_a_divergent_tail_is_cut_or_falls_back(stub_engine):
    engine, _ = stub_engine(n_ctx_seq=512)
    tail = " and a tail long enough to prefill"
    engine.complete("s", "common prefix here" + tail, max_tokens=4, temperature=0, session_id="c")
    edited = engine.complete("s", "common prefix HERE" + tail, max_tokens=4, temperature=0, session_id="c")
    assert edited.cache_hit_kind == "sticky" and edited.cache_delta.read == len(b"common prefix ") + 1
    engine2, _ = stub_engine(n_ctx_seq=512, refuse_truncate=True)
    engine2.complete("s", "common prefix here" + tail, max_tokens=4, temperature=0, session_id="c")
    fallback = engine2.complete("s", "common prefix HERE" + tail, max_tokens=4, temperature=0, session_id="c")
    assert fallback.cache_hit_kind == "cold"


def test_concurrent_request_on_a_busy_session_fails_fast(stub_engine):
    engine, _ = stub_engine(decode_delay=0.002)
    running = engine.infer("s", "long one", max_tokens=100, temperature=0, session_id="b")
    with pytest.raises(SessionBusyError):
        engine.infer("s", "second", max_tokens=2, session_id="b")
    with pytest.raises(SessionBusyError):
        engine.end_session("b")
    running.result()
    assert engine.complete("s", "third", max_tokens=2, session_id="b").finish_reason == "length"


def test_end_session_frees_the_slot_and_waiters_evict_idle_sessions(stub_engine):
    engine, _backend = stub_engine(n_seq_max=2)
    engine.complete("s", "one and more words", max_tokens=2, temperature=0, session_id="x")
    assert engine.end_session("x") is True and engine.end_session("x") is False
    engine.complete("s", "one and more words", max_tokens=2, temperature=0, session_id="y")
    engine.complete("s", "two and more words", max_tokens=2, temperature=0, session_id="z")
    # Both slots hold parked sessions now; a new request still gets in.
    assert engine.complete("s", "three", max_tokens=2, temperature=0).finish_reason == "length"


def test_session_table_releases_idle_over_share_and_for_waiters():
    table = SessionTable(4, SessionPolicy(idle_timeout=10, max_share=0.5))
    for i, age in enumerate((100, 5, 3)):
        table.park(Session(f"s{i}", i, (1, 2), None))
        table.parked[(None, f"s{i}")].last_used = 1000 - age
    out = table.to_release(waiting=0, free_slots=1, now=1000)
    assert [s.id for s in out] == ["s0"]  # idle too long; the other two fit the 50 % share
    table.parked.pop((None, "s0"))
    assert [s.id for s in table.to_release(waiting=2, free_slots=1, now=1000)] == ["s1"]
    assert SessionTable.reusable_prefix((1, 2, 3), (1, 2, 3)) == 2  # one token left to decode
