"""The KvCache facade: lookup order, parent waits, collisions, async saves, metrics."""

from __future__ import annotations

import threading

import pytest

from kvllama.errors import InvalidOptionError
from kvllama.kvcache import CacheConfig, CacheKey, KeyChain, KvCache

PROMPT = list(range(100, 180))  # 80 tokens


def save(cache, root, tokens, blob, seed=0, reason="cold"):
    key = cache.save(root, tokens, blob(seed), reason, sync=True)
    assert key is not None
    return key


def test_lookup_order_is_exact_then_parent_then_longest_prefix(make_cache, root, blob):
    cache = make_cache()
    parent = save(cache, root, PROMPT[:40], blob, 1)
    save(cache, root, PROMPT[:60], blob, 2)
    exact = save(cache, root, PROMPT, blob, 3)
    hit = cache.lookup(root, PROMPT, parent_key=parent)
    assert (hit.key, hit.kind, hit.source, hit.n_tokens) == (exact, "exact", "exact_key", 80)
    hit = cache.lookup(root, [*PROMPT, 7], parent_key=parent)
    assert (hit.key, hit.kind, hit.source, hit.n_tokens) == (parent, "partial", "parent", 40)
    hit = cache.lookup(root, [*PROMPT, 7])
    assert (hit.kind, hit.source, hit.n_tokens, hit.tier) == ("partial", "prefix", 80, "ram")
    hit = cache.lookup(root, PROMPT, max_len=70)
    assert (hit.kind, hit.source, hit.n_tokens) == ("partial", "prefix", 60)
    hit = cache.lookup(root, PROMPT, max_len=60)
    assert (hit.kind, hit.source, hit.n_tokens) == ("exact", "exact_key", 60)
    assert cache.load(hit) == blob(2)
    assert cache.lookup(root, PROMPT[:39]) is None
    assert cache.lookup(root, PROMPT, max_len=0) is None


def test_a_parent_that_is_not_a_prefix_or_of_another_root_is_ignored(make_cache, make_root, root, blob):
    cache = make_cache()
    parent = save(cache, root, PROMPT[:40], blob)
    other = list(PROMPT)
    other[5] = 0
    assert cache.lookup(root, other, parent_key=parent) is None
    assert cache.lookup(make_root(cache_salt="tenant-b"), PROMPT, parent_key=parent) is None
    assert cache.lookup(root, PROMPT[:30], parent_key=parent) is None  # longer than the prompt


def test_different_salts_never_share_rows(make_cache, make_root, blob):
    cache = make_cache()
    a, b = make_root(cache_salt="tenant-a"), make_root(cache_salt="tenant-b")
    save(cache, a, PROMPT, blob)
    assert cache.lookup(b, PROMPT) is None
    assert cache.lookup(make_root(), PROMPT) is None
    assert cache.longest_prefix_len(b, PROMPT) == 0
    assert cache.lookup(a, PROMPT).kind == "exact"


def test_parent_lookup_waits_for_its_in_flight_save(make_cache, root, blob):
    cache = make_cache(parent_wait=5.0)
    gate, entered = threading.Event(), threading.Event()
    real = cache._write_job

    def slow_write(job, timeout=None):
        entered.set()
        gate.wait(5)
        return real(job, timeout)

    cache._write_job = slow_write
    parent = cache.save(root, PROMPT[:40], blob(1), "finish")
    assert entered.wait(5) and cache.in_flight(parent) and parent in cache.pending_keys()
    threading.Timer(0.05, gate.set).start()
    hit = cache.lookup(root, PROMPT, parent_key=parent)
    # It waited for the write (the row was still in flight when it asked) and then hit it.
    assert hit is not None and (hit.key, hit.source) == (parent, "parent")
    assert gate.is_set() and not cache.in_flight(parent)


def test_parent_wait_is_bounded(make_cache, root, blob):
    cache = make_cache(parent_wait=0.05)
    gate, entered = threading.Event(), threading.Event()
    real = cache._write_job

    def stuck_write(job, timeout=None):
        entered.set()
        gate.wait(5)
        return real(job, timeout)

    cache._write_job = stuck_write
    parent = cache.save(root, PROMPT[:40], blob(1), "finish")
    assert entered.wait(5)
    assert cache.lookup(root, PROMPT, parent_key=parent) is None
    # It gave up while the write was still stuck: it did not wait for the write to finish.
    assert not gate.is_set() and cache.in_flight(parent)
    gate.set()


