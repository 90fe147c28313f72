"""The decode loop with a real KvCache (RAM tier) over the stub backend."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from kvllama.decoding.warm import MAX_SALT_ROOTS, SavePolicy, WarmStart
from kvllama.kvcache import CacheConfig, KeyRoot, KvCache


@pytest.fixture
def cached(stub_engine):
    """A stub engine with a RAM-only KV cache (``load``: load options, e.g. keep_finished)."""
    return lambda **config: stub_engine(cache=CacheConfig(shm_dir=None, disk_dir=None), **config)


def wait_saves(engine):
    """Every save handed to the writer pool is published (or failed): the pool's signal, not the clock."""
    assert engine.cache.flush(10)


def test_repeat_prompt_restores_and_prefills_only_the_tail(cached):
    engine, backend = cached(n_ctx_seq=1024, n_batch=512, load={"keep_finished": False})
    prompt = "x" * 300
    cold = engine.complete("s", prompt, max_tokens=5, temperature=0)
    wait_saves(engine)
    warm = engine.complete("s", prompt, max_tokens=5, temperature=0)
    assert cold.cache_hit_kind == "cold" and warm.cache_hit_kind == "exact"
    # The finish row (the whole prompt) cut back to leave 8 tokens to prefill.
    assert warm.cache_delta.read == 301 - 8
    assert warm.generated_tokens == cold.generated_tokens
    assert backend.restores == 1
    assert engine.model_info("s").last_cache_hit == {"kind": "exact", "prefix_len": 293, "source": "cache"}


def test_agents_sharing_an_uncached_prefix_prefill_it_once(cached):
    engine, backend = cached(n_ctx_seq=1024, n_batch=512, n_seq_max=4, decode_delay=0.001)
    system = "s" * 300
    streams = [engine.infer("s", system + f" agent {i} asks about the weather", max_tokens=4, temperature=0)
               for i in range(4)]
    results = [s.result() for s in streams]
    shared = 1 + len(system) + len(" agent ")
    prefix_rows = sum(1 for rows in backend.decode_log for _t, pos, _s, _w in rows if pos < shared)
    assert prefix_rows == shared  # computed by one request, copied by the other three
    assert sorted(r.cache_delta.read for r in results) == [0, shared, shared, shared]
    assert engine.cache_metrics()["saves"]["prefix"] == 1  # and saved as a row at 256 for later ones


def test_finish_key_resumes_the_conversation(cached):
    engine, _backend = cached(n_ctx_seq=1024, n_batch=512)
    turn1 = engine.complete("s", "y" * 100, max_tokens=6, temperature=0)
    assert turn1.finish_key is not None
    wait_saves(engine)
    prompt2 = [*turn1.context_tokens, *b" next"]
    turn2 = engine.complete("s", prompt2, max_tokens=3, temperature=0, parent_key=turn1.finish_key)
    # The finish row ends at turn 1's prompt: its reply is prefilled again, like a cold run.
    assert turn2.cache_delta.read == len(turn1.context_tokens) - len(turn1.generated_tokens)
    assert turn2.cache_hit_kind == "partial"


def test_a_restore_the_backend_refuses_is_a_miss_and_is_not_hit_again(cached):
    engine, backend = cached(n_ctx_seq=1024, n_batch=512, load={"keep_finished": False})
    prompt = "z" * 300
    cold = engine.complete("s", prompt, max_tokens=5, temperature=0)
    wait_saves(engine)
    refused: list[int] = []

    def refuse(seq_id: int, blob: bytes) -> bool:
        refused.append(seq_id)
        return False

    backend.restore_sequence = refuse  # type: ignore[method-assign]
    second = engine.complete("s", prompt, max_tokens=5, temperature=0)
    assert second.cache_hit_kind == "cold" and second.cache_delta.read == 0
    assert second.generated_tokens == cold.generated_tokens  # prefilled from scratch, same tokens
    m = engine.cache_metrics()
    assert m["restore_failures"] == 1 and m["hits"]["exact"] == 0 and m["hits"]["partial"] == 0
    assert m["misses"] == 2  # the cold lookup and the refused restore
    wait_saves(engine)
    # The refused row (the finish row: the whole prompt) was forgotten, so the second
    # request's finish save wrote it anew; its existing cold row was skipped.
    m = engine.cache_metrics()
    assert m["saves"]["cold"] == 1 and m["saves"]["finish"] == 2 and m["saves_skipped"] == 1
    third = engine.complete("s", prompt, max_tokens=5, temperature=0)
    assert len(refused) == 2 and third.cache_hit_kind == "cold"
    assert engine.cache_metrics()["restore_failures"] == 2


