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
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from kvllama.tokens import shared_prefix

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
    # The whole conversation so far (last prompt + reply), which ``continue_session`` extends;
    # ``tokens`` is only what the sequence holds (the reply is re-prefilled, see finishing.py).
    transcript: tuple[int, ...] = ()
    # The LoRA adapters (by sha256) the sequence was computed with: only the same set resumes it.
    adapter_key: tuple[tuple[str, float], ...] = ()

    @property
    def key(self) -> SessionKey:
        return (self.cache_salt, self.id)


@dataclass(frozen=True)
class SessionPolicy:
    # Seconds a parked session may stay idle before its slot is given back.
    idle_timeout: float = 300.0
    # Largest fraction of the sequence slots that parked sessions may hold.
    max_share: float = 0.5


# Transcripts kept for ``continue_session`` after a session's slot is given back (an LRU).
MAX_TRANSCRIPTS = 4096


class SessionTable:
    def __init__(self, n_seq_max: int, policy: SessionPolicy) -> None:
        self.policy = policy
        self.parked: dict[SessionKey, Session] = {}
        self.transcripts: OrderedDict[SessionKey, tuple[int, ...]] = OrderedDict()
        self._max_parked = max(1, int(n_seq_max * policy.max_share))

    def take(self, key: SessionKey) -> Session | None:
        return self.parked.pop(key, None)

    def park(self, session: Session) -> None:
        session.last_used = time.monotonic()
        self.parked[session.key] = session
        if session.transcript:
            self.transcripts[session.key] = session.transcript
            self.transcripts.move_to_end(session.key)
            while len(self.transcripts) > MAX_TRANSCRIPTS:
                self.transcripts.popitem(last=False)

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

