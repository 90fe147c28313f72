"""Live sequences as prefix sources on the real model: a follower copies a leader's cells exactly.

The leader is running (decoding its reply when the followers arrive), parked
(a sticky session) or kept in its slot; the followers share its system
prompt, below and above the 512-token sliding window, and must produce
exactly the tokens of a cache-less cold run of their prompts, greedy and
seeded, while the leader's own tokens do not change either.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from shared_prompts import question, system  # a helper beside this file (conftest.py)

import kvllama
from kvllama.events import TokenEvent
from kvllama.kvcache import CacheConfig

pytestmark = pytest.mark.slow

M = "live"
OPTIONS = {"n_seq_max": 4, "n_ctx": 4 * 2048, "n_threads": 2}
LEADER = {"max_tokens": 24, "temperature": 0.0}
FOLLOWERS = ({"max_tokens": 10, "temperature": 0.0}, {"max_tokens": 10, "temperature": 0.8, "seed": 5})


@pytest.fixture(scope="module")
def cold() -> Iterator[kvllama.Engine]:
    with kvllama.Engine(cache=None) as eng:
        eng.load_model(M, **OPTIONS)
        yield eng


@pytest.fixture
def warm() -> Iterator[kvllama.Engine]:
    with kvllama.Engine(cache=CacheConfig(shm_dir=None, disk_dir=None)) as eng:
        eng.load_model(M, **OPTIONS)
        yield eng


def _followers(eng: kvllama.Engine, s: str) -> list[kvllama.RequestStream]:
    return [eng.infer(M, s + question(2 + i), **params) for i, params in enumerate(FOLLOWERS)]


def _check_followers(eng: kvllama.Engine, cold: kvllama.Engine, s: str,
                     streams: list[kvllama.RequestStream], live_before: int) -> None:
    n_system = len(eng.tokenize(M, s))
    for i, (params, stream) in enumerate(zip(FOLLOWERS, streams, strict=True)):
        got = stream.result()
        assert got.cache_delta.read >= n_system // 64 * 64 - 64, "the shared prompt was not reused"
        assert got.generated_tokens == cold.complete(M, s + question(2 + i), **params).generated_tokens
    assert eng.model_info(M).prompt_reuse["requests"]["live"] == live_before + len(FOLLOWERS)


@pytest.mark.parametrize("words", [150, 560])  # below and above the sliding window
def test_followers_copy_a_running_leader_that_goes_on_decoding(warm, cold, words):
    s = system(words, f"running-{words}")
    stream = warm.infer(M, s + question(1), **LEADER)
    events = iter(stream)
    first = next(e for e in events if isinstance(e, TokenEvent))  # the leader decodes now
    gate = threading.Event()
    warm.models.get(M).loop.call(gate.wait)  # hold the loop: both followers arrive while it decodes
    followers = _followers(warm, s)
    gate.set()
    _check_followers(warm, cold, s, followers, 0)
    leader = (first.token, *(e.token for e in events if isinstance(e, TokenEvent)))
    assert leader == cold.complete(M, s + question(1), **LEADER).generated_tokens


@pytest.mark.parametrize("words", [150, 560])
def test_followers_copy_a_parked_session_that_stays_parked(warm, cold, words):
    s = system(words, f"session-{words}")
    first = warm.complete(M, s + question(1), session_id="leader", **LEADER)
    _check_followers(warm, cold, s, _followers(warm, s), 0)
    turn2 = [*first.context_tokens, *warm.tokenize(M, " And item 9?", add_special=False)]
    again = warm.complete(M, turn2, session_id="leader", **LEADER)
    assert again.cache_hit_kind == "sticky"  # the session's sequence was left where it was
    assert again.generated_tokens == cold.complete(M, turn2, **LEADER).generated_tokens


@pytest.mark.parametrize("words", [150, 560])
def test_followers_copy_a_kept_slot(warm, cold, words):
    s = system(words, f"slot-{words}")
    warm.complete(M, s + question(1), **LEADER)
    _check_followers(warm, cold, s, _followers(warm, s), 0)


def test_on_smollm2_followers_copy_a_kept_slot(cold_smollm2):
    # Another architecture (llama, no sliding window, Q4_1 weights), so no cut rule of Gemma's applies.
    from kvllama.models.smollm2 import smollm2_model_path

    path = smollm2_model_path()
    with kvllama.Engine(cache=CacheConfig(shm_dir=None, disk_dir=None)) as eng:
        eng.load_model(M, path, **OPTIONS)
        s = system(150, "smollm2")
        eng.complete(M, s + question(1), **LEADER)
        _check_followers(eng, cold_smollm2, s, _followers(eng, s), 0)


@pytest.fixture(scope="module")
def cold_smollm2() -> Iterator[kvllama.Engine]:
    from kvllama.models.smollm2 import smollm2_model_path

    with kvllama.Engine(cache=None) as eng:
        eng.load_model(M, smollm2_model_path(), **OPTIONS)
        yield eng
