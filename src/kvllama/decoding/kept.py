"""Finished sequences left in their slots until a slot is needed: the next prompt may start like them.

llama-server keeps each slot's last prompt in KV and reuses its common
prefix with the next request; kvllama does the same for every request that
finishes without a ``session_id``. A kept sequence holds the canonical part of
the finished request (its prompt, cut to what prompt chunks computed; see
``Finishing._cut_to_exact``), so a request that repeats or continues it
(the next turn of a chat client that sends the whole conversation, the
same prompt again) keeps the shared part in place: no restore, and the cut
may fall anywhere (a live sequence keeps its cells where a cold run put
them), so only the prompt's last ``MIN_CHUNK_ROWS`` tokens are prefilled.

Kept sequences cost nothing but the slot: llama.cpp's KV is allocated for every
slot up front. A request whose prompt continues a kept sequence whole takes its
slot over; one that shares only a part copies it (decoding/live_sources.py)
into a free id, else into the least recently used other kept sequence's slot.
Their rows are already in the cache (at finish), so a kept sequence is dropped
without a save. Loop thread only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class KeptSequence:
    seq_id: int
    # The tokens whose KV the sequence holds.
    tokens: tuple[int, ...]
    cache_salt: str | None
    last_used: float = field(default_factory=time.monotonic)
    adapter_key: tuple[tuple[str, float], ...] = ()
    # The finished request's prompt and reply: the reply's KV (decode-computed) was cut off,
    # and idle time recomputes it as prompt chunks (decoding/settling.py).
    transcript: tuple[int, ...] = ()
    # The token greedy decoding puts after ``tokens`` (a plain-greedy request's first token, from
    # the prompt's last row), while the slot holds exactly its prompt: verify uses it (verify.py).
    greedy_next: int | None = None


class KeptSequences:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.by_seq: dict[int, KeptSequence] = {}

    def __len__(self) -> int:
        return len(self.by_seq)

    def keep(self, kept_seq: KeptSequence) -> None:
        self.by_seq[kept_seq.seq_id] = kept_seq

    def seq_ids(self) -> list[int]:
        return list(self.by_seq)

    def take_oldest(self, spare: object = None) -> KeptSequence | None:
        """The least recently used kept sequence other than ``spare`` (a source about to be copied)."""
        others = [x for x in self.by_seq.values() if x is not spare]
        if not others:
            return None
        oldest = min(others, key=lambda x: x.last_used)
        return self.by_seq.pop(oldest.seq_id)

    def clear(self) -> None:
        self.by_seq.clear()
