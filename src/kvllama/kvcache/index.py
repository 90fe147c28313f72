"""The in-memory index over all tiers: what lookups read, so they never touch files.

One entry per key (a row lives in exactly one tier at a time; demotion moves
it). Each entry keeps its token ids (4 bytes a token, beside the ~7 KB a
token of the blob itself) so a hit is confirmed by comparing tokens without
I/O. Per root, the index keeps the multiset of row lengths, so a prefix
search probes only lengths that exist (see :class:`~kvllama.kvcache.keys.KeyChain`).

Not thread-safe: :class:`~kvllama.kvcache.cache.KvCache` holds its lock
around every call.
"""

from __future__ import annotations

from array import array
from collections import Counter
from dataclasses import dataclass

from kvllama.kvcache.keys import CacheKey, KeyChain
from kvllama.kvcache.rowformat import RowMeta, SaveReason


@dataclass(slots=True)
class Entry:
    key: CacheKey
    root: bytes
    tokens: array  # array('i')
    tier: str
    size: int  # packed size in bytes (the same in every tier)
    hits: int
    last_used: float  # unix time
    created: float
    reason: SaveReason
    pins: int = 0  # readers in progress; a pinned row is never chosen as a victim

    @classmethod
    def from_meta(cls, meta: RowMeta, tier: str) -> Entry:
        return cls(meta.key, meta.root, meta.tokens, tier, meta.size, meta.hits, meta.last_used,
                   meta.created, meta.reason)

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def matches(self, root: bytes, tokens: array) -> bool:
        """Is this row exactly the state of ``tokens[:n_tokens]`` under ``root``?"""
        n = len(self.tokens)
        return self.root == root and n <= len(tokens) and self.tokens == tokens[:n]


class Index:
    def __init__(self, block_size: int = 64) -> None:
        self._entries: dict[CacheKey, Entry] = {}
        self._lengths: dict[bytes, Counter[int]] = {}
        # Chain value of each block-aligned prefix -> the rows that start with it (a branch
        # index: finds a longer row that shares only its first blocks with a prompt).
        self._block = block_size
        self._branches: dict[bytes, dict[CacheKey, None]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: CacheKey) -> Entry | None:
        return self._entries.get(key)

    def add(self, entry: Entry) -> None:
        old = self.remove(entry.key)
        if old is not None:
            entry.pins += old.pins
        self._entries[entry.key] = entry
        self._lengths.setdefault(entry.root, Counter())[entry.n_tokens] += 1
        for value in self._block_values(entry):
            self._branches.setdefault(value, {})[entry.key] = None

    def remove(self, key: CacheKey) -> Entry | None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            counts = self._lengths[entry.root]
            counts[entry.n_tokens] -= 1
            if counts[entry.n_tokens] <= 0:
                del counts[entry.n_tokens]
            if not counts:
                del self._lengths[entry.root]
            for value in self._block_values(entry):
                rows = self._branches.get(value)
                if rows is not None:
                    rows.pop(key, None)
                    if not rows:
                        del self._branches[value]
        return entry

    def _block_values(self, entry: Entry) -> list[bytes]:
        return KeyChain(entry.root, entry.tokens, self._block).block_values(entry.n_tokens // self._block)

    def branches(self, value: bytes) -> list[Entry]:
        """The rows whose tokens start with the block-aligned prefix whose chain value is ``value``."""
        rows = self._branches.get(value)
        return [self._entries[k] for k in rows] if rows else []

    def block_values(self) -> list[bytes]:
        """The chain value of every block-aligned prefix some row holds (for routers' digests)."""
        return list(self._branches)

    def lengths(self, root: bytes) -> list[int]:
        """Distinct lengths of the rows under ``root``."""
        counts = self._lengths.get(root)
        return list(counts) if counts else []

    def entries(self, tier: str | None = None) -> list[Entry]:
        return [e for e in self._entries.values() if tier is None or e.tier == tier]
