"""Shared prefixes on the real model: computed once, restored exactly, by every route to them.

Users of one app share a system prompt and differ after it. A follower must
restore the shared part (from a save point, from a longer row cut back, from
a leader that is still prefilling, from a finished request still in its
slot) and produce exactly the tokens of a cache-less cold run of its prompt.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from shared_prompts import question, system  # a helper beside this file (conftest.py)

import kvllama
from kvllama.decoding.request import resume_point
from kvllama.kvcache import CacheConfig

pytestmark = pytest.mark.slow

M = "shared"
OPTIONS = {"n_seq_max": 4, "n_ctx": 4 * 2048, "n_threads": 2}
GREEDY = {"max_tokens": 12, "temperature": 0.0}


@pytest.fixture(scope="module")
def cold() -> Iterator[kvllama.Engine]:
    with kvllama.Engine(cache=None) as eng:
        eng.load_model(M, **OPTIONS)
        yield eng


def _engine(keep_finished: bool) -> kvllama.Engine:
    eng = kvllama.Engine(cache=CacheConfig(shm_dir=None, disk_dir=None))
    eng.load_model(M, keep_finished=keep_finished, **OPTIONS)
    return eng


@pytest.fixture
def cache_only() -> Iterator[kvllama.Engine]:
    """Finished requests leave their slots at once: every reuse is the cache's."""
    with _engine(keep_finished=False) as eng:
        yield eng


def _tokens(engine: kvllama.Engine, text: str) -> list[int]:
    return engine.tokenize(M, text)


def _shared(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _window(engine: kvllama.Engine) -> int:
    return engine.models.get(M).backend.shape.swa_window


def test_a_longer_row_is_cut_back_to_the_shared_prefix(cache_only, cold):
    # Below the 512-token window a row keeps every position, so user 1's row
    # (system + question 1) serves user 2 cut back to the blocks they share.
    s = system(180, "cut")
    first = cache_only.complete(M, s + question(1), **GREEDY)
    assert cache_only.cache.flush(30)
    p2 = s + question(2)
    shared = _shared(_tokens(cache_only, s + question(1)), _tokens(cache_only, p2))
    assert 128 < shared < 500
    second = cache_only.complete(M, p2, **GREEDY)
    assert second.cache_delta.read == shared // 64 * 64
    assert cache_only.cache_metrics()["hits_by_source"]["shared"] == 1
    assert second.generated_tokens == cold.complete(M, p2, **GREEDY).generated_tokens
    assert first.cache_delta.read == 0


def test_above_the_window_a_save_point_serves_the_follower_and_a_longer_row_does_not(cache_only, cold):
    s = system(560, "point")
    n_system = len(_tokens(cache_only, s))
    assert n_system > 600  # above the sliding window: a longer row cannot be cut back
    # Without a save point, user 0's row is longer than what user 3 shares: no restore, cold-exact.
    cache_only.complete(M, s + question(0), **GREEDY)
    assert cache_only.cache.flush(30)
    p3 = s + question(3)
    alone = cache_only.complete(M, p3, **GREEDY)
    assert alone.cache_delta.read == 0
    assert alone.generated_tokens == cold.complete(M, p3, **GREEDY).generated_tokens
    # A leader that names the system prompt's end saves a row there; a follower restores it.
    s2 = system(560, "point-2")
    point = len(_tokens(cache_only, s2))
    leader = cache_only.complete(M, s2 + question(1), save_points=[point], **GREEDY)
    assert cache_only.cache.flush(30)
    assert cache_only.cache_metrics()["saves"]["prefix"] >= 1
    p2 = s2 + question(2)
    follower = cache_only.complete(M, p2, **GREEDY)
    grid = resume_point(point // 64 * 64, _window(cache_only))
    assert follower.cache_delta.read == grid and leader.cache_delta.read == 0
    assert follower.generated_tokens == cold.complete(M, p2, **GREEDY).generated_tokens


def test_agents_that_arrive_together_prefill_the_shared_prompt_once(cold):
    with _engine(keep_finished=True) as eng:
        s = system(560, "together")
        prompts = [s + question(i) for i in range(4)]
        toks = [_tokens(eng, p) for p in prompts]
        shared = min(_shared(toks[0], t) for t in toks[1:])
        gate = threading.Event()
        eng.models.get(M).loop.call(gate.wait)  # hold the loop: all four are queued together
        streams = [eng.infer(M, p, **GREEDY) for p in prompts]
        gate.set()
        results = [s.result() for s in streams]
        saves = eng.cache_metrics()["saves"]["prefix"]
    # The first computes the prefix and saves a row where they part; the others wait for its live
    # sequence to hold all they share and copy it.
    assert sorted(r.cache_delta.read for r in results) == [0, shared, shared, shared]
    assert saves == 1
    for p, r in zip(prompts, results, strict=True):
        assert r.generated_tokens == cold.complete(M, p, **GREEDY).generated_tokens


def test_a_recent_prompt_teaches_where_the_next_ones_part(cache_only, cold):
    # Raw prompts name no system prompt: the second prompt that starts like the first
    # saves a row where they part, and the third restores it.
    s = system(560, "recent")
    cache_only.complete(M, s + question(1), **GREEDY)
    second = cache_only.complete(M, s + question(2), **GREEDY)
    assert cache_only.cache.flush(30)
    p3 = s + question(3)
    third = cache_only.complete(M, p3, **GREEDY)
    shared = _shared(_tokens(cache_only, s + question(1)), _tokens(cache_only, s + question(2)))
    grid = resume_point(shared // 64 * 64, _window(cache_only))
    assert second.cache_delta.read == 0 and third.cache_delta.read == grid
    assert third.generated_tokens == cold.complete(M, p3, **GREEDY).generated_tokens


@pytest.mark.parametrize("words", [150, 700])  # below and above the sliding window
def test_a_finished_request_left_in_its_slot_serves_a_repeat_and_the_next_turn(cold, words):
    with _engine(keep_finished=True) as eng:
        p = system(words, f"kept-{words}")
        first = eng.complete(M, p, **GREEDY)
        n = len(first.context_tokens) - len(first.generated_tokens)
        again = eng.complete(M, p + " Again.", **GREEDY)
        p_again = _tokens(eng, p + " Again.")
        # In place: only the prompt's last 8 tokens are prefilled, wherever that falls.
        assert again.cache_delta.read == len(p_again) - 8
        assert again.generated_tokens == cold.complete(M, p + " Again.", **GREEDY).generated_tokens
        turn2 = [*first.context_tokens, *eng.tokenize(M, " Next question?", add_special=False)]
        nxt = eng.complete(M, turn2, **GREEDY)
        assert nxt.cache_delta.read >= resume_point(n, _window(eng))
        assert nxt.generated_tokens == cold.complete(M, turn2, **GREEDY).generated_tokens
