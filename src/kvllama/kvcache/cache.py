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
"""

from __future__ import annotations

import json
import logging
import threading
import time
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from kvllama.errors import InvalidOptionError
from kvllama.kvcache.config import CacheConfig
from kvllama.kvcache.errors import CorruptRowError, ReadOnlyCacheError
from kvllama.kvcache.eviction import EvictionPolicy
from kvllama.kvcache.index import Entry, Index
from kvllama.kvcache.keys import CacheKey, KeyRoot, key_of, token_array
from kvllama.kvcache.lookup import Finder
from kvllama.kvcache.metrics import Metrics
from kvllama.kvcache.pressure import MemoryReader, MemoryWatcher, read_meminfo
from kvllama.kvcache.records import CacheHit, RowInfo
from kvllama.kvcache.rowformat import MIN_BLOB_BYTES, Row, RowMeta, SaveReason
from kvllama.kvcache.store import TierStack
from kvllama.kvcache.tiers import Tier, build_tiers
from kvllama.kvcache.writer import SaveJob, Submitted, WriterPool

log = logging.getLogger("kvllama.kvcache")

RootLike = bytes | KeyRoot
# Where the last few successful loads came from, so reject() un-counts the right tier's hit.
_RECENT_LOADS = 64
# How many of the least recently used roots register_root looks through for one without rows.
_ROOT_SCAN = 16


class KvCache:
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
        self._index = Index()
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

    # --- roots ----------------------------------------------------------------

    def register_root(self, root: KeyRoot) -> bytes:
        """The root bytes of ``root``; rows saved under them record its description.

        Roots are kept in an LRU of ``config.max_roots`` (one root per model
        and cache_salt, so a client sending random salts would otherwise grow
        this map forever). Forgetting a root loses nothing: a stored row keeps
        its own copy of the description, and every save and lookup that passes
        a KeyRoot registers it again. Roots without live rows go first.
        """
        digest = root.digest
        with self._mu:
            if digest in self._roots:
                self._roots.move_to_end(digest)
                return digest
        description = root.describe()
        with self._mu:
            self._roots[digest] = description
            self._roots.move_to_end(digest)
            while len(self._roots) > self.config.max_roots:
                self._roots.pop(self._root_to_drop(keep=digest))
        return digest

    def _root_to_drop(self, keep: bytes) -> bytes:
        """The LRU root with no live rows among the oldest few, else the oldest (caller holds _mu)."""
        oldest = next(iter(self._roots))
        for i, digest in enumerate(self._roots):
            if digest == keep or i >= _ROOT_SCAN:
                break
            if not self._index.lengths(digest):
                return digest
        return oldest

    def known_roots(self) -> int:
        """How many root descriptions are remembered (at most ``config.max_roots``)."""
        with self._mu:
            return len(self._roots)

    def _description(self, root: RootLike, digest: bytes) -> str:
        """What a new row records about its root (a KeyRoot describes itself; the LRU may have let go)."""
        if isinstance(root, KeyRoot):
            return root.describe()
        with self._mu:
            known = self._roots.get(digest)
        return known or json.dumps({"root": digest.hex()})

    def _resolve(self, root: RootLike) -> bytes:
        return self.register_root(root) if isinstance(root, KeyRoot) else bytes(root)

    # --- lookup -----------------------------------------------------------------

    def lookup(
        self,
        root: RootLike,
        tokens: Sequence[int],
        *,
        max_len: int | None = None,
        parent_key: CacheKey | None = None,
    ) -> CacheHit | None:
        """The best row for a prefix of ``tokens[:max_len]``: exact key, then parent, then longest prefix."""
        started = time.perf_counter()
        digest, toks = self._resolve(root), token_array(tokens)
        n = len(toks) if max_len is None else max(0, min(max_len, len(toks)))
        hit = self._finder.find(digest, toks, n, parent_key) if n > 0 else None
        self._metrics.inc("lookups")
        if hit is None:
            self._metrics.inc("misses")
        self._metrics.add_seconds("lookup", time.perf_counter() - started)
        return hit

    def longest_prefix_len(self, root: RootLike, tokens: Sequence[int]) -> int:
        """Length of the longest cached prefix of ``tokens`` in any tier (0 if none); for routers."""
        digest, toks = self._resolve(root), token_array(tokens)
        if not toks:
            return 0
        hit = self._finder.find(digest, toks, len(toks), None)
        return hit.n_tokens if hit else 0

    # --- load -------------------------------------------------------------------

    def load(self, hit: CacheHit) -> bytes | None:
        """The state blob of ``hit`` (verified), or None if it vanished or is corrupt (a miss)."""
        started = time.perf_counter()
        blob = self._load(hit)
        self._metrics.add_seconds("load", time.perf_counter() - started)
        if blob is None:
            self._metrics.inc("misses")
            self._metrics.inc("load_misses")
        else:
            self._metrics.inc("hits", by=hit.kind)
            self._metrics.inc("hits_by_source", by=hit.source)
        return blob

    def reject(self, hit: CacheHit, why: str = "llama.cpp refused the state") -> None:
        """The caller could not use the blob ``load(hit)`` returned: a miss, and the row is forgotten.

        The row passed every check of ours (checksum, key, tokens), yet the
        runtime refused it (llama_state_seq_set_data returned 0: a stream count
        or layout from another configuration, a state format change). Serving
        it again would fail again, so it is removed from the index and from
        every tier, and the hit that load() counted becomes a miss.
        """
        with self._mu:
            tier = self._recent_loads.pop(hit.key, None)
        if tier is not None:  # undo what load() counted; a load that failed counted its own miss
            self._metrics.inc("hits", -1, by=hit.kind)
            self._metrics.inc("hits_by_source", -1, by=hit.source)
            self._metrics.inc("hits_by_tier", -1, by=tier)
            self._metrics.inc("misses")
        self._metrics.inc("restore_failures")
        log.warning("cache row %s (%d tokens) could not be restored (%s); forgetting it",
                    hit.key.hex(), hit.n_tokens, why)
        if not self.config.read_only:
            self._stack.forget_everywhere(hit.key)

    def _load(self, hit: CacheHit) -> bytes | None:
        for _attempt in range(3):  # the row may be demoted while we read; follow it
            with self._mu:
                entry = self._index.get(hit.key)
                if entry is None or entry.tokens != hit.tokens:
                    return None
                entry.pins += 1
                tier = self._stack.tier(entry.tier)
            try:
                row = tier.get(hit.key)
            except CorruptRowError as exc:
                self._forget_corrupt(hit.key, tier, exc)
                return None
            except OSError as exc:  # unreadable, or not a regular file any more: a miss, never a crash
                log.warning("cannot read cache row %s in %s: %s", hit.key.hex(), tier.name, exc)
                self._forget(hit.key, tier)
                return None
            finally:
                with self._mu:
                    entry.pins -= 1
            if row is None:
                if self._index.get(hit.key) is entry and entry.tier != tier.name:
                    continue
                self._forget(hit.key, tier)  # deleted behind our back
                return None
            if row.meta.tokens != hit.tokens or row.meta.root != entry.root:
                self._forget_corrupt(hit.key, tier, CorruptRowError("stored tokens differ from the index"))
                return None
            if len(row.blob) < MIN_BLOB_BYTES:
                self._forget_corrupt(hit.key, tier, CorruptRowError("state blob too short"))
                return None
            self._bump(entry, tier)
            with self._mu:
                self._recent_loads[hit.key] = tier.name
                self._recent_loads.move_to_end(hit.key)
                if len(self._recent_loads) > _RECENT_LOADS:
                    self._recent_loads.popitem(last=False)
            return row.blob
        return None

    def _bump(self, entry: Entry, tier: Tier) -> None:
        with self._mu:
            entry.hits += 1
            entry.last_used = time.time()
            hits, last_used = entry.hits, entry.last_used
        self._metrics.inc("hits_by_tier", by=tier.name)
        try:
            tier.touch(entry.key, hits, last_used)
        except OSError as exc:  # popularity is a hint; never fail a load for it
            log.debug("could not persist hit count of %s: %s", entry.key.hex(), exc)

    def _forget(self, key: CacheKey, tier: Tier) -> None:
        if self.config.read_only:
            return
        with self._mu:
            entry = self._index.get(key)
            if entry is not None and entry.tier == tier.name:
                self._index.remove(key)
        tier.remove(key)

    def _forget_corrupt(self, key: CacheKey, tier: Tier, exc: Exception) -> None:
        log.warning("deleting corrupt cache row %s in %s: %s", key.hex(), tier.name, exc)
        self._metrics.inc("corrupt_rows", by=tier.name)
        self._forget(key, tier)

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

    # --- start, pressure, admin -------------------------------------------------

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
        return [_info(e, now) for e in sorted(entries, key=lambda e: -e.last_used)]

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
        return _info(entry, time.time(), inputs)

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

    def __enter__(self) -> KvCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _info(entry: Entry, now: float, key_inputs: dict[str, Any] | None = None) -> RowInfo:
    return RowInfo(
        tier=entry.tier, key=entry.key.hex(), n_tokens=entry.n_tokens, size=entry.size, hits=entry.hits,
        age=max(0.0, now - entry.created), idle=max(0.0, now - entry.last_used),
        reason=entry.reason.label, created=entry.created, last_used=entry.last_used, key_inputs=key_inputs,
    )
