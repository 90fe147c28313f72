"""Eviction policy: which rows leave a tier first.

    score = (1 + hits) * 0.5 ** (idle_seconds / half_life)

Lowest score goes first (ties: least recently used first). Hits count
linearly and idleness decays exponentially, so a row with 10 hits idle for
two half-lives (score 2.75) outlives a fresh row never hit (score 1), while
a once-popular row idle for a day (1,000 hits, 24 one-hour half-lives:
score 6e-5) gives way to anything recent. Hit counts persist in file rows,
so popularity survives restarts. Pinned rows (being read) are never chosen.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kvllama.kvcache.index import Entry


@dataclass(frozen=True)
class EvictionPolicy:
    half_life: float = 3600.0  # seconds of idleness that halve a row's score

    def score(self, hits: int, last_used: float, now: float) -> float:
        idle = max(0.0, now - last_used)
        return (1 + hits) * 0.5 ** (idle / self.half_life)

    def order(self, entries: Iterable[Entry], now: float) -> list[Entry]:
        """Unpinned entries, first victim first."""
        candidates = [e for e in entries if e.pins == 0]
        candidates.sort(key=lambda e: (self.score(e.hits, e.last_used, now), e.last_used))
        return candidates

    def victims(self, entries: Iterable[Entry], need: int, now: float) -> list[Entry] | None:
        """Lowest-score rows, in order, until ``need`` bytes are covered; None if pins prevent it."""
        chosen: list[Entry] = []
        freed = 0
        for entry in self.order(entries, now):
            if freed >= need:
                break
            chosen.append(entry)
            freed += entry.size
        return chosen if freed >= need else None
