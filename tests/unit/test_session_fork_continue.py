"""Sessions continued from caller-supplied tokens, and forked into new ones (stub backend)."""

from __future__ import annotations

import pytest

from kvllama.errors import (
    InvalidRequestError,
    NoFreeSlotError,
    SessionConflictError,
    UnknownSessionError,
)


def test_continue_appends_to_the_transcript_and_equals_sending_it_whole(stub_engine):
    engine, _ = stub_engine(n_ctx_seq=512)
    first = engine.complete("s", "hello there " * 10, max_tokens=5, temperature=0, session_id="a")
    cont = engine.complete("s", " and then?", max_tokens=5, temperature=0, session_id="a",
                           continue_session=True)
    assert cont.context_tokens[: len(first.context_tokens)] == first.context_tokens
    assert cont.cache_hit_kind == "sticky"
    more = engine.tokenize("s", " and then?", add_special=False)
    whole = engine.complete("s", [*first.context_tokens, *more], max_tokens=5, temperature=0)
    assert whole.generated_tokens == cont.generated_tokens


def test_continue_checks_the_expected_length_and_unknown_sessions(stub_engine):
    engine, _ = stub_engine(n_ctx_seq=512)
    first = engine.complete("s", "x" * 40, max_tokens=3, temperature=0, session_id="b")
    with pytest.raises(SessionConflictError, match="expects 7"):
        engine.complete("s", "y", max_tokens=2, session_id="b", continue_session=True,
                        expect_session_tokens=7)
    ok = engine.complete("s", "y", max_tokens=2, session_id="b", continue_session=True,
                         expect_session_tokens=len(first.context_tokens))
    assert len(ok.context_tokens) == len(first.context_tokens) + 1 + 2
    with pytest.raises(UnknownSessionError):
        engine.complete("s", "y", max_tokens=2, session_id="nobody", continue_session=True)
    with pytest.raises(InvalidRequestError, match="session_id"):
        engine.complete("s", "y", max_tokens=2, continue_session=True)


def test_a_forked_session_goes_on_independently_from_one_copied_sequence(stub_engine):
    engine, backend = stub_engine(n_ctx_seq=512, n_seq_max=4)
    first = engine.complete("s", "z" * 60, max_tokens=4, temperature=0, session_id="main")
    engine.fork_session("s", "main", "branch")
    follow = [*first.context_tokens, *engine.tokenize("s", " more", add_special=False)]
    a = engine.complete("s", follow, max_tokens=4, temperature=0, session_id="main")
    b = engine.complete("s", follow, max_tokens=4, temperature=0, session_id="branch")
    assert a.cache_hit_kind == b.cache_hit_kind == "sticky"
    assert a.generated_tokens == b.generated_tokens and a.cache_delta.read == b.cache_delta.read > 0
    assert backend.restores == 0  # both from live sequences
    with pytest.raises(SessionConflictError):
        engine.fork_session("s", "main", "branch")
    with pytest.raises(UnknownSessionError):
        engine.fork_session("s", "ghost", "x")


def test_fork_needs_a_free_slot(stub_engine):
    engine, _ = stub_engine(n_ctx_seq=512, n_seq_max=2, decode_delay=0.01)
    engine.complete("s", "q" * 40, max_tokens=2, temperature=0, session_id="one")
    busy = engine.infer("s", "w" * 20, max_tokens=200, temperature=0)  # holds the other slot
    next(iter(busy))  # running: its first token is out
    with pytest.raises(NoFreeSlotError):
        engine.fork_session("s", "one", "two")
    busy.cancel()
