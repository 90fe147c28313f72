"""Fixtures for the KV cache unit tests: key roots, blobs and caches in tmp dirs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kvllama.kvcache import CacheConfig, KeyRoot, KvCache


def _root(**overrides: Any) -> KeyRoot:
    fields: dict[str, Any] = {
        "model_fingerprint": "sha256:0123abcd",
        "type_k": "f16",
        "type_v": "f16",
        "flash_attn": False,
        "kv_unified": False,
        "n_seq_max": 4,
        "state_version": "llama-cpp-python 0.3.36",
    }
    fields.update(overrides)
    return KeyRoot(**fields)


@pytest.fixture
def make_root() -> Callable[..., KeyRoot]:
    return _root


@pytest.fixture
def root() -> KeyRoot:
    return _root()


def blob_of(seed: int, size: int = 2000) -> bytes:
    return bytes((seed + i) % 251 for i in range(size))


@pytest.fixture
def blob() -> Callable[..., bytes]:
    return blob_of


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    return {"shm": tmp_path / "shm", "disk": tmp_path / "disk"}


@pytest.fixture
def make_cache(dirs: dict[str, Path]) -> Iterator[Callable[..., KvCache]]:
    """Build caches (RAM only unless told otherwise); all are closed after the test."""
    caches: list[KvCache] = []

    def make(**overrides: Any) -> KvCache:
        fields: dict[str, Any] = {
            "ram_bytes": 1 << 20, "shm_dir": None, "shm_bytes": 0, "disk_dir": None, "disk_bytes": 0,
            "block_size": 16, "writer_threads": 1, "writer_queue": 4,
        }
        if overrides.pop("shm", False):
            fields.update(shm_dir=dirs["shm"], shm_bytes=1 << 20)
        if overrides.pop("disk", False):
            fields.update(disk_dir=dirs["disk"], disk_bytes=1 << 20)
        cache_kwargs = overrides.pop("cache_kwargs", {})
        fields.update(overrides)
        cache = KvCache(CacheConfig(**fields), **cache_kwargs)
        caches.append(cache)
        return cache

    yield make
    for cache in caches:
        cache.close(timeout=5)
