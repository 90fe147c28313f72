"""Shutting down :class:`~kvllama.kvcache.cache.KvCache`: drain the writers, persist RAM rows, close tiers.

Kept apart from the facade because closing is its own ordered sequence with
a deadline: stop the pressure watcher, drain (or abandon, counted) the
writer pool, then demote the best RAM rows first to the tier below so they
survive a restart, stopping when the deadline passes.
"""

from __future__ import annotations

import threading
import time

from kvllama.kvcache.config import CacheConfig
from kvllama.kvcache.eviction import EvictionPolicy
from kvllama.kvcache.index import Index
from kvllama.kvcache.metrics import Metrics
from kvllama.kvcache.pressure import MemoryWatcher
from kvllama.kvcache.store import TierStack
from kvllama.kvcache.writer import WriterPool


class CacheCloser:
    """The closing half of KvCache: ``close()`` and the RAM persistence it does by default."""

    # Set by KvCache.__init__.
    config: CacheConfig
    _mu: threading.Lock
    _index: Index
    _metrics: Metrics
    _policy: EvictionPolicy
    _stack: TierStack
    _pool: WriterPool
    _watcher: MemoryWatcher
    _closed: bool

    def close(self, timeout: float | None = None) -> None:
        """Drain the writer pool, then (by default) demote RAM rows so they survive a restart."""
        if self._closed:
            return
        self._closed = True
        deadline = None if timeout is None else time.monotonic() + timeout
        self._watcher.close()
        abandoned = self._pool.close(timeout)
        if abandoned:
            self._metrics.inc("saves_dropped", abandoned)
        if self.config.persist_ram_on_close:
            self._persist_ram(deadline)
        with self._mu:
            for entry in self._index.entries():
                self._index.remove(entry.key)
        for t in self._stack.tiers:
            t.close()

    def _persist_ram(self, deadline: float | None) -> None:
        tiers = self._stack.tiers
        if not tiers or tiers[0].persistent:
            return
        ram, below = tiers[0], self._stack.below(tiers[0].name)
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not below or not self._stack.lock.acquire(timeout=-1 if remaining is None else remaining):
            return
        try:
            with self._mu:
                best_first = self._policy.order(self._index.entries(ram.name), time.time())[::-1]
            for entry in best_first:
                if deadline is not None and time.monotonic() > deadline:
                    break
                self._stack.evict(entry.key, ram, below)
        finally:
            self._stack.lock.release()
