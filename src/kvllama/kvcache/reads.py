"""The read side of :class:`~kvllama.kvcache.cache.KvCache`: lookup, load and reject.

Kept apart from the facade because this is the decode thread's hot path and
the home of the "never wrong output" checks: lookups read only the in-memory
index, ``load`` re-checks the key, tokens, root and blob length of what a
tier hands back (a mismatch or a corrupt row is a counted miss and is
forgotten), and ``reject`` turns a hit that llama.cpp still refused into a
miss and forgets the row in every tier.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from kvllama.kvcache.config import CacheConfig
from kvllama.kvcache.errors import CorruptRowError
from kvllama.kvcache.index import Entry, Index
from kvllama.kvcache.keys import CacheKey, key_of, token_array
from kvllama.kvcache.lookup import Finder
from kvllama.kvcache.metrics import Metrics
from kvllama.kvcache.records import CacheHit
from kvllama.kvcache.roots import RootLike
from kvllama.kvcache.rowformat import MIN_BLOB_BYTES
from kvllama.kvcache.store import TierStack
from kvllama.kvcache.tiers import Tier

log = logging.getLogger("kvllama.kvcache")

# Where the last few successful loads came from, so reject() un-counts the right tier's hit.
_RECENT_LOADS = 64


class RowReader:
    """The read half of KvCache: find rows, load and verify them, forget the bad ones."""

    # Set by KvCache.__init__.
    config: CacheConfig
    _mu: threading.Lock
    _index: Index
    _metrics: Metrics
    _stack: TierStack
    _finder: Finder
    _recent_loads: OrderedDict[CacheKey, str]  # key -> tier, under _mu
    # From RootRegistry.
    _resolve: Callable[[RootLike], bytes]
    # From KvCache.
    pending_keys: Callable[[], frozenset[CacheKey]]

    def lookup(
        self,
        root: RootLike,
        tokens: Sequence[int],
        *,
        max_len: int | None = None,
        parent_key: CacheKey | None = None,
        count: bool = True,
    ) -> CacheHit | None:
        """The best row for a prefix of ``tokens[:max_len]``: exact key, then parent, then longest prefix.

        ``count=False``: a look ahead of a decision (is a restore worth more
        than a kept sequence?), not a lookup the metrics should see.
        """
        started = time.perf_counter()
        digest, toks = self._resolve(root), token_array(tokens)
        n = len(toks) if max_len is None else max(0, min(max_len, len(toks)))
        hit = self._finder.find(digest, toks, n, parent_key) if n > 0 else None
        if not count:
            return hit
        self._metrics.inc("lookups")
        if hit is None:
            self._metrics.inc("misses")
        self._metrics.add_seconds("lookup", time.perf_counter() - started)
        return hit

    def lookup_shared(
        self, root: RootLike, tokens: Sequence[int], *, max_len: int
    ) -> tuple[CacheHit, int] | None:
        """A row (of any length) sharing the most whole blocks with ``tokens[:max_len]``, and that count.

        The caller restores it and cuts it back to the shared part, where the
        model's memory allows that (see ``Finder.shared``).
        """
        digest, toks = self._resolve(root), token_array(tokens)
        n = max(0, min(max_len, len(toks)))
        return self._finder.shared(digest, toks, n) if n > 0 else None

    def find_row(self, root: RootLike, tokens: Sequence[int]) -> CacheKey | None:
        """The key of the row of exactly ``tokens`` (under ``root``), in any tier or being written."""
        digest, toks = self._resolve(root), token_array(tokens)
        if not toks:
            return None
        key = key_of(digest, toks, self.config.block_size)
        with self._mu:
            entry = self._index.get(key)
            if entry is not None:
                return key if entry.root == digest and entry.tokens == toks else None
        return key if key in self.pending_keys() else None

    def block_values(self) -> list[bytes]:
        """Chain values of every block-aligned prefix a row holds, over all roots (a router's digest)."""
        with self._mu:
            return self._index.block_values()

    def longest_prefix_len(self, root: RootLike, tokens: Sequence[int]) -> int:
        """Length of the longest cached prefix of ``tokens`` in any tier (0 if none); for routers."""
        digest, toks = self._resolve(root), token_array(tokens)
        if not toks:
            return 0
        hit = self._finder.find(digest, toks, len(toks), None)
        return hit.n_tokens if hit else 0

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
