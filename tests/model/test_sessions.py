"""Sticky sessions on the real model."""

from __future__ import annotations

import time

import pytest

from kvllama.errors import SessionBusyError

MODEL = "gemma"  # loaded once per session by tests/model/conftest.py
PROMPT = "The history of the printing press begins in"


def test_sticky_turn_two_equals_a_cold_run(engine):
    settled = engine.model_info(MODEL).settled["sequences"]
    t1 = engine.complete(MODEL, PROMPT, max_tokens=20, temperature=0, session_id="hist")
    p2 = list(t1.context_tokens) + engine.tokenize(MODEL, " Later, in the nineteenth century,",
                                                   add_special=False)
    # The idle loop recomputes the parked reply as prompt chunks (decoding/settling.py); wait for
    # it, so turn 2 reuses the whole transcript (all but the prompt's last 8 tokens at most).
    deadline = time.monotonic() + 60
    while engine.model_info(MODEL).settled["sequences"] <= settled:
        assert time.monotonic() < deadline, engine.model_info(MODEL).settled
        time.sleep(0.01)
    t2 = engine.complete(MODEL, p2, max_tokens=20, temperature=0, session_id="hist")
    assert t2.cache_hit_kind == "sticky"
    assert t2.cache_delta.read == min(len(t1.context_tokens), len(p2) - 8)
    cold = engine.complete(MODEL, p2, max_tokens=20, temperature=0, cache_salt="no-sharing")
    assert cold.cache_hit_kind != "sticky"
    assert t2.generated_tokens == cold.generated_tokens
    # The sticky turn computed only the reply and the new words; the cold run everything
    # (counted in tokens: a timing comparison of a 36-token prompt was a coin toss here).
    assert cold.cache_delta.read == 0 and t2.cache_delta.read > 0
    assert engine.end_session("hist") is True


def test_busy_session_and_end_session(engine):
    stream = engine.infer(MODEL, PROMPT, max_tokens=30, temperature=0, session_id="busy")
    with pytest.raises(SessionBusyError):
        engine.complete(MODEL, PROMPT, max_tokens=2, session_id="busy")
    stream.result()
    assert engine.model_info(MODEL).in_flight == 0
    assert engine.end_session("busy") is True
    assert engine.end_session("busy") is False
