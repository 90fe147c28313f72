"""The writer pool and the memory-pressure watcher."""

from __future__ import annotations

import threading
import time
from array import array

from kvllama.kvcache import CacheKey, SaveReason
from kvllama.kvcache.pressure import MemoryWatcher, read_meminfo
from kvllama.kvcache.rowformat import packed_size
from kvllama.kvcache.writer import SaveJob, Submitted, WriterPool


def job(i: int) -> SaveJob:
    return SaveJob(CacheKey(bytes([i]) * 16), b"r", array("i", [i]), b"blob", SaveReason.COLD, "{}", 0.0)


def test_writer_pool_refuses_when_full_and_reports_pending_keys():
    gate, started = threading.Event(), threading.Event()
    done: list[int] = []

    def work(j: SaveJob) -> None:
        started.set()
        gate.wait(5)
        done.append(j.tokens[0])

    pool = WriterPool(work, threads=1, capacity=2)
    assert pool.submit(job(1)) is Submitted.QUEUED
    assert started.wait(5)
    assert [pool.submit(job(i)) for i in (2, 3, 4)] == [Submitted.QUEUED, Submitted.QUEUED, Submitted.FULL]
    assert pool.submit(job(2)) is Submitted.DUPLICATE
    assert pool.pending_keys() == {job(i).key for i in (1, 2, 3)}
    assert not pool.wait(job(3).key, 0.01)
    gate.set()
    assert pool.wait(job(3).key, 5) and pool.pending_keys() == frozenset()
    assert pool.close(5) == 0 and done == [1, 2, 3]
    assert pool.submit(job(5)) is Submitted.CLOSED


def test_writer_pool_close_abandons_what_it_cannot_finish_in_time():
    gate = threading.Event()
    pool = WriterPool(lambda j: gate.wait(5), threads=1, capacity=4)
    for i in range(3):
        pool.submit(job(i))
    time.sleep(0.02)
    assert pool.close(0.05) == 2  # one was running, two never started
    gate.set()


def test_writer_pool_survives_a_failing_job(caplog):
    def work(j: SaveJob) -> None:
        if j.tokens[0] == 1:
            raise RuntimeError("boom")

    pool = WriterPool(work, threads=1, capacity=4)
    pool.submit(job(1))
    pool.submit(job(2))
    assert pool.wait(job(2).key, 5)
    assert pool.close(5) == 0
    assert "boom" in caplog.text


def test_read_meminfo_parses_available_and_total(tmp_path):
    path = tmp_path / "meminfo"
    path.write_text("MemTotal:       16000000 kB\nMemFree:  100 kB\nMemAvailable:    4000000 kB\n")
    assert read_meminfo(str(path)) == (4_000_000 * 1024, 16_000_000 * 1024)
    available, total = read_meminfo()
    assert 0 < available <= total


def test_watcher_sheds_only_above_the_high_water_mark():
    asked: list[int] = []
    reading = [(50, 100)]
    watcher = MemoryWatcher(lambda n: asked.append(n) or n, high=0.9, low=0.8, interval=1,
                            read=lambda: reading[0])
    assert watcher.check_once() == 0 and asked == []
    reading[0] = (5, 100)  # 95 % used: back down to 80 % means 15 bytes
    assert watcher.check_once() == 15 and asked == [15]


def tokens(i: int) -> list[int]:
    return [i * 100 + j for j in range(20)]


def test_memory_pressure_demotes_ram_and_shm_rows_straight_to_disk(make_cache, root, blob):
    size = packed_size(20, len(root.describe()), 2000)
    total = 10 * size
    reading = [(total // 2, total)]
    cache = make_cache(shm=True, disk=True, cache_kwargs={"memory_reader": lambda: reading[0]})
    for i in range(4):
        cache.save(root, tokens(i), blob(i), "cold", sync=True)
    cache.load(cache.lookup(root, tokens(0)))  # the popular one stays
    assert cache.check_memory_pressure() == 0
    # 95 % used is 1.5 rows above the low-water mark: the two lowest-score RAM rows go to disk.
    reading[0] = (total // 20, total)
    assert cache.check_memory_pressure() == 2 * size
    tiers = {r.key: r.tier for r in cache.rows()}
    assert sorted(tiers.values()) == ["disk", "disk", "ram", "ram"]
    assert tiers[cache.lookup(root, tokens(0)).key.hex()] == "ram"
    m = cache.metrics()
    assert m["evictions"] == {"ram": 2} and m["demotions"] == {"disk": 2}


def test_the_watcher_thread_runs_when_enabled(make_cache, root, blob):
    reading = [(5, 100)]
    cache = make_cache(pressure_watch=True, pressure_interval=0.01,
                       cache_kwargs={"memory_reader": lambda: reading[0]})
    cache.save(root, tokens(1), blob(1), "cold", sync=True)
    deadline = time.monotonic() + 5
    while cache.rows() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cache.rows() == []  # no lower tier: the row was dropped
    assert cache.metrics()["rows_dropped"] == 1
