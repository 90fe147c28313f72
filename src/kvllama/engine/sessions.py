"""Sticky sessions: a conversation keeps its live sequence between turns.

A request with a ``session_id`` leaves its sequence parked when it finishes
(the KV of every token it computed stays in llama.cpp). The next turn of that
session takes the parked sequence back; if its prompt extends the parked
tokens, only the new suffix is prefilled (``cache_hit_kind = "sticky"``). A
divergent tail is cut off where the model's memory allows it; sliding-window
layers may refuse, and then the turn falls back to the KV cache.

Parked sessions hold sequence slots, so the table gives them back: when
requests are waiting for a slot (least recently used first), when a session
has been idle longer than ``idle_timeout``, and whenever parked sessions hold
more than ``max_share`` of the slots. The loop saves a session to the cache
before it lets go of it, so an evicted conversation resumes from the cache.
All of this runs on the loop thread.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

# A session is named by the client's id within its tenant (the cache salt): two
# tenants that pick the same id never see, wait on or end each other's session.
SessionKey = tuple[str | None, str]


@dataclass
class Session:
    id: str
    seq_id: int
    # The tokens whose KV the parked sequence holds.
    tokens: tuple[int, ...]
    cache_salt: str | None
    last_used: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> SessionKey:
        return (self.cache_salt, self.id)


@dataclass(frozen=True)
class SessionPolicy:
    # Seconds a parked session may stay idle before its slot is given back.
    idle_timeout: float = 300.0
    # Largest fraction of the sequence slots that parked sessions may hold.
    max_share: float = 0.5


class SessionTable:
    def __init__(self, n_seq_max: int, policy: SessionPolicy) -> None:
        self.policy = policy
        self.parked: dict[SessionKey, Session] = {}
        self._max_parked = max(1, int(n_seq_max * policy.max_share))

    def take(self, key: SessionKey) -> Session | None:
        return self.parked.pop(key, None)

    def park(self, session: Session) -> None:
        session.last_used = time.monotonic()
        self.parked[session.key] = session

    def seq_ids(self) -> list[int]:
        return [s.seq_id for s in self.parked.values()]

    def to_release(self, waiting: int, free_slots: int, now: float | None = None) -> list[Session]:
        """Sessions to give back now: idle too long, over the share, or slots needed by waiters."""
        now = time.monotonic() if now is None else now
        by_age = sorted(self.parked.values(), key=lambda s: s.last_used)
        out = [s for s in by_age if now - s.last_used > self.policy.idle_timeout]
        keep = [s for s in by_age if s not in out]
        over = len(keep) - self._max_parked
        need = max(0, waiting - free_slots - len(out))
        release = max(over, need)
        out.extend(keep[: max(0, release)])
        return out

    @staticmethod
    def reusable_prefix(stored: Sequence[int], prompt: Sequence[int]) -> int:
        """Tokens of ``stored`` the new prompt keeps (at most len(prompt) - 1: one must be decoded)."""
        return min(shared_prefix(stored, prompt), len(prompt) - 1)


def shared_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share (compared a block at a time, then token by token)."""
    n, i, step = min(len(a), len(b)), 0, 256
    while i + step <= n and a[i : i + step] == b[i : i + step]:
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return i
