"""Cache counters: plain numbers behind one lock, read as a snapshot dict.

Every counter exists from the start (zero), so a dashboard or test sees the
full vocabulary before the first event. Maps are keyed by hit kind, tier
name or save reason.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from kvllama.kvcache.rowformat import SaveReason

COUNTERS = (
    "lookups",  # lookup() calls
    "misses",  # lookups without a hit, loads that found the row gone or corrupt, rejected restores
    "load_misses",  # loads that found the row gone or corrupt
    "collisions",  # a key matched but the stored tokens differed (a miss)
    "saves_dropped",  # async saves refused because the writer queue was full
    "saves_failed",  # saves that could not be written (ENOSPC, I/O error, no room, timeout)
    "saves_skipped",  # saves of a row already cached or already in flight
    "saves_refused",  # saves of an empty or too short state blob (never stored)
    "restore_failures",  # rows loaded but refused by llama.cpp: un-counted as hits, a miss, forgotten
    "rows_dropped",  # rows evicted with nowhere to demote them
)
MAPS = (
    "hits",  # by kind: exact | partial
    "hits_by_tier",
    "hits_by_source",  # exact_key | parent | prefix | shared
    "saves",  # by reason
    "evictions",  # by tier the row left
    "demotions",  # by tier the row went to
    "write_errors",  # by tier: puts that failed (ENOSPC, I/O error); the row tried the next tier
    "corrupt_rows",  # by tier: rejected on start, load or verify (deleted, except by read-only scans)
    "stale_rows",  # by tier: valid rows of another block size, deleted on start
    "temps_removed",  # by tier: leftover temporaries of dead writers
    "files_skipped",  # by tier: not regular files (or unreadable) named like rows; left alone
)
SECONDS = ("pack", "save", "load", "lookup")


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter(dict.fromkeys(COUNTERS, 0))
        self._maps: dict[str, Counter[str]] = {name: Counter() for name in MAPS}
        self._maps["hits"].update(dict.fromkeys(("exact", "partial"), 0))
        self._maps["saves"].update(dict.fromkeys((r.label for r in SaveReason), 0))
        self._seconds: Counter[str] = Counter(dict.fromkeys(SECONDS, 0.0))

    def inc(self, name: str, n: int = 1, *, by: str | None = None) -> None:
        with self._lock:
            if by is None:
                self._counts[name] += n
            else:
                self._maps[name][by] += n

    def add_seconds(self, name: str, seconds: float) -> None:
        with self._lock:
            self._seconds[name] += seconds

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = dict(self._counts)
            out.update({name: dict(counts) for name, counts in self._maps.items()})
            out["seconds"] = dict(self._seconds)
        return out