def test_a_key_collision_is_a_miss_not_a_wrong_row(make_cache, root, blob, monkeypatch):
    monkeypatch.setattr(KeyChain, "key", lambda self, n: CacheKey(b"\x00" * 16))
    cache = make_cache()
    other = [t + 1 for t in PROMPT]
    assert save(cache, root, PROMPT, blob) == b"\x00" * 16
    assert cache.lookup(root, other) is None
    assert cache.save(root, other, blob(9), "cold", sync=True) is None  # would overwrite another row
    assert cache.load(cache.lookup(root, PROMPT)) == blob(0)
    m = cache.metrics()
    assert m["collisions"] == 2 and m["misses"] == 1


def test_saves_are_dropped_never_waited_for_when_the_queue_is_full(make_cache, root, blob):
    cache = make_cache(writer_threads=1, writer_queue=1)
    gate, entered = threading.Event(), threading.Event()
    real = cache._write_job

    def blocked(job, timeout=None):
        entered.set()
        gate.wait(5)
        return real(job, timeout)

    cache._write_job = blocked
    first = cache.save(root, PROMPT[:10], blob(1), "cold")
    assert entered.wait(5)
    second = cache.save(root, PROMPT[:20], blob(2), "cold")  # queued
    assert cache.save(root, PROMPT[:20], blob(2), "cold") == second  # already in flight
    # Dropped at once, while the writer is still held: a save that waited for room in the
    # queue would only return after the gate opens below.
    assert cache.save(root, PROMPT[:30], blob(3), "continued") is None
    assert not gate.is_set() and cache.metrics()["saves_dropped"] == 1
    gate.set()
    assert cache.wait_saved(first, 5) and cache.wait_saved(second, 5)
    m = cache.metrics()
    assert m["saves"]["cold"] == 2 and m["saves_skipped"] == 1 and m["pending_saves"] == 0


def test_sync_saves_time_out_instead_of_blocking_forever(make_cache, root, blob):
    cache = make_cache()
    with cache._stack.lock:  # a writer is busy
        assert cache.save(root, PROMPT, blob(1), "evict", sync=True, timeout=0.05) is None
    assert cache.metrics()["saves_failed"] == 1
    assert cache.save(root, PROMPT, blob(1), "shutdown", sync=True, timeout=1) is not None


def test_saving_a_cached_row_again_is_skipped(make_cache, root, blob):
    cache = make_cache()
    key = save(cache, root, PROMPT, blob)
    assert cache.save(root, PROMPT, blob(5), "finish", sync=True) == key
    assert cache.load(cache.lookup(root, PROMPT)) == blob(0)
    assert cache.metrics()["saves_skipped"] == 1
    assert cache.save(root, [], blob(1), "cold") is None


def test_the_engine_may_reuse_its_token_list_after_saving(make_cache, root, blob):
    cache = make_cache()
    tokens = list(PROMPT)
    cache.save(root, tokens, blob(1), "continued", sync=True)
    tokens.append(5)
    assert cache.lookup(root, PROMPT).n_tokens == 80


def test_a_row_removed_after_lookup_is_a_counted_miss(make_cache, root, blob):
    cache = make_cache()
    save(cache, root, PROMPT, blob)
    hit = cache.lookup(root, PROMPT)
    cache.clear()
    assert cache.load(hit) is None
    m = cache.metrics()
    assert m["load_misses"] == 1 and m["misses"] == 1 and m["hits"] == {"exact": 0, "partial": 0}


def test_metrics_count_hits_misses_saves_and_time(make_cache, root, blob):
    cache = make_cache(disk=True, ram_bytes=0)
    save(cache, root, PROMPT[:40], blob, reason="cold")
    save(cache, root, PROMPT, blob, reason="finish")
    cache.load(cache.lookup(root, PROMPT))
    cache.load(cache.lookup(root, PROMPT[:50]))
    cache.lookup(root, [1, 2, 3])
    m = cache.metrics()
    assert m["lookups"] == 3 and m["misses"] == 1
    assert m["hits"] == {"exact": 1, "partial": 1}
    assert m["hits_by_tier"] == {"disk": 2}
    assert m["hits_by_source"] == {"exact_key": 1, "prefix": 1}
    assert m["saves"]["cold"] == 1 and m["saves"]["finish"] == 1
    assert m["tiers"]["disk"]["rows"] == 2 and m["tiers"]["disk"]["bytes"] > 4000
    assert all(m["seconds"][name] > 0 for name in ("pack", "save", "load", "lookup"))


