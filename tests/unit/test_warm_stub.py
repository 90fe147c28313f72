"""The decode loop with a real KvCache (RAM tier) over the stub backend."""

from __future__ import annotations

import time

import pytest

from kvllama.kvcache import CacheConfig


@pytest.fixture
def cached(stub_engine):
    """A stub engine with a RAM-only KV cache."""
    return lambda **config: stub_engine(cache=CacheConfig(shm_dir=None, disk_dir=None), **config)


def wait_saves(engine):
    deadline = time.monotonic() + 5
    while engine.cache.pending_keys() and time.monotonic() < deadline:
        time.sleep(0.005)


def test_repeat_prompt_restores_and_prefills_only_the_tail(cached):
    engine, backend = cached(n_ctx_seq=1024, n_batch=512)
    prompt = "x" * 300
    cold = engine.complete("s", prompt, max_tokens=5, temperature=0)
    wait_saves(engine)
    warm = engine.complete("s", prompt, max_tokens=5, temperature=0)
    assert cold.cache_hit_kind == "cold" and warm.cache_hit_kind == "exact"
    assert warm.cache_delta.read == 256  # the aligned row, leaving >= 8 tokens to prefill
    assert warm.generated_tokens == cold.generated_tokens
    assert backend.restores == 1
    assert engine.model_info("s").last_cache_hit == {"kind": "exact", "prefix_len": 256}


def test_agents_sharing_an_uncached_prefix_prefill_it_once(cached):
    engine, backend = cached(n_ctx_seq=1024, n_batch=512, n_seq_max=4, decode_delay=0.001)
    system = "s" * 300
    streams = [engine.infer("s", system + f" agent {i} asks", max_tokens=4, temperature=0)
               for i in range(4)]
    results = [s.result() for s in streams]
    prefix_rows = sum(1 for rows in backend.decode_log for _t, pos, _s, _w in rows if pos < 256)
    assert prefix_rows == 256  # computed by one request, restored by the other three
    assert sorted(r.cache_delta.read for r in results) == [0, 256, 256, 256]


def test_finish_key_resumes_the_conversation(cached):
    engine, _backend = cached(n_ctx_seq=1024, n_batch=512)
    turn1 = engine.complete("s", "y" * 100, max_tokens=6, temperature=0)
    assert turn1.finish_key is not None
    wait_saves(engine)
    prompt2 = [*turn1.context_tokens, *b" next"]
    turn2 = engine.complete("s", prompt2, max_tokens=3, temperature=0, parent_key=turn1.finish_key)
    assert turn2.cache_delta.read == turn1.committed_tokens
    assert turn2.cache_hit_kind == "partial"
