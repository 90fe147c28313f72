"""Budgets, the eviction score, pins and demotion."""

from __future__ import annotations

import random
from array import array

from kvllama.kvcache import CacheKey, SaveReason
from kvllama.kvcache.eviction import EvictionPolicy
from kvllama.kvcache.index import Entry
from kvllama.kvcache.rowformat import packed_size


def entry(name: str, hits: int, idle: float, size: int = 10, pins: int = 0, now: float = 1e6) -> Entry:
    return Entry(CacheKey(name.encode()), b"r", array("i", [1]), "ram", size, hits, now - idle, now - idle,
                 SaveReason.COLD, pins)


def test_score_favours_hits_and_recency():
    policy = EvictionPolicy(half_life=3600)
    now = 1e6
    assert policy.score(0, now, now) == 1.0
    assert policy.score(10, now - 7200, now) == 2.75
    assert policy.score(1000, now - 86400, now) < policy.score(0, now - 60, now)
    rows = [entry("fresh", 0, 0), entry("popular", 10, 7200), entry("stale", 0, 7200),
            entry("old-star", 1000, 86400)]
    assert [e.key for e in policy.order(rows, now)] == [b"old-star", b"stale", b"fresh", b"popular"]


def test_pinned_rows_are_never_victims():
    policy = EvictionPolicy()
    rows = [entry("pinned", 0, 9999, pins=1), entry("a", 5, 0), entry("b", 6, 0)]
    assert [e.key for e in policy.victims(rows, 15, 1e6)] == [b"a", b"b"]
    assert policy.victims(rows, 25, 1e6) is None  # only the pinned row could cover it
    assert policy.victims(rows, 0, 1e6) == []


def tokens(i: int, n: int = 20) -> list[int]:
    return [i * 1000 + j for j in range(n)]


def rows_of(root, n: int) -> int:
    """A budget that holds exactly ``n`` rows of 20 tokens and a 2,000-byte blob."""
    return n * packed_size(20, len(root.describe()), 2000) + 10


def test_budgets_are_never_exceeded(make_cache, root, blob):
    cache = make_cache(ram_bytes=12_000, shm=True, shm_bytes=15_000, disk=True, disk_bytes=25_000,
                       durable=False)
    rng = random.Random(7)
    for i in range(30):
        key = cache.save(root, tokens(i), blob(i, rng.randint(500, 6000)), "finish", sync=True)
        assert key is not None
        if rng.random() < 0.5:
            hit = cache.lookup(root, tokens(rng.randrange(i + 1)))
            if hit is not None:
                cache.load(hit)
        for name, tier in cache.metrics()["tiers"].items():
            assert tier["bytes"] <= tier["budget"], name
    m = cache.metrics()
    assert m["evictions"]["ram"] > 0 and m["demotions"]["shm"] > 0 and m["rows_dropped"] > 0
    assert sum(t["rows"] for t in m["tiers"].values()) == len(cache.rows())


def test_eviction_follows_the_score(make_cache, root, blob):
    cache = make_cache(ram_bytes=rows_of(root, 3))
    keys = [cache.save(root, tokens(i), blob(i), "cold", sync=True) for i in range(3)]
    for i, loads in ((0, 3), (1, 1)):
        for _ in range(loads):
            assert cache.load(cache.lookup(root, tokens(i))) is not None
    cache.save(root, tokens(3), blob(3), "cold", sync=True)
    left = {r.key for r in cache.rows()}
    assert keys[2].hex() not in left  # never hit: lowest score
    assert {keys[0].hex(), keys[1].hex()} <= left
    assert cache.metrics()["rows_dropped"] == 1


def test_a_pinned_row_is_not_evicted(make_cache, root, blob):
    cache = make_cache(ram_bytes=rows_of(root, 3))
    first = cache.save(root, tokens(0), blob(0), "cold", sync=True)
    cache._index.get(first).pins += 1  # a reader is loading it
    for i in range(1, 6):
        cache.save(root, tokens(i), blob(i), "cold", sync=True)
    assert first.hex() in {r.key for r in cache.rows()}
    cache._index.get(first).pins -= 1
    for i in range(6, 9):
        cache.save(root, tokens(i), blob(i), "cold", sync=True)
    assert first.hex() not in {r.key for r in cache.rows()}


def test_a_row_too_big_for_ram_goes_to_the_next_tier(make_cache, root, blob):
    cache = make_cache(ram_bytes=rows_of(root, 1), disk=True)
    cache.save(root, tokens(0), blob(0, 5000), "cold", sync=True)
    assert [r.tier for r in cache.rows()] == ["disk"]


def test_evicted_rows_are_demoted_down_the_tiers(make_cache, root, blob):
    cache = make_cache(ram_bytes=rows_of(root, 1), shm=True, shm_bytes=rows_of(root, 1), disk=True)
    for i in range(3):
        cache.save(root, tokens(i), blob(i), "cold", sync=True)
    assert {r.tier for r in cache.rows()} == {"ram", "shm", "disk"}
    by_tier = {r.tier: r.key for r in cache.rows()}
    assert by_tier["disk"] == cache.lookup(root, tokens(0)).key.hex()  # the oldest went furthest
    assert cache.load(cache.lookup(root, tokens(0))) == blob(0)


def test_a_demoted_cold_row_does_not_push_a_popular_row_off_the_last_tier(make_cache, root, blob):
    cache = make_cache(ram_bytes=rows_of(root, 1), disk=True, disk_bytes=rows_of(root, 1))
    popular = cache.save(root, tokens(0), blob(0), "cold", sync=True)
    for _ in range(5):
        cache.load(cache.lookup(root, tokens(0)))
    cache.save(root, tokens(1), blob(1), "cold", sync=True)  # pushes `popular` to disk
    assert {r.key: r.tier for r in cache.rows()}[popular.hex()] == "disk"
    cache.save(root, tokens(2), blob(2), "cold", sync=True)  # row 1 (never hit) leaves RAM
    tiers = {r.key: r.tier for r in cache.rows()}
    assert tiers[popular.hex()] == "disk" and len(tiers) == 2
    assert cache.metrics()["rows_dropped"] == 1


def test_close_demotes_ram_rows_so_they_survive_a_restart(make_cache, root, blob):
    cache = make_cache(disk=True)
    key = cache.save(root, tokens(0), blob(0), "finish", sync=True)
    assert [r.tier for r in cache.rows()] == ["ram"]
    cache.close(timeout=5)
    again = make_cache(disk=True)
    assert [(r.key, r.tier) for r in again.rows()] == [(key.hex(), "disk")]


def test_a_row_demoted_while_being_loaded_is_followed(make_cache, root, blob, monkeypatch):
    cache = make_cache(disk=True)
    cache.save(root, tokens(0), blob(0), "cold", sync=True)
    hit = cache.lookup(root, tokens(0))
    ram = cache._stack.tier("ram")
    real_get = ram.get

    def racing_get(key):
        monkeypatch.setattr(ram, "get", real_get)  # race once
        with cache._stack.lock:  # a writer demotes the row between our pin and our read
            cache._stack.evict(key, ram, cache._stack.below("ram"))
        return real_get(key)

    monkeypatch.setattr(ram, "get", racing_get)
    assert hit.tier == "ram"
    assert cache.load(hit) == blob(0)
    assert cache.metrics()["hits_by_tier"] == {"disk": 1}
