"""``Engine.routing_snapshot``: what a router in front of several engines needs to know about one.

A router that sends each request to the engine holding the longest cached
prefix of its prompt (kvllama.ray does) cannot ask every engine about every
prompt: that is a network round trip per engine per request. Instead each
engine publishes, every second or so, a digest of what it holds: the chain
values (kvcache/keys.py) of every 64-token-aligned prefix that a cached row,
a finished request kept in its slot or a parked session covers, plus its
key root so the router can compute a prompt's chain values the same way.
The router then finds the longest run of a prompt's leading blocks in each
engine's digest: the engine's own notion of a prefix, not a guess from past
traffic. Values are 16-byte hashes, never tokens, so a digest does not
carry prompt text.
"""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kvllama.errors import EngineClosedError
from kvllama.kvcache.keys import KeyChain, KeyRoot

if TYPE_CHECKING:
    from kvllama.decoding.loop import ModelLoop
    from kvllama.decoding.warm import WarmStart
    from kvllama.models.loaded import LoadedModel

# Bound on one digest (16 bytes each: 1 MiB), so a huge cache cannot make the
# periodic report expensive; past it the digest is partial (a router then
# under-estimates some matches, which costs a prefill, never a wrong reply).
MAX_DIGEST_BLOCKS = 65_536
# How long to wait for the decode loop to list its slots before reporting without them.
SLOT_LIST_TIMEOUT = 2.0


@dataclass(frozen=True)
class RoutingSnapshot:
    """One engine's view of one model, at ``taken_at`` (time.time())."""

    model_id: str
    # The key root of rows without a cache salt or adapters (None: the model has no cache).
    root: KeyRoot | None
    block_size: int
    blocks: frozenset[bytes]
    # Parked sticky sessions, as (cache_salt, session_id).
    sessions: frozenset[tuple[str | None, str]]
    pending: int
    in_flight: int
    n_seq_max: int
    healthy: bool = True
    taken_at: float = field(default_factory=time.time)

    @property
    def free_slots(self) -> int:
        return max(0, self.n_seq_max - self.in_flight - len(self.sessions))

    @property
    def load(self) -> int:
        """Requests queued or running."""
        return self.pending + self.in_flight


def routing_snapshot(model: LoadedModel) -> RoutingSnapshot:
    """The digest and load of one model for a cache-affinity router (module docstring)."""
    loop = model.loop
    warm = loop.warm
    blocks: set[bytes] = set()
    sessions: frozenset[tuple[str | None, str]] = frozenset()
    try:
        held, sessions = loop.call(lambda: _slot_blocks(loop, warm)).result(SLOT_LIST_TIMEOUT)
        blocks.update(held)
    except (concurrent.futures.TimeoutError, EngineClosedError):
        pass  # a busy or closing loop: report the cache alone
    if warm is not None:
        for value in warm.cache.block_values():
            if len(blocks) >= MAX_DIGEST_BLOCKS:
                break
            blocks.add(value)
    return RoutingSnapshot(
        model_id=model.id,
        root=warm.root(None) if warm is not None else None,
        block_size=warm.cache.config.block_size if warm is not None else 64,
        blocks=frozenset(blocks),
        sessions=sessions,
        pending=loop.pending,
        in_flight=loop.status.in_flight,
        n_seq_max=model.backend.shape.n_seq_max,
        healthy=loop.healthy,
    )


def _slot_blocks(
    loop: ModelLoop, warm: WarmStart | None
) -> tuple[list[bytes], frozenset[tuple[str | None, str]]]:
    """On the loop thread: chain values of what parked sessions and kept sequences hold, and the sessions."""
    parked = list(loop.sessions.parked.values())
    sessions = frozenset(s.key for s in parked)
    if warm is None:
        return [], sessions
    block = warm.cache.config.block_size
    values: list[bytes] = []
    for held in [*parked, *loop.kept.by_seq.values()]:
        root = warm.root(held.cache_salt, held.adapter_key).digest
        values.extend(KeyChain(root, held.tokens, block).block_values(len(held.tokens) // block))
    return values[:MAX_DIGEST_BLOCKS], sessions
