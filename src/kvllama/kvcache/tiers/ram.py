"""The RAM tier: rows as Python objects in a dict (no packing, no checksum work)."""

from __future__ import annotations

import threading

from kvllama.kvcache.keys import CacheKey
from kvllama.kvcache.rowformat import Row, RowMeta
from kvllama.kvcache.tiers.base import ScanResult, TierFullError


class RamTier:
    memory_backed = True
    persistent = False  # rows die with the process
    stores_packed = False  # keeps Row objects as they are

    def __init__(self, budget: int, name: str = "ram") -> None:
        self.name = name
        self.budget = budget
        self._rows: dict[CacheKey, Row] = {}
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used_bytes(self) -> int:
        return self._used

    @property
    def n_rows(self) -> int:
        return len(self._rows)

    def get(self, key: CacheKey) -> Row | None:
        return self._rows.get(key)

    def put(self, row: Row) -> None:
        with self._lock:
            old = self._rows.get(row.key)
            free = self.budget - self._used + (old.size if old else 0)
            if row.size > free:
                raise TierFullError(self.name, row.size, free)
            self._rows[row.key] = row
            self._used += row.size - (old.size if old else 0)

    def contains(self, key: CacheKey) -> bool:
        return key in self._rows

    def remove(self, key: CacheKey) -> bool:
        with self._lock:
            row = self._rows.pop(key, None)
            if row is not None:
                self._used -= row.size
            return row is not None

    def row_keys(self) -> list[CacheKey]:
        return list(self._rows)

    def read_meta(self, key: CacheKey) -> RowMeta | None:
        row = self._rows.get(key)
        return row.meta if row else None

    def scan(self) -> ScanResult:
        """Nothing survives a process in RAM, so there is nothing to adopt."""
        return ScanResult()

    def touch(self, key: CacheKey, hits: int, last_used: float) -> None:
        """Nothing to persist: the index holds the live counters of RAM rows."""

    def close(self) -> None:
        with self._lock:
            self._rows.clear()
            self._used = 0
