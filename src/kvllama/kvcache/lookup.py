"""Finding the row to restore: exact key, then the caller's parent row, then the longest prefix.

Reads only the in-memory index, so a lookup costs one pass over the prompt
(:class:`~kvllama.kvcache.keys.KeyChain`) plus a dict probe per row length
the index holds under this root. Every candidate is confirmed by comparing
token ids; a key whose tokens differ is a collision, counted and skipped.
"""

from __future__ import annotations

import threading
from array import array
from collections.abc import Callable

from kvllama.kvcache.index import Entry, Index
from kvllama.kvcache.keys import CacheKey, KeyChain
from kvllama.kvcache.metrics import Metrics
from kvllama.kvcache.records import CacheHit, HitSource


class Finder:
    def __init__(
        self,
        index: Index,
        mu: threading.Lock,
        metrics: Metrics,
        *,
        block_size: int,
        in_flight: Callable[[CacheKey], bool],
        wait: Callable[[CacheKey, float], bool],
        parent_wait: float,
    ) -> None:
        self._index, self._mu, self._metrics = index, mu, metrics
        self._block = block_size
        self._in_flight, self._wait, self._parent_wait = in_flight, wait, parent_wait

    def find(self, root: bytes, toks: array, n: int, parent_key: CacheKey | None) -> CacheHit | None:
        """The best hit for a prefix of ``toks[:n]`` (n >= 1), in the documented order."""
        chain = KeyChain(root, toks, self._block)
        hit = self._probe(chain.key(n), root, toks, n, "exact_key")
        if hit is None and parent_key is not None:
            hit = self._parent(parent_key, root, toks, n)
        return hit or self.longest(chain, root, toks, n)

    def longest(self, chain: KeyChain, root: bytes, toks: array, n: int) -> CacheHit | None:
        """The longest cached prefix shorter than ``n`` (length ``n`` is the exact probe)."""
        with self._mu:
            lengths = self._index.lengths(root)
        for _length, key in chain.keys(lengths, max_len=n - 1):  # longest first
            hit = self._probe(key, root, toks, n, "prefix")
            if hit is not None:
                return hit
        return None

    def shared(self, root: bytes, toks: array, n: int) -> tuple[CacheHit, int] | None:
        """A row that shares the most whole blocks with ``toks[:n]``, and how many tokens it shares.

        Unlike :meth:`find`, the row may be longer than the prompt and go on
        differently: restored and cut back to the shared part, it serves a
        prompt that only starts like it (another user's question after the
        same system prompt). Candidates are confirmed by comparing tokens.
        """
        values = KeyChain(root, toks, self._block).block_values(n // self._block)
        with self._mu:
            for i in range(len(values), 0, -1):
                shared = i * self._block
                for entry in self._index.branches(values[i - 1]):
                    if entry.root == root and entry.tokens[:shared] == toks[:shared]:
                        hit = CacheHit(entry.key, entry.n_tokens, entry.tier, "partial", "shared",
                                       entry.tokens)
                        return hit, shared
                    self._metrics.inc("collisions")
        return None

    def _probe(self, key: CacheKey, root: bytes, toks: array, n: int, source: HitSource) -> CacheHit | None:
        with self._mu:
            entry = self._index.get(key)
            if entry is None:
                return None
            if entry.n_tokens > n or not entry.matches(root, toks):
                self._metrics.inc("collisions")
                return None
            return hit_of(entry, n, source)

    def _parent(self, key: CacheKey, root: bytes, toks: array, n: int) -> CacheHit | None:
        """The parent row if it is a prefix of ``toks[:n]``, waiting briefly if it is still being saved."""
        if key not in self._index and self._in_flight(key):
            self._wait(key, self._parent_wait)
        with self._mu:
            entry = self._index.get(key)
            if entry is None or entry.n_tokens > n or not entry.matches(root, toks):
                return None
            return hit_of(entry, n, "parent")


def hit_of(entry: Entry, n: int, source: HitSource) -> CacheHit:
    kind = "exact" if entry.n_tokens == n else "partial"
    return CacheHit(entry.key, entry.n_tokens, entry.tier, kind, source, entry.tokens)
