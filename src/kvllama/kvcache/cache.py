"""The KV cache facade: lookup, load and save token-exact rows across RAM, shm and disk.

Threads: the decode thread calls :meth:`KvCache.lookup`, :meth:`KvCache.load`
and :meth:`KvCache.save`; a bounded writer pool writes; an optional watcher
sheds rows under memory pressure. Lookups read only the in-memory index
(under a lock held for microseconds); only ``load`` touches row data, and
tier mutations run under the stack's own lock, which the decode thread only
takes for ``sync=True`` saves (bounded by a timeout).

A row is served only for the exact token ids it was saved with: lookups
confirm candidates by comparing tokens, and ``load`` verifies the checksum
and compares the tokens read back, so a collision, a stale or a corrupt row
is a miss (counted), never wrong output. A row that passes every check but
that llama.cpp still refuses is handed back with :meth:`KvCache.reject`: a
miss too, and forgotten in every tier so it is not hit again.

The facade keeps construction and the save path here; the other halves live
beside it as mixins that :class:`KvCache` composes: key roots in
:mod:`~kvllama.kvcache.roots`, lookup/load/reject in
:mod:`~kvllama.kvcache.reads`, metrics/rows/inspect/verify/clear in
:mod:`~kvllama.kvcache.admin`, and close/persist in
:mod:`~kvllama.kvcache.closing`.
"""

from __future__ import annotations

import logging
import threading
import time
from array import array
from collections import OrderedDict
from collections.abc import Sequence

from kvllama.kvcache.admin import CacheAdmin
from kvllama.kvcache.closing import CacheCloser
from kvllama.kvcache.config import CacheConfig
from kvllama.kvcache.eviction import EvictionPolicy
from kvllama.kvcache.index import Entry, Index
from kvllama.kvcache.keys import CacheKey, key_of
from kvllama.kvcache.lookup import Finder
from kvllama.kvcache.metrics import Metrics
from kvllama.kvcache.pressure import MemoryReader, MemoryWatcher, read_meminfo
from kvllama.kvcache.reads import RowReader
from kvllama.kvcache.roots import RootLike, RootRegistry
from kvllama.kvcache.rowformat import MIN_BLOB_BYTES, Row, RowMeta, SaveReason
from kvllama.kvcache.store import TierStack
from kvllama.kvcache.tiers import Tier, build_tiers
from kvllama.kvcache.writer import SaveJob, Submitted, WriterPool

log = logging.getLogger("kvllama.kvcache")