def test_longest_prefix_len_for_routers(make_cache, root, blob):
    cache = make_cache(disk=True, ram_bytes=0)
    assert cache.longest_prefix_len(root, PROMPT) == 0
    save(cache, root, PROMPT[:33], blob)
    assert cache.longest_prefix_len(root, PROMPT) == 33
    assert cache.longest_prefix_len(root, PROMPT[:33]) == 33
    assert cache.longest_prefix_len(root, []) == 0
    assert cache.metrics()["lookups"] == 0


def test_rows_inspect_and_clear(make_cache, root, blob):
    cache = make_cache(shm=True)
    key = save(cache, root, PROMPT, blob, reason="finish")
    [info] = cache.rows()
    assert (info.key, info.n_tokens, info.tier, info.reason, info.hits) == (key.hex(), 80, "ram", "finish", 0)
    assert info.age >= 0 and info.key_inputs is None
    detail = cache.inspect(key.hex())
    assert detail.key_inputs["model_fingerprint"] == "sha256:0123abcd"
    assert detail.key_inputs["flash_attn"] is False
    assert cache.inspect("00" * 16) is None and cache.inspect("not hex") is None
    with pytest.raises(InvalidOptionError):
        cache.clear("tape")
    assert cache.clear("shm") == 0
    assert cache.clear("ram") == 1
    assert cache.rows() == [] and cache.lookup(root, PROMPT) is None


def test_raw_root_bytes_work_too(make_cache, root, blob):
    cache = make_cache()
    key = cache.save(root.digest, PROMPT, blob(1), "cold", sync=True)
    assert cache.lookup(root, PROMPT).key == key
    assert cache.inspect(key.hex()).key_inputs == {"root": root.digest.hex()}


def test_no_tiers_means_no_saves(root, blob):
    with KvCache(CacheConfig(ram_bytes=0, shm_dir=None, disk_dir=None)) as cache:
        assert cache.save(root, PROMPT, blob(1), "cold") is None
        assert cache.lookup(root, PROMPT) is None


def test_after_close_nothing_is_served_or_saved(make_cache, root, blob):
    cache = make_cache()
    save(cache, root, PROMPT, blob)
    cache.close(timeout=5)
    cache.close(timeout=5)  # idempotent
    assert cache.lookup(root, PROMPT) is None
    assert cache.save(root, PROMPT[:10], blob(1), "cold") is None


def test_inspect_reads_a_file_rows_inputs_without_revealing_the_salt(make_cache, make_root, blob):
    cache = make_cache(ram_bytes=0, disk=True)
    salted = make_root(cache_salt="s3cret", adapters=(("lora-a", 0.5),))
    key = save(cache, salted, PROMPT, blob)
    inputs = cache.inspect(key.hex()).key_inputs
    assert inputs["adapters"] == [["lora-a", 0.5]]
    assert inputs["cache_salt"].startswith("blake2b:") and "s3cret" not in str(inputs)


def test_concurrent_saves_and_lookups_stay_consistent(make_cache, root, blob):
    cache = make_cache(ram_bytes=20_000, disk=True, disk_bytes=40_000, writer_threads=2, writer_queue=64,
                       durable=False)
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for i in range(200):
                hit = cache.lookup(root, [*PROMPT[:20], *range(i % 40)])
                if hit is not None:
                    got = cache.load(hit)
                    assert got is None or len(got) == 2000
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    keys = [cache.save(root, [*PROMPT[:20], *range(i)], blob(i), "continued") for i in range(40)]
    thread.join(10)
    for key in keys:
        if key is not None:
            assert cache.wait_saved(key, 5)
    assert errors == []
    for name, tier in cache.metrics()["tiers"].items():
        assert tier["bytes"] <= tier["budget"], name
    for info in cache.rows():
        hit = cache.lookup(root, [*PROMPT[:20], *range(info.n_tokens - 20)])
        assert hit is not None and hit.n_tokens == info.n_tokens
