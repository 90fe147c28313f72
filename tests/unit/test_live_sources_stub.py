"""Live sequences as prefix sources (decoding/live_sources.py), on the stub backend.

A follower copies the prefix it shares with a running request, a parked
session or a kept sequence, and the source goes on as it was. The stub's "model"
predicts from the tokens a sequence holds, so a copy that brought the wrong
cells (or cut them in the wrong place) changes the follower's tokens against a
cold engine's.
"""

from __future__ import annotations

import threading

import pytest

from kvllama.decoding.live_sources import LiveSource, best_live_source
from kvllama.events import TokenEvent
from kvllama.kvcache import CacheConfig

RAM_ONLY = CacheConfig(shm_dir=None, disk_dir=None)
GREEDY = {"max_tokens": 6, "temperature": 0}
SYSTEM = "a long shared system prompt. " * 12  # 348 tokens (the stub's tokens are bytes)
SHARED = 1 + len(SYSTEM) + len("User ")  # what two users' prompts share, BOS included


def _cold(stub_engine, prompt: str, **params: object) -> tuple[int, ...]:
    engine, _ = stub_engine(n_ctx_seq=1024, n_batch=128)
    return engine.complete("s", prompt, **{**GREEDY, **params}).generated_tokens


def _source(engine) -> str:
    return engine.model_info("s").last_cache_hit["source"]


def test_a_follower_copies_a_running_leaders_prompt_and_the_leader_goes_on(stub_engine):
    engine, backend = stub_engine(n_ctx_seq=1024, n_batch=128, cache=RAM_ONLY)
    leader_prompt, follower_prompt = SYSTEM + "User 1: hello?", SYSTEM + "User 2: and you?"
    stream = engine.infer("s", leader_prompt, max_tokens=40, temperature=0)
    events = iter(stream)
    first = next(e for e in events if isinstance(e, TokenEvent))  # the leader is decoding now
    gate = threading.Event()
    engine.models.get("s").loop.call(gate.wait)  # hold the loop: the leader cannot finish meanwhile
    follower = engine.infer("s", follower_prompt, **GREEDY)
    gate.set()
    got = follower.result()
    leader = [first.token, *(e.token for e in events if isinstance(e, TokenEvent))]
    # Copied from the live leader: what the two prompts share, nothing restored, nothing prefilled.
    assert got.cache_delta.read == SHARED and _source(engine) == "live" and backend.restores == 0
    assert got.generated_tokens == _cold(stub_engine, follower_prompt)
    assert tuple(leader) == _cold(stub_engine, leader_prompt, max_tokens=40)


def test_a_copied_prefix_is_saved_as_a_row(stub_engine):
    # The leader's own rows end past the shared part (its question is long), so the copy is cut
    # to the save grid and saved: the prompt's next user restores it once the sources are gone.
    engine, _ = stub_engine(n_ctx_seq=1024, n_batch=128, cache=RAM_ONLY)
    engine.complete("s", SYSTEM + "User A: " + "why? " * 40, session_id="a", **GREEDY)
    follower = SYSTEM + "User B: what is two plus two?"
    got = engine.complete("s", follower, **GREEDY)
    grid = SHARED // 64 * 64
    assert _source(engine) == "live" and got.cache_delta.read == grid < SHARED
    assert got.generated_tokens == _cold(stub_engine, follower)
    warm = engine.models.get("s").loop.warm
    tokens = tuple(engine.tokenize("s", follower))
    assert engine.cache.flush(10) and warm.cache.find_row(warm.root(None), tokens[:grid]) is not None
    again = engine.complete("s", SYSTEM + "User C: and three?", **GREEDY)
    assert again.cache_delta.read == SHARED  # a live source still beats the row while one is there


def test_a_parked_session_serves_another_conversation_and_stays_parked(stub_engine):
    engine, _ = stub_engine(n_ctx_seq=1024, n_batch=128)
    first = engine.complete("s", SYSTEM + "User A: one?", session_id="a", **GREEDY)
    other = engine.complete("s", SYSTEM + "User B: what is two plus two?", **GREEDY)
    assert _source(engine) == "live" and other.cache_delta.read == SHARED
    assert other.generated_tokens == _cold(stub_engine, SYSTEM + "User B: what is two plus two?")
    turn2 = [*first.context_tokens, *b" more?"]
    again = engine.complete("s", turn2, session_id="a", **GREEDY)
    assert _source(engine) == "session"  # its sequence was left in place
    assert again.generated_tokens == _cold(stub_engine, turn2)


def test_a_kept_slot_is_copied_when_shared_in_part_and_taken_over_when_continued(stub_engine):
    engine, _ = stub_engine(n_ctx_seq=1024, n_batch=128)
    first = engine.complete("s", SYSTEM + "User A: one?", **GREEDY)
    engine.complete("s", SYSTEM + "User B: two?", **GREEDY)
    assert _source(engine) == "live"
    turn2 = [*first.context_tokens, *b" more?"]
    again = engine.complete("s", turn2, **GREEDY)
    assert _source(engine) == "kept" and again.cache_delta.read >= 1 + len(SYSTEM) + len("User A: one?")
    assert again.generated_tokens == _cold(stub_engine, turn2)


def test_a_source_that_cannot_be_cut_is_passed_over(stub_engine):
    # A sliding-window model whose memory refuses the cut: the follower prefills instead.
    engine, _ = stub_engine(n_ctx_seq=1024, n_batch=128, refuse_truncate=True)
    engine.complete("s", SYSTEM + "User A: one?", session_id="a", **GREEDY)
    other = engine.complete("s", SYSTEM + "User B: two?", **GREEDY)
    assert other.cache_delta.read == 0 and _source(engine) == "none"
    assert other.generated_tokens == _cold(stub_engine, SYSTEM + "User B: two?")


def test_other_tenants_sequences_are_never_sources(stub_engine):
    engine, _ = stub_engine(n_ctx_seq=1024, n_batch=128)
    engine.complete("s", SYSTEM + "User A: one?", session_id="a", cache_salt="tenant-a", **GREEDY)
    other = engine.complete("s", SYSTEM + "User B: two?", cache_salt="tenant-b", **GREEDY)
    assert other.cache_delta.read == 0


@pytest.mark.parametrize(("tokens", "want"), [
    ((1, 2, 3, 4, 9), 4),        # shares 4, the limit
    ((1, 2, 3), 3),              # all of it: "whole"
    ((1, 2, 7), None),           # below at_least
])
def test_best_live_source_rules(tokens, want):
    got = best_live_source((1, 2, 3, 4, 5, 6), ("t", ()), limit=4, at_least=3,
                           candidates=[("x", tokens, ("t", ())), ("y", (1, 2, 3, 4), ("u", ()))])
    if want is None:
        assert got is None
    else:
        assert got == LiveSource("x", want, whole=want == len(tokens))


def test_earlier_candidates_win_ties():
    same = (1, 2, 3, 4)
    got = best_live_source((1, 2, 3, 4, 5), (None, ()), 10, 1,
                           [("first", same, (None, ())), ("second", same, (None, ()))])
    assert got is not None and got.holder == "first"
