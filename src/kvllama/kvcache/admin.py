"""The admin side of :class:`~kvllama.kvcache.cache.KvCache`: metrics, rows, inspect, verify, clear.

Kept apart from the facade because none of it is on the decode path: these
are the calls behind ``kvllama cache`` and the server's metrics, plus the
memory-pressure hooks. Looking at a cache never changes it; only
``verify(repair=True)`` and ``clear()`` delete rows, and both refuse on a
cache opened read-only.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from kvllama.errors import InvalidOptionError
from kvllama.kvcache.config import CacheConfig
from kvllama.kvcache.errors import CorruptRowError, ReadOnlyCacheError
from kvllama.kvcache.index import Entry, Index
from kvllama.kvcache.keys import CacheKey
from kvllama.kvcache.metrics import Metrics
from kvllama.kvcache.pressure import MemoryWatcher
from kvllama.kvcache.records import RowInfo
from kvllama.kvcache.store import TierStack
from kvllama.kvcache.tiers import Tier
from kvllama.kvcache.writer import WriterPool


class CacheAdmin:
    """The admin half of KvCache: report on rows and tiers, verify them, shed or clear them."""

    # Set by KvCache.__init__.
    config: CacheConfig
    _mu: threading.Lock
    _index: Index
    _metrics: Metrics
    _stack: TierStack
    _pool: WriterPool
    _watcher: MemoryWatcher
    # From RowReader.
    _forget: Callable[[CacheKey, Tier], None]
    _forget_corrupt: Callable[[CacheKey, Tier, Exception], None]

    def check_memory_pressure(self) -> int:
        """Run one memory-pressure check now; the bytes shed (0 below the high-water mark)."""
        return self._watcher.check_once()

    def _shed(self, nbytes: int) -> int:
        with self._stack.lock:
            return self._stack.shed(nbytes)

    def metrics(self) -> dict[str, Any]:
        snap = self._metrics.snapshot()
        snap["tiers"] = {
            t.name: {"bytes": t.used_bytes, "rows": t.n_rows, "budget": t.budget} for t in self._stack.tiers
        }
        snap["pending_saves"] = len(self._pool.pending_keys())
        return snap

    def rows(self) -> list[RowInfo]:
        now = time.time()
        with self._mu:
            entries = self._index.entries()
        return [row_info(e, now) for e in sorted(entries, key=lambda e: -e.last_used)]

    def inspect(self, key_hex: str) -> RowInfo | None:
        """One row with its key inputs (the KeyRoot description), or None if unknown."""
        try:
            key = CacheKey(bytes.fromhex(key_hex))
        except ValueError:
            return None
        with self._mu:
            entry = self._index.get(key)
        if entry is None:
            return None
        meta = self._stack.tier(entry.tier).read_meta(key)
        inputs = json.loads(meta.inputs) if meta is not None else None
        return row_info(entry, time.time(), inputs)

    def verify(self, *, repair: bool = False) -> dict[str, dict[str, int]]:
        """Read and check every row in full. ``{tier: {"ok": n, "corrupt": n}}``.

        Only reports by default: looking at a cache must not change it.
        ``repair=True`` deletes the corrupt rows (counted in ``corrupt_rows``).
        Rows the start-up scan already rejected are not listed here (see
        ``metrics()["corrupt_rows"]``); a file that cannot be read counts as corrupt.
        """
        if repair and self.config.read_only:
            raise ReadOnlyCacheError("verify(repair=True) needs a cache opened writable")
        report = {t.name: {"ok": 0, "corrupt": 0} for t in self._stack.tiers}
        for tier in self._stack.tiers:
            for key in tier.row_keys():
                try:
                    row = tier.get(key)
                except (CorruptRowError, OSError) as exc:
                    report[tier.name]["corrupt"] += 1
                    if repair:
                        self._forget_corrupt(key, tier, exc)
                    continue
                if row is not None:
                    report[tier.name]["ok"] += 1
        return report

    def clear(self, tier: str | None = None) -> int:
        """Delete every row (of one tier, if named); the number deleted."""
        if self.config.read_only:
            raise ReadOnlyCacheError("clear() needs a cache opened writable")
        names = [t.name for t in self._stack.tiers]
        if tier is not None and tier not in names:
            raise InvalidOptionError("tier", tier, " | ".join(names) or "no tier is enabled")
        removed = 0
        with self._stack.lock:
            for t in self._stack.tiers:
                if tier in (None, t.name):
                    for key in t.row_keys():
                        self._forget(key, t)
                        removed += 1
        return removed


def row_info(entry: Entry, now: float, key_inputs: dict[str, Any] | None = None) -> RowInfo:
    return RowInfo(
        tier=entry.tier, key=entry.key.hex(), n_tokens=entry.n_tokens, size=entry.size, hits=entry.hits,
        age=max(0.0, now - entry.created), idle=max(0.0, now - entry.last_used),
        reason=entry.reason.label, created=entry.created, last_used=entry.last_used, key_inputs=key_inputs,
    )
