"""File tiers: crash-safe publish, start-up adoption, corrupt rows, full disks."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import uuid
from pathlib import Path

import pytest

from kvllama.kvcache import UnsafeCacheDirError, default_shm_dir
from kvllama.kvcache.tiers import FileTier
from kvllama.kvcache.tiers import files as files_module
from kvllama.kvcache.tiers import publish as publish_module

TOKENS = list(range(500, 540))


def row_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def saved_row(cache, root, blob, tokens=TOKENS):
    key = cache.save(root, tokens, blob(3), "finish", sync=True)
    assert key is not None
    return key


def test_rows_are_private_files_named_after_their_key(make_cache, root, blob, dirs):
    cache = make_cache(ram_bytes=0, disk=True)
    key = saved_row(cache, root, blob)
    assert row_files(dirs["disk"]) == [f"{key.hex()}.kvr"]
    assert stat.S_IMODE(os.stat(dirs["disk"]).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(dirs["disk"] / f"{key.hex()}.kvr").st_mode) == 0o600
    hit = cache.lookup(root, TOKENS)
    assert hit is not None and hit.tier == "disk" and cache.load(hit) == blob(3)


def test_restart_adopts_valid_rows_and_their_hit_counts(make_cache, root, blob):
    first = make_cache(ram_bytes=0, disk=True)
    key = saved_row(first, root, blob)
    for _ in range(3):
        assert first.load(first.lookup(root, TOKENS)) == blob(3)
    first.close()
    second = make_cache(ram_bytes=0, disk=True)
    [info] = second.rows()
    assert (info.key, info.hits, info.tier, info.reason) == (key.hex(), 3, "disk", "finish")
    hit = second.lookup(root, [*TOKENS, 1, 2, 3])
    assert hit is not None and hit.kind == "partial" and second.load(hit) == blob(3)


def test_a_writer_killed_between_write_and_publish_leaves_no_visible_row(make_cache, root, blob, dirs):
    cache = make_cache(ram_bytes=0, disk=True)
    key = saved_row(cache, root, blob)
    tier = cache._stack.tier("disk")
    row = tier.get(key)
    cache.clear()
    # The write step of a save, then the writer "dies" before publishing.
    publish_module.write_temp(dirs["disk"], key.hex(), row.parts, durable=True)
    assert cache.lookup(root, TOKENS) is None
    assert not tier.contains(key)
    assert [name for name in row_files(dirs["disk"]) if name.endswith(".kvr")] == []
    restarted = make_cache(ram_bytes=0, disk=True)
    assert row_files(dirs["disk"]) == []
    assert restarted.metrics()["temps_removed"] == {"disk": 1}
    assert restarted.lookup(root, TOKENS) is None


def test_a_failed_publish_cleans_its_temporary(make_cache, root, blob, dirs, monkeypatch):
    cache = make_cache(ram_bytes=0, disk=True)

    def crash(*args, **kwargs):
        raise OSError(errno.EIO, "simulated crash while publishing")

    monkeypatch.setattr(files_module, "publish", crash)
    assert cache.save(root, TOKENS, blob(1), "cold", sync=True) is None
    assert row_files(dirs["disk"]) == []
    assert cache.metrics()["saves_failed"] == 1


def test_temporaries_of_a_live_writer_are_left_alone(tmp_path):
    tier = FileTier("disk", tmp_path, 1 << 20, 16, memory_backed=False)
    alive = tmp_path / f".{'ab' * 16}.{os.getppid()}.0000.tmp"
    dead = tmp_path / f".{'cd' * 16}.999999999.0000.tmp"
    alive.write_bytes(b"x")
    dead.write_bytes(b"x")
    assert tier.scan().temps == 1
    assert alive.exists() and not dead.exists()


def test_truncated_and_flipped_rows_are_rejected_counted_and_deleted_on_start(make_cache, root, blob, dirs):
    cache = make_cache(ram_bytes=0, disk=True)
    k1 = saved_row(cache, root, blob, TOKENS[:10])
    k2 = saved_row(cache, root, blob, TOKENS[:20])
    k3 = saved_row(cache, root, blob, TOKENS[:30])
    cache.close()
    p1, p2 = dirs["disk"] / f"{k1.hex()}.kvr", dirs["disk"] / f"{k2.hex()}.kvr"
    p1.write_bytes(p1.read_bytes()[:-10])  # truncated
    data = bytearray(p2.read_bytes())
    data[100] ^= 0x40  # a flipped byte in the tokens (caught by meta_crc)
    p2.write_bytes(bytes(data))
    restarted = make_cache(ram_bytes=0, disk=True)
    assert restarted.metrics()["corrupt_rows"] == {"disk": 2}
    assert row_files(dirs["disk"]) == [f"{k3.hex()}.kvr"]
    hit = restarted.lookup(root, TOKENS)
    assert hit is not None and hit.n_tokens == 30


def test_a_flipped_blob_byte_is_a_counted_miss_on_load_and_the_row_is_deleted(make_cache, root, blob, dirs):
    cache = make_cache(ram_bytes=0, disk=True)
    key = saved_row(cache, root, blob)
    path = dirs["disk"] / f"{key.hex()}.kvr"
    data = bytearray(path.read_bytes())
    data[-50] ^= 0x01
    path.write_bytes(bytes(data))
    hit = cache.lookup(root, TOKENS)
    assert hit is not None  # the index cannot know yet
    assert cache.load(hit) is None
    m = cache.metrics()
    assert m["corrupt_rows"] == {"disk": 1} and m["load_misses"] == 1 and m["hits"]["exact"] == 0
    assert not path.exists()
    assert cache.lookup(root, TOKENS) is None


def test_verify_reports_corrupt_rows_and_deletes_them_only_when_asked(make_cache, root, blob, dirs):
    cache = make_cache(disk=True, ram_bytes=0)
    key = saved_row(cache, root, blob, TOKENS[:10])
    saved_row(cache, root, blob, TOKENS[:20])
    path = dirs["disk"] / f"{key.hex()}.kvr"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x10
    path.write_bytes(bytes(data))
    assert cache.verify() == {"disk": {"ok": 1, "corrupt": 1}}
    assert path.exists() and len(cache.rows()) == 2  # a check is a read: nothing deleted
    assert cache.metrics()["corrupt_rows"] == {}
    assert cache.verify(repair=True) == {"disk": {"ok": 1, "corrupt": 1}}
    assert not path.exists() and len(cache.rows()) == 1
    assert cache.metrics()["corrupt_rows"] == {"disk": 1}
    assert cache.verify() == {"disk": {"ok": 1, "corrupt": 0}}


def test_enospc_is_a_counted_failed_save_with_no_visible_row(make_cache, root, blob, dirs, monkeypatch):
    cache = make_cache(ram_bytes=0, disk=True)

    def full(fd, buffers):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "writev", full)
    assert cache.save(root, TOKENS, blob(1), "cold", sync=True) is None
    key = cache.save(root, TOKENS, blob(1), "finish")  # async: queued, then fails on the writer
    assert key is not None
    assert cache.wait_saved(key, 5)
    m = cache.metrics()
    assert m["saves_failed"] == 2 and m["write_errors"] == {"disk": 2} and m["saves"]["finish"] == 0
    assert row_files(dirs["disk"]) == []
    assert cache.lookup(root, TOKENS) is None


def test_a_full_shm_falls_back_to_disk(make_cache, root, blob, dirs, monkeypatch):
    cache = make_cache(ram_bytes=0, shm=True, disk=True)
    real = files_module.write_temp

    def write_temp(directory, *args, **kwargs):
        if Path(directory) == dirs["shm"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(directory, *args, **kwargs)

    monkeypatch.setattr(files_module, "write_temp", write_temp)
    saved_row(cache, root, blob)
    assert [r.tier for r in cache.rows()] == ["disk"]
    assert cache.metrics()["write_errors"] == {"shm": 1}


def test_rows_of_another_block_size_are_stale_and_removed(make_cache, root, blob, dirs):
    saved_row(make_cache(ram_bytes=0, disk=True), root, blob)
    other = make_cache(ram_bytes=0, disk=True, block_size=32)
    assert other.metrics()["stale_rows"] == {"disk": 1}
    assert row_files(dirs["disk"]) == []


def test_a_symlinked_cache_dir_is_refused(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(UnsafeCacheDirError, match="not a directory owned"):
        FileTier("shm", tmp_path / "link", 1 << 20, 16, memory_backed=True)


@pytest.mark.skipif(default_shm_dir() is None, reason="no /dev/shm")
def test_the_default_shm_location_works(make_cache, root, blob):
    parent = Path(default_shm_dir())
    parent_existed = parent.exists()
    directory = parent / f"unit-test-{uuid.uuid4().hex}"
    try:
        cache = make_cache(ram_bytes=0, shm_dir=directory, shm_bytes=1 << 20)
        saved_row(cache, root, blob)
        assert cache.load(cache.lookup(root, TOKENS)) == blob(3)
        assert len(list(directory.glob("*.kvr"))) == 1
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        if not parent_existed:
            shutil.rmtree(parent, ignore_errors=True)
