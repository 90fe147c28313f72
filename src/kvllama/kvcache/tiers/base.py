"""The small protocol every tier speaks, so the stack treats RAM, shm and disk alike.

Tiers only store: they do not pick victims, count hits or decide where a row
goes. The :class:`~kvllama.kvcache.store.TierStack` does, under one lock, so
budgets are checked in one place. A tier still refuses a put that would take
it over budget (:class:`TierFullError`): the invariant "a tier never exceeds
its budget" holds even if the stack has a bug.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Protocol

from kvllama.kvcache.keys import CacheKey
from kvllama.kvcache.rowformat import Row, RowMeta


class TierFullError(OSError):
    """A put that would exceed the tier's budget (an ENOSPC of our own)."""

    def __init__(self, tier: str, need: int, free: int) -> None:
        super().__init__(errno.ENOSPC, f"tier {tier!r} needs {need} bytes but has {free} free")


@dataclass
class ScanResult:
    """What a file tier found on start."""

    metas: list[RowMeta] = field(default_factory=list)
    corrupt: int = 0  # corrupt or truncated rows, deleted (read-only: only counted)
    corrupt_names: list[str] = field(default_factory=list)  # their file names
    stale: int = 0  # valid rows saved with another block size (unreachable), deleted (ditto)
    temps: int = 0  # leftover temporaries of dead writers, deleted (never by a read-only scan)
    skipped: int = 0  # not regular files, or unreadable: left alone, with a warning


class Tier(Protocol):
    """What the stack may ask of a tier: capabilities are attributes, never the tier's class."""

    name: str
    budget: int
    memory_backed: bool  # True if its bytes live in RAM (shedding it relieves memory pressure)
    # True if its rows outlive the process (files): they are adopted on start by
    # scan(), and the RAM tier is persisted into such a tier on close.
    persistent: bool
    # True if put() writes the packed byte form (Row.parts): the stack packs the
    # row first, timed as "pack", so the write itself is only I/O.
    stores_packed: bool

    @property
    def used_bytes(self) -> int: ...

    @property
    def n_rows(self) -> int: ...

    def get(self, key: CacheKey) -> Row | None:
        """The verified row, None if absent; raises CorruptRowError if it fails a check."""
        ...

    def put(self, row: Row) -> None:
        """Store (or replace) a row; raises OSError (TierFullError, ENOSPC, ...) on failure."""
        ...

    def contains(self, key: CacheKey) -> bool: ...

    def remove(self, key: CacheKey) -> bool: ...

    def row_keys(self) -> list[CacheKey]: ...

    def read_meta(self, key: CacheKey) -> RowMeta | None: ...

    def touch(self, key: CacheKey, hits: int, last_used: float) -> None:
        """Persist popularity (file tiers rewrite the stats block in place)."""
        ...

    def scan(self) -> ScanResult:
        """Adopt the rows a previous process left (an empty result for a non-persistent tier)."""
        ...

    def close(self) -> None: ...
