"""Cache integrity: odd files in tier directories, refused restores, empty blobs, bounded roots."""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
from array import array
from pathlib import Path

import pytest

from kvllama.kvcache import KvCache
from kvllama.kvcache import rowformat as rowformat_module
from kvllama.kvcache.tiers import files as files_module
from kvllama.kvcache.tiers import publish as publish_module
from kvllama.kvcache.writer import SaveJob, WriterPool

TOKENS = list(range(700, 748))


def start_in_thread(make) -> KvCache:
    """Build a cache in a thread and fail (instead of hanging the suite) if start-up blocks."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["cache"] = make()
        except BaseException as exc:  # re-raised below, in the test thread
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "cache start-up blocked (opened a FIFO?)"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["cache"]  # type: ignore[return-value]


# --- things in a tier directory that are not row files ------------------------------------


def plant_odd_entries(directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    odd = {name: directory / f"{name}.kvr" for name in ("dir", "fifo", "sock", "loop")}
    odd["dir"].mkdir()
    (odd["dir"] / "inside").write_bytes(b"keep me")
    os.mkfifo(odd["fifo"])
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(odd["sock"]))
    sock.close()
    odd["loop"].symlink_to(odd["loop"].name)  # a symlink to itself: ELOOP
    odd["temp_dir"] = directory / f".{'e' * 32}.1.abcd.tmp"  # a directory named like a temporary
    odd["temp_dir"].mkdir()
    return odd


@pytest.mark.parametrize("read_only", [False, True])
def test_directories_fifos_sockets_and_symlink_loops_are_skipped_not_opened(
        make_cache, root, blob, dirs, caplog, read_only):
    first = make_cache(ram_bytes=0, disk=True)
    key = first.save(root, TOKENS, blob(1), "cold", sync=True)
    assert key is not None
    first.close()
    odd = plant_odd_entries(dirs["disk"])
    with caplog.at_level(logging.WARNING, logger="kvllama.kvcache"):
        cache = start_in_thread(lambda: make_cache(ram_bytes=0, disk=True, read_only=read_only))
    assert [r.key for r in cache.rows()] == [key.hex()]  # the real row is adopted
    assert cache.metrics()["files_skipped"] == {"disk": 4}
    assert cache.metrics()["corrupt_rows"] == {}
    assert all(path.exists() or path.is_symlink() for path in odd.values())  # nothing of theirs deleted
    assert (odd["dir"] / "inside").read_bytes() == b"keep me"
    warned = " ".join(r.getMessage() for r in caplog.records)
    for kind in ("fifo", "directory", "socket", "symlink"):
        assert f"not a regular file ({kind})" in warned
    hit = cache.lookup(root, TOKENS)
    assert hit is not None and cache.load(hit) == blob(1)
    assert cache.verify() == {"disk": {"ok": 1, "corrupt": 0}}


def test_an_unreadable_row_file_is_skipped_with_a_warning_and_kept(make_cache, root, blob, dirs,
                                                                   monkeypatch, caplog):
    first = make_cache(ram_bytes=0, disk=True)
    key = first.save(root, TOKENS, blob(1), "cold", sync=True)
    assert key is not None
    first.close()
    path = dirs["disk"] / f"{key.hex()}.kvr"
    real_open = os.open

    def deny(p, flags, *args):  # the tests run as root, so chmod 000 would not stop a read
        if Path(p) == path:
            raise PermissionError(errno.EACCES, "Permission denied", str(p))
        return real_open(p, flags, *args)

    monkeypatch.setattr(files_module.os, "open", deny)
    with caplog.at_level(logging.WARNING, logger="kvllama.kvcache"):
        cache = make_cache(ram_bytes=0, disk=True)
    assert cache.rows() == [] and cache.metrics()["files_skipped"] == {"disk": 1}
    assert path.exists() and "Permission denied" in caplog.text


def test_a_row_replaced_by_a_directory_while_running_is_a_miss_not_a_crash(make_cache, root, blob, dirs):
    cache = make_cache(ram_bytes=0, disk=True)
    key = cache.save(root, TOKENS, blob(1), "cold", sync=True)
    assert key is not None
    path = dirs["disk"] / f"{key.hex()}.kvr"
    path.unlink()
    path.mkdir()
    hit = cache.lookup(root, TOKENS)
    assert hit is not None and cache.load(hit) is None
    assert cache.metrics()["load_misses"] == 1 and path.is_dir()
    assert cache.lookup(root, TOKENS) is None  # forgotten


def test_a_fifo_where_a_row_was_does_not_block_a_load(make_cache, root, blob, dirs):
    cache = make_cache(ram_bytes=0, disk=True)
    key = cache.save(root, TOKENS, blob(1), "cold", sync=True)
    assert key is not None
    path = dirs["disk"] / f"{key.hex()}.kvr"
    path.unlink()
    os.mkfifo(path)
    hit = cache.lookup(root, TOKENS)
    assert hit is not None
    done = threading.Event()
    result: list[object] = []
    threading.Thread(target=lambda: (result.append(cache.load(hit)), done.set()), daemon=True).start()
    assert done.wait(20), "load() blocked opening a FIFO"
    assert result == [None]


def test_sweeping_temporaries_only_deletes_dead_writers_regular_files(dirs):
    directory = dirs["disk"]
    directory.mkdir()
    dead = directory / f".{'a' * 32}.999999999.0001.tmp"
    dead.write_bytes(b"partial")
    mine = directory / publish_module.temp_name("b" * 32)
    mine.write_bytes(b"being written by a live writer in this process")
    os.rename(mine, directory / mine.name.replace(f".{os.getpid()}.", f".{os.getppid()}."))
    (directory / f".{'c' * 32}.999999999.0002.tmp").mkdir()
    assert publish_module.sweep_temps(directory) == 1
    assert not dead.exists() and len(list(directory.iterdir())) == 2


# --- a restore llama.cpp refuses -----------------------------------------------------------


def test_a_rejected_restore_is_a_miss_and_the_row_is_forgotten_in_every_tier(make_cache, root, blob, dirs):
    cache = make_cache(ram_bytes=0, shm=True, disk=True)
    key = cache.save(root, TOKENS, blob(1), "cold", sync=True)
    assert key is not None
    shm_copy = dirs["shm"] / f"{key.hex()}.kvr"
    disk_copy = dirs["disk"] / f"{key.hex()}.kvr"
    disk_copy.write_bytes(shm_copy.read_bytes())  # as a crash mid-demotion leaves it
    hit = cache.lookup(root, TOKENS)
    assert hit is not None and cache.load(hit) == blob(1)
    before = cache.metrics()
    assert before["hits"]["exact"] == 1 and before["hits_by_tier"] == {"shm": 1}
    cache.reject(hit, "n_stream mismatch")
    m = cache.metrics()
    assert m["hits"]["exact"] == 0 and m["hits_by_source"]["exact_key"] == 0
    assert m["hits_by_tier"] == {"shm": 0}
    assert m["misses"] == before["misses"] + 1 and m["restore_failures"] == 1
    assert not shm_copy.exists() and not disk_copy.exists()
    assert cache.lookup(root, TOKENS) is None and cache.rows() == []


def test_rejecting_a_load_that_already_missed_counts_no_second_miss(make_cache, root, blob):
    cache = make_cache()
    key = cache.save(root, TOKENS, blob(1), "cold", sync=True)
    assert key is not None
    hit = cache.lookup(root, TOKENS)
    assert hit is not None
    cache.clear()
    assert cache.load(hit) is None
    misses = cache.metrics()["misses"]
    cache.reject(hit)
    assert cache.metrics()["misses"] == misses and cache.metrics()["hits"]["exact"] == 0


# --- empty state blobs ----------------------------------------------------------------------


@pytest.mark.parametrize("sync", [True, False])
def test_empty_and_too_short_blobs_are_never_saved(make_cache, root, sync):
    cache = make_cache()
    minimum = rowformat_module.MIN_BLOB_BYTES
    assert cache.save(root, TOKENS, b"", "cold", sync=sync) is None
    assert cache.save(root, TOKENS, b"\0" * (minimum - 1), "finish", sync=sync) is None
    m = cache.metrics()
    assert m["saves_refused"] == 2 and m["pending_saves"] == 0 and cache.rows() == []
    assert cache.save(root, TOKENS, b"\1" * minimum, "cold", sync=True) is not None


def test_a_stored_row_with_a_too_short_blob_is_corrupt(make_cache, root, dirs, monkeypatch):
    monkeypatch.setattr(rowformat_module, "MIN_BLOB_BYTES", 0)
    monkeypatch.setattr("kvllama.kvcache.cache.MIN_BLOB_BYTES", 0)
    writer = make_cache(ram_bytes=0, disk=True)
    assert writer.save(root, TOKENS, b"", "cold", sync=True) is not None
    writer.close()
    monkeypatch.undo()
    cache = make_cache(ram_bytes=0, disk=True)
    assert cache.rows() == [] and cache.metrics()["corrupt_rows"] == {"disk": 1}
    assert list(dirs["disk"].iterdir()) == []


# --- key roots are bounded ------------------------------------------------------------------


def test_roots_are_an_lru_that_keeps_roots_with_live_rows(make_cache, make_root, blob):
    cache = make_cache(max_roots=4)
    with_rows = make_root(cache_salt="kept")
    assert cache.save(with_rows, TOKENS, blob(1), "cold", sync=True) is not None
    for i in range(50):
        cache.register_root(make_root(cache_salt=f"t{i}"))
        assert cache.known_roots() <= 4
    assert with_rows.digest in cache._roots  # the oldest, but it has a row
    hit = cache.lookup(with_rows, TOKENS)
    assert hit is not None and cache.load(hit) == blob(1)
    info = cache.inspect(hit.key.hex())
    assert info is not None and info.key_inputs is not None and info.key_inputs["format"] == 2


def test_a_forgotten_root_still_describes_new_rows(make_cache, make_root, blob):
    cache = make_cache(max_roots=1)
    a, b = make_root(cache_salt="a"), make_root(cache_salt="b")
    cache.register_root(a)
    cache.register_root(b)  # a is dropped
    key = cache.save(a, TOKENS, blob(1), "cold", sync=True)
    assert key is not None
    info = cache.inspect(key.hex())
    assert info is not None and info.key_inputs is not None
    assert info.key_inputs["model_fingerprint"] == a.model_fingerprint


# --- waiting for saves on the pool's own signal ---------------------------------------------


def test_flush_waits_for_every_pending_save_and_times_out_while_one_is_stuck():
    release = threading.Event()
    done: list[bytes] = []

    def work(job: SaveJob) -> None:
        release.wait(10)
        done.append(job.key)

    pool = WriterPool(work, threads=1, capacity=4)
    for i in range(3):
        job = SaveJob(bytes([i]) * 16, b"r", array("i"), b"", rowformat_module.SaveReason.COLD, "{}", 0.0)
        assert pool.submit(job).value == "queued"
    assert pool.flush(0.05) is False and done == []
    release.set()
    assert pool.flush(10) is True and len(done) == 3 and pool.pending_keys() == frozenset()
    assert pool.flush(0) is True
    pool.close(5)
