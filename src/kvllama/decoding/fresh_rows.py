"""Prefill rows just saved, kept at hand so a waiting follower restores one at once.

A row handed to the cache's writer pool becomes visible to lookups only
once it is packed and stored (tens of milliseconds for a long prompt). A
follower waiting for a leader's shared prefix (decoding/warm.py) would wait
that long for nothing: the blob is already in memory. So the last few
prefill rows stay here, bounded by count and bytes, and a restore looks here
first. A row found here is the same blob the cache stores, so a restore from
either is the same. Loop thread only.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

MAX_ROWS = 8
MAX_BYTES = 256 << 20


@dataclass(frozen=True)
class FreshRow:
    key: bytes
    salt: object  # the tenant: (cache salt, adapter key)
    tokens: tuple[int, ...]
    blob: bytes


class FreshRows:
    def __init__(self, max_rows: int = MAX_ROWS, max_bytes: int = MAX_BYTES) -> None:
        self._rows: OrderedDict[bytes, FreshRow] = OrderedDict()
        self._max_rows, self._max_bytes = max_rows, max_bytes
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, row: FreshRow) -> None:
        if len(row.blob) > self._max_bytes:
            return
        old = self._rows.pop(row.key, None)
        if old is not None:
            self._bytes -= len(old.blob)
        self._rows[row.key] = row
        self._bytes += len(row.blob)
        while len(self._rows) > self._max_rows or self._bytes > self._max_bytes:
            _, dropped = self._rows.popitem(last=False)
            self._bytes -= len(dropped.blob)

    def longest(self, prompt: tuple[int, ...], salt: object, max_len: int) -> FreshRow | None:
        """The longest row of this tenant that is a prefix of ``prompt`` and at most ``max_len`` long."""
        best: FreshRow | None = None
        for row in self._rows.values():
            n = len(row.tokens)
            if (row.salt == salt and n <= max_len and (best is None or n > len(best.tokens))
                    and prompt[:n] == row.tokens):
                best = row
        return best

    def covers(self, prompt: tuple[int, ...], salt: object, n: int) -> bool:
        """Is a row of exactly ``prompt[:n]`` here?"""
        return any(row.salt == salt and len(row.tokens) == n and prompt[:n] == row.tokens
                   for row in self._rows.values())