class KvCache(RootRegistry, RowReader, CacheAdmin, CacheCloser):
    """Token-exact rows in RAM -> shm -> disk; see the module docstring for the threading rules."""

    def __init__(
        self,
        config: CacheConfig | None = None,
        *,
        tiers: Sequence[Tier] | None = None,
        memory_reader: MemoryReader = read_meminfo,
    ) -> None:
        self.config = config or CacheConfig()
        self._mu = threading.Lock()
        self._index = Index(self.config.block_size)
        self._metrics = Metrics()
        self._policy = EvictionPolicy(self.config.half_life)
        # root digest -> KeyRoot description, for new rows; an LRU of at most config.max_roots.
        self._roots: OrderedDict[bytes, str] = OrderedDict()
        self._recent_loads: OrderedDict[CacheKey, str] = OrderedDict()  # key -> tier, under _mu
        self._stack = TierStack(
            build_tiers(self.config) if tiers is None else tiers,
            self._index, self._mu, self._metrics, self._policy, demote=self.config.demote,
            read_only=self.config.read_only,
        )
        self._stack.adopt()
        c = self.config
        self._pool = WriterPool(
            lambda job: self._write_job(job), threads=c.writer_threads, capacity=c.writer_queue
        )
        self._finder = Finder(
            self._index, self._mu, self._metrics, block_size=c.block_size,
            in_flight=self._pool.in_flight, wait=self._pool.wait, parent_wait=c.parent_wait,
        )
        self._watcher = MemoryWatcher(
            self._shed, high=c.pressure_high, low=c.pressure_low, interval=c.pressure_interval,
            read=memory_reader,
        )
        if c.pressure_watch:
            self._watcher.start()
        self._closed = False

    # --- save -------------------------------------------------------------------

    def save(
        self,
        root: RootLike,
        tokens: Sequence[int],
        blob: bytes,
        reason: SaveReason | str,
        *,
        sync: bool = False,
        timeout: float | None = None,
    ) -> CacheKey | None:
        """Save the state of exactly ``tokens``; the row's key, or None if dropped or failed.

        Async by default: never blocks (a full writer queue drops the save).
        ``sync=True`` writes in this thread, waiting at most ``timeout``
        (default ``config.sync_timeout``) for other writes to finish. A blob
        shorter than ``MIN_BLOB_BYTES`` (b"" when llama.cpp could not produce a
        state) is refused and counted: restored, it would be an empty sequence
        under a key that claims ``tokens``.
        """
        why = SaveReason.parse(reason)
        if len(blob) < MIN_BLOB_BYTES:
            self._metrics.inc("saves_refused")
            log.warning("refusing to cache a %d-byte state blob for %d tokens (%s save)",
                        len(blob), len(tokens), why.label)
            return None
        digest = self._resolve(root)
        toks = array("i", tokens)  # our own copy: the caller may keep appending to its list
        if not toks or not self._stack.tiers or self._closed or self.config.read_only:
            return None
        key = key_of(digest, toks, self.config.block_size)
        with self._mu:
            existing = self._index.get(key)
        if existing is not None:
            same = existing.root == digest and existing.tokens == toks
            self._metrics.inc("saves_skipped" if same else "collisions")
            return key if same else None
        inputs = self._description(root, digest)
        job = SaveJob(key, digest, toks, bytes(blob), why, inputs, time.time())
        if sync:
            ok = self._write_job(job, self.config.sync_timeout if timeout is None else timeout)
            return key if ok else None
        outcome = self._pool.submit(job)
        if outcome is Submitted.DUPLICATE:
            self._metrics.inc("saves_skipped")
        elif outcome is not Submitted.QUEUED:
            self._metrics.inc("saves_dropped")
            return None
        return key

    def _write_job(self, job: SaveJob, timeout: float | None = None) -> bool:
        if not self._stack.lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            log.warning("cache save of %s timed out waiting for the writer lock", job.key.hex())
            self._metrics.inc("saves_failed")
            return False
        started = time.perf_counter()
        try:
            return self._place_new(job)
        except Exception:
            log.exception("cache save of %s failed", job.key.hex())
            self._metrics.inc("saves_failed")
            return False
        finally:
            self._stack.lock.release()
            self._metrics.add_seconds("save", time.perf_counter() - started)

    def _place_new(self, job: SaveJob) -> bool:
        with self._mu:
            existing = self._index.get(job.key)
        if existing is not None:
            self._metrics.inc("saves_skipped")
            return existing.tokens == job.tokens
        meta = RowMeta(job.key, job.root, job.tokens, job.reason, self.config.block_size, job.created,
                       0, job.created, job.inputs, len(job.blob))
        tier = self._stack.place(Row(meta, job.blob), range(len(self._stack.tiers)))
        if tier is None:
            self._metrics.inc("saves_failed")
            return False
        with self._mu:
            self._index.add(Entry.from_meta(meta, tier.name))
        self._metrics.inc("saves", by=job.reason.label)
        return True

    def in_flight(self, key: CacheKey) -> bool:
        """Is a save of ``key`` queued or being written?"""
        return self._pool.in_flight(key)

    def pending_keys(self) -> frozenset[CacheKey]:
        return self._pool.pending_keys()

    def wait_saved(self, key: CacheKey, timeout: float) -> bool:
        """Wait up to ``timeout`` s for a pending save of ``key``; True if none is pending now."""
        return self._pool.wait(key, timeout)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued save is written (or failed); False if ``timeout`` s passed first."""
        return self._pool.flush(timeout)

    def __enter__(self) -> KvCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
