"""The tier stack: where rows go, which rows leave, and where they go next.

Every mutation (put, evict, demote, remove) runs under :attr:`TierStack.lock`,
so budgets are checked in one place and never exceeded. The index has its
own lock (``mu``), held only for in-memory work, so lookups on the decode
thread never wait for a file write.

Placement: a new row goes to the highest tier that can hold it, evicting
that tier's lowest-score unpinned rows first. An evicted row is *demoted*
to the next tier that can take it (RAM -> shm -> disk) instead of dropped,
but a demoted row may only displace rows that score lower than itself, so a
cold row never pushes a popular one off the last tier. Under memory pressure
RAM and shm rows are demoted straight to the tiers that are not in memory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from kvllama.kvcache.errors import CorruptRowError
from kvllama.kvcache.eviction import EvictionPolicy
from kvllama.kvcache.index import Entry, Index
from kvllama.kvcache.keys import CacheKey
from kvllama.kvcache.metrics import Metrics
from kvllama.kvcache.rowformat import Row
from kvllama.kvcache.tiers import Tier

log = logging.getLogger("kvllama.kvcache")


class TierStack:
    def __init__(
        self,
        tiers: Sequence[Tier],
        index: Index,
        mu: threading.Lock,
        metrics: Metrics,
        policy: EvictionPolicy,
        *,
        demote: bool = True,
        read_only: bool = False,
    ) -> None:
        self.tiers = list(tiers)
        self.lock = threading.Lock()  # serializes every mutation of the tiers
        self._index, self._mu, self._metrics, self._policy = index, mu, metrics, policy
        self._demote = demote
        self.read_only = read_only  # adopt only: delete nothing, evict nothing
        self._pos = {tier.name: i for i, tier in enumerate(self.tiers)}

    def tier(self, name: str) -> Tier:
        return self.tiers[self._pos[name]]

    def below(self, name: str, *, memory_backed: bool | None = None) -> list[int]:
        """Indices of the tiers under ``name`` (optionally only those (not) in memory)."""
        start = self._pos[name] + 1
        return [i for i in range(start, len(self.tiers))
                if memory_backed is None or self.tiers[i].memory_backed == memory_backed]

    # --- caller holds self.lock ---------------------------------------------

    def place(self, row: Row, targets: Sequence[int], *, floor: float | None = None) -> Tier | None:
        """Put ``row`` in the first target tier that can hold it; None if none could.

        ``floor``: only evict rows scoring below it (set for demoted rows).
        """
        for i in targets:
            tier = self.tiers[i]
            if row.size > tier.budget or not self._make_room(i, row.size, floor):
                continue
            if tier.stores_packed and not row.is_packed:
                started = time.perf_counter()
                _ = row.parts
                self._metrics.add_seconds("pack", time.perf_counter() - started)
            try:
                tier.put(row)
            except (OSError, CorruptRowError) as exc:
                log.warning("writing a cache row to %s failed: %s", tier.name, exc)
                self._metrics.inc("write_errors", by=tier.name)
                continue
            return tier
        return None

    def _make_room(self, i: int, need: int, floor: float | None) -> bool:
        tier = self.tiers[i]
        excess = tier.used_bytes + need - tier.budget
        if excess <= 0:
            return True
        now = time.time()
        with self._mu:
            entries = self._index.entries(tier.name)
            if floor is not None:
                entries = [e for e in entries if self._policy.score(e.hits, e.last_used, now) < floor]
            victims = self._policy.victims(entries, excess, now)
        if victims is None:
            return False
        below = self.below(tier.name) if self._demote else []
        for victim in victims:
            self.evict(victim.key, tier, below)
        return tier.used_bytes + need <= tier.budget

    def evict(self, key: CacheKey, tier: Tier, targets: Sequence[int]) -> None:
        """Move one row out of ``tier``: to the first of ``targets`` that takes it, else drop it."""
        dest = None
        row = self._read_for_demotion(key, tier) if targets else None
        if row is not None:
            dest = self.place(row, targets, floor=self._policy.score(row.meta.hits, row.meta.last_used,
                                                                      time.time()))
        with self._mu:
            entry = self._index.get(key)
            if dest is not None and entry is None:  # forgotten meanwhile (found corrupt by a reader)
                dest.remove(key)
            elif dest is not None and entry is not None:
                entry.tier = dest.name
                self._metrics.inc("demotions", by=dest.name)
            elif entry is not None and entry.tier == tier.name:
                self._index.remove(key)
                self._metrics.inc("rows_dropped")
        tier.remove(key)
        self._metrics.inc("evictions", by=tier.name)

    def _read_for_demotion(self, key: CacheKey, tier: Tier) -> Row | None:
        try:
            row = tier.get(key)
        except CorruptRowError:
            self._metrics.inc("corrupt_rows", by=tier.name)
            return None
        except OSError as exc:  # unreadable now (EIO, a directory in its place): drop it, never crash a save
            log.warning("cannot read cache row %s in %s to demote it: %s", key.hex(), tier.name, exc)
            return None
        if row is None:
            return None
        with self._mu:
            entry = self._index.get(key)
            hits, last_used = (entry.hits, entry.last_used) if entry else (row.meta.hits, row.meta.last_used)
        return row.with_stats(hits, last_used)

    def remove(self, key: CacheKey) -> None:
        """Forget a row everywhere (corrupt, cleared)."""
        with self._mu:
            entry = self._index.remove(key)
        for tier in self.tiers:
            if entry is None or tier.name == entry.tier or tier.contains(key):
                tier.remove(key)

    def forget_everywhere(self, key: CacheKey) -> None:
        """Drop a row from the index and from every tier, accounted there or not.

        For a row that must never be served again (llama.cpp refused it): a
        crash mid-demotion can leave a second copy in a tier that never
        adopted it, so every tier is asked, not just the one the index names.
        """
        with self._mu:
            self._index.remove(key)
        for tier in self.tiers:
            tier.remove(key)

    def shed(self, nbytes: int) -> int:
        """Free about ``nbytes`` from the memory-backed tiers (lowest scores first)."""
        freed = 0
        for tier in self.tiers:
            if not tier.memory_backed:
                continue
            with self._mu:
                order = self._policy.order(self._index.entries(tier.name), time.time())
            targets = self.below(tier.name, memory_backed=False) if self._demote else []
            for entry in order:
                if freed >= nbytes:
                    return freed
                self.evict(entry.key, tier, targets)
                freed += entry.size
        return freed

    def adopt(self) -> None:
        """Rebuild the index from the file tiers' headers, then bring every tier within budget.

        Lower tiers are scanned first, so when a crash left a row in two
        tiers (mid-demotion) the higher copy wins and the lower one is deleted
        (a read-only stack only indexes the higher one and deletes nothing).
        """
        for tier in reversed(self.tiers):
            if not tier.persistent:
                continue
            found = tier.scan()
            for name, count in (("corrupt_rows", found.corrupt), ("stale_rows", found.stale),
                                ("temps_removed", found.temps), ("files_skipped", found.skipped)):
                if count:
                    self._metrics.inc(name, count, by=tier.name)
            for meta in found.metas:
                entry = Entry.from_meta(meta, tier.name)
                with self._mu:
                    older = self._index.get(meta.key)
                    if older is not None:
                        entry.hits = max(entry.hits, older.hits)
                    self._index.add(entry)
                if older is not None and not self.read_only:
                    self.tier(older.tier).remove(meta.key)
        if not self.read_only:
            with self.lock:
                self.enforce_budgets()

    def enforce_budgets(self) -> None:
        """Bring every tier within budget (after adopting rows saved under a larger one)."""
        for i in range(len(self.tiers)):
            self._make_room(i, 0, None)
