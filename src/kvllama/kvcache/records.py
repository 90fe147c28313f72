"""What the cache hands back: a hit to load, and row descriptions for tools."""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Any, Literal

from kvllama.kvcache.keys import CacheKey

HitKind = Literal["exact", "partial"]
# "shared": a longer row that starts like the prompt, restored and cut back to the shared part.
HitSource = Literal["exact_key", "parent", "prefix", "shared"]


@dataclass(frozen=True)
class CacheHit:
    """A row confirmed (by comparing token ids) to hold the state of ``tokens[:n_tokens]``."""

    key: CacheKey
    n_tokens: int
    tier: str  # where the row was at lookup time (it may move before load; load follows it)
    kind: HitKind  # "exact" if n_tokens == max_len, else "partial": prefill the rest
    source: HitSource  # which lookup step found it
    tokens: array = field(repr=False, compare=False)  # the confirmed ids; load compares them again


@dataclass(frozen=True)
class RowInfo:
    """One row as ``kvllama cache list`` / ``inspect`` shows it."""

    tier: str
    key: str  # hex
    n_tokens: int
    size: int  # bytes
    hits: int
    age: float  # seconds since the row was saved
    idle: float  # seconds since it was last saved or loaded
    reason: str  # cold | continued | finish | evict | shutdown | prefill
    created: float  # unix time
    last_used: float  # unix time
    key_inputs: dict[str, Any] | None = None  # the KeyRoot description (inspect only)
