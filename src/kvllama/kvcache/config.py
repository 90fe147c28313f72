"""Configuration of the cache: tier budgets and directories, writer pool, policy knobs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from kvllama.errors import InvalidOptionError

GiB = 1 << 30


def default_shm_dir() -> str | None:
    """``$KVLLAMA_SHM_DIR``, else ``/dev/shm/kvllama-<uid>`` where /dev/shm exists, else None."""
    override = os.environ.get("KVLLAMA_SHM_DIR")
    if override:
        return override
    return f"/dev/shm/kvllama-{os.geteuid()}" if os.path.isdir("/dev/shm") else None


def default_disk_dir() -> str:
    """``$XDG_CACHE_HOME/kvllama/kv`` (``~/.cache/kvllama/kv``), for callers that want disk rows."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return os.path.join(base, "kvllama", "kv")


@dataclass(frozen=True)
class CacheConfig:
    """A tier with budget 0 or no directory is disabled."""

    ram_bytes: int = 1 * GiB
    shm_dir: str | Path | None = field(default_factory=default_shm_dir)
    shm_bytes: int = 1 * GiB
    disk_dir: str | Path | None = None  # e.g. default_disk_dir(); rows here survive reboots
    disk_bytes: int = 8 * GiB
    block_size: int = 64  # key chaining granularity (tokens); part of every key
    writer_threads: int = 2
    writer_queue: int = 8  # pending async saves; beyond it saves are dropped, never waited for
    parent_wait: float = 0.5  # seconds lookup waits for an in-flight save of parent_key
    sync_timeout: float = 5.0  # default bound for sync=True saves (evict, shutdown)
    half_life: float = 3600.0  # seconds; eviction score decay (see eviction.py)
    demote: bool = True  # evicted rows move down a tier instead of being dropped
    persist_ram_on_close: bool = True  # close() demotes RAM rows so they survive a restart
    durable: bool = True  # fsync files and directories (off only for tests / throwaway caches)
    pressure_watch: bool = False  # memory-pressure watcher thread
    pressure_high: float = 0.90  # fraction of MemTotal in use that triggers shedding
    pressure_low: float = 0.80  # shed RAM and shm rows down to this fraction
    pressure_interval: float = 1.0  # seconds between readings
    # Key roots remembered (one per model and cache_salt): an LRU, so random salts cannot grow
    # memory without bound. A forgotten root costs nothing but recomputing its description.
    max_roots: int = 4096
    # Open the file tiers to look only: the start-up scan deletes nothing (corrupt rows, stale
    # rows and temporaries are counted and left), saves are refused, budgets are not enforced.
    # ``kvllama cache list/inspect/verify`` use it: reading a cache must never change it.
    read_only: bool = False

    def __post_init__(self) -> None:
        for name in ("ram_bytes", "shm_bytes", "disk_bytes"):
            if getattr(self, name) < 0:
                raise InvalidOptionError(name, getattr(self, name), "a byte count >= 0")
        if self.block_size < 1:
            raise InvalidOptionError("block_size", self.block_size, "a positive token count")
        if self.writer_threads < 1:
            raise InvalidOptionError("writer_threads", self.writer_threads, "at least 1")
        if self.writer_queue < 1:
            raise InvalidOptionError("writer_queue", self.writer_queue, "at least 1")
        if not 0.0 < self.pressure_low < self.pressure_high <= 1.0:
            raise InvalidOptionError(
                "pressure_low/pressure_high",
                (self.pressure_low, self.pressure_high),
                "0 < pressure_low < pressure_high <= 1",
            )
        if self.max_roots < 1:
            raise InvalidOptionError("max_roots", self.max_roots, "at least 1")
        if self.half_life <= 0:
            raise InvalidOptionError("half_life", self.half_life, "a positive number of seconds")