def test_an_empty_state_blob_is_never_saved(cached):
    engine, backend = cached(n_ctx_seq=1024, n_batch=512)
    backend.sequence_state = lambda seq_id: b""  # type: ignore[method-assign]
    result = engine.complete("s", "e" * 300, max_tokens=5, temperature=0)
    wait_saves(engine)
    m = engine.cache_metrics()
    assert m["saves_refused"] == 2  # the cold row and the finish row
    assert sum(m["saves"].values()) == 0 and engine.cache.rows() == []
    assert result.finish_key is None and result.cache_delta.created == 0


def test_random_salts_do_not_grow_the_roots_past_their_bound():
    """100k distinct cache_salts: both the engine's and the cache's roots stay bounded."""
    base = KeyRoot(model_fingerprint="<stub>", type_k="f16", type_v="f16", flash_attn="off",
                   kv_unified=False, n_seq_max=4, state_version="stub", numerics={"n_batch": 512})
    with KvCache(CacheConfig(shm_dir=None, disk_dir=None)) as cache:
        warm = WarmStart(cache, base, backend=None, policy=SavePolicy())  # type: ignore[arg-type]

        def salts(start: int, stop: int) -> None:
            for i in range(start, stop):
                warm.root(f"tenant-{i}")

        salts(0, 100_000)
        assert len(warm._roots) == MAX_SALT_ROOTS
        assert cache.known_roots() == cache.config.max_roots == 4096
        # Steady state: once every remembered root was made under tracing, more salts add nothing.
        tracemalloc.start()
        try:
            salts(100_000, 100_000 + 2 * MAX_SALT_ROOTS)
            gc.collect()
            full = tracemalloc.get_traced_memory()[0]
            salts(100_000 + 2 * MAX_SALT_ROOTS, 100_000 + 3 * MAX_SALT_ROOTS)
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - full
        finally:
            tracemalloc.stop()
        assert full > 1 << 20  # sanity: the bounded roots themselves were traced (~1 KB each)
        assert grown < 64 * 1024, f"roots grew by {grown} bytes over {MAX_SALT_ROOTS} more salts"
        last = f"tenant-{100_000 + 3 * MAX_SALT_ROOTS - 1}"
        assert warm.root(last) is warm.root(last)  # recent ones are kept


def test_a_conversation_whose_slot_was_taken_restores_its_own_row_not_a_neighbours_slot(cached):
    engine, _backend = cached(n_ctx_seq=1024, n_batch=512, n_seq_max=3)
    system = "s" * 300
    a1 = engine.complete("s", system + " user A asks", max_tokens=4, temperature=0)
    engine.complete("s", "z" * 50, max_tokens=2, temperature=0)
    b1 = engine.complete("s", system + " user B asks", max_tokens=4, temperature=0)
    # B copies the system prompt from A's kept sequence into a free one: A's slot stays as it was...
    assert engine.model_info("s").last_cache_hit["source"] == "live" and b1.cache_delta.read > 300
    engine.complete("s", "y" * 50, max_tokens=2, temperature=0)  # ...until it is the oldest to give way
    wait_saves(engine)
    a1_prompt = len(a1.context_tokens) - len(a1.generated_tokens)
    a2 = engine.complete("s", [*a1.context_tokens, *b" and more"], max_tokens=2, temperature=0)
    # B's kept sequence shares the system prompt; A's own row in the cache holds all of A's turn 1.
    assert a2.cache_delta.read == a1_prompt
    assert engine.model_info("s").last_cache_hit["source"] == "cache"
    b2 = engine.complete("s", [*b1.context_tokens, *b" and more"], max_tokens=2, temperature=0)
    assert b2.cache_delta.read >= len(b1.context_tokens) - len(b1.generated_tokens)
    assert engine.model_info("s").last_cache_hit["source"] == "kept"  # B's slot was left alone
