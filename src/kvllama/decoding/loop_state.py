"""What the decode loop's parts share: its state, its status, and how a failure reads.

:class:`ModelLoop` (loop.py) is built from three named parts, one concern
each: :class:`~kvllama.decoding.admission.Admission` (sequence ids, sessions,
restores), the :class:`~kvllama.decoding.tick_runner.Runner` (a plan becomes forward
passes and samples) and the :class:`~kvllama.decoding.finishing.Finisher`
(done events, errors, slots given back). Each holds the one
:class:`LoopState` they share, owned by the loop thread.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from kvllama.backend.protocol import Backend
from kvllama.decoding.kept import KeptSequences
from kvllama.decoding.markers import MarkerStrings
from kvllama.decoding.request import Request
from kvllama.decoding.sessions import SessionTable
from kvllama.decoding.speculation import Drafter
from kvllama.decoding.tool_memory import ToolCallMemory
from kvllama.decoding.warm import WarmStart
from kvllama.errors import InternalEngineError, KvllamaError


class Phase(enum.StrEnum):
    """What the loop's last tick did (``model_info(id).phase``)."""

    IDLE = "idle"
    PREFILLING = "prefilling"
    GENERATING = "generating"


@dataclass
class LoopStatus:
    """Written only by the loop thread; safe to read from any thread."""

    phase: Phase = Phase.IDLE
    in_flight: int = 0
    waiting: int = 0
    last_cache_hit: dict[str, Any] = field(
        default_factory=lambda: {"kind": "cold", "prefix_len": 0, "source": "none"}
    )
    # Admitted requests and their reused prompt tokens by where the tokens came from
    # (CacheAccount.source): the cache's own hit counters see only "cache".
    reuse_requests: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REUSE_SOURCES, 0))
    reuse_tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REUSE_SOURCES, 0))
    prompt_tokens: int = 0
    admitted: int = 0
    finished_waiting: int = 0
    # False while the context is being rebuilt after a fatal llama.cpp error.
    healthy: bool = True
    # Times a failed llama.cpp context was rebuilt in place.
    context_rebuilds: int = 0


    def count_reuse(self, source: str, n_prompt: int, n_read: int) -> None:
        self.reuse_requests[source] = self.reuse_requests.get(source, 0) + 1
        self.reuse_tokens[source] = self.reuse_tokens.get(source, 0) + n_read
        self.prompt_tokens += n_prompt

    def prompt_reuse(self) -> dict[str, Any]:
        """A snapshot: requests and reused prompt tokens per source, and the share of prompt tokens reused."""
        reused = sum(v for k, v in self.reuse_tokens.items() if k != "none")
        return {"requests": dict(self.reuse_requests), "tokens": dict(self.reuse_tokens),
                "prompt_tokens": self.prompt_tokens,
                "reused_fraction": reused / self.prompt_tokens if self.prompt_tokens else 0.0}


REUSE_SOURCES = ("session", "kept", "live", "memory", "cache", "none")


def typed_error(exc: Exception) -> Exception:
    """What a request sees of a failure: kvllama's typed errors as they are, bugs as InternalEngineError."""
    if isinstance(exc, KvllamaError):
        return exc
    return InternalEngineError(
        f"internal error in the decode loop ({type(exc).__name__}: {exc}); see the kvllama.decoding log"
    )


class LoopState:
    """The state every part of the loop reads and writes, built once by ModelLoop.

    Owned by the loop thread (``status`` is also read, lock-free, by any thread).
    """

    def __init__(self, backend: Backend, *, warm: WarmStart | None, markers: MarkerStrings | None,
                 signing_key: bytes | None, sessions: SessionTable, kept: KeptSequences,
                 tool_memory: ToolCallMemory | None, speculative_draft: int, drafter: Drafter,
                 chunk_size: int, align: int) -> None:
        self.backend = backend
        self.warm = warm
        # Thinking / tool-call markers of this model, and the key that signs thinking.
        self.markers = markers
        self.signing_key = signing_key
        self.sessions = sessions
        self.kept = kept
        self.tool_memory = tool_memory
        self.speculative_draft = speculative_draft
        # Where drafts come from: prompt lookup, or a draft model (closed with the loop).
        self.drafter = drafter
        self.chunk_size = chunk_size
        # Prompt chunks end on multiples of this (see scheduler.py for why).
        self.align = align
        self.status = LoopStatus()
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        # Requests with a prompt chunk in the forward pass running now (read by cancel()).
        self.prefilling_now: frozenset[Request] = frozenset()
        # The LoRA adapter set of the tick being run (tick_runner.py).
        self.tick_adapters: tuple[tuple[str, float], ...] = ()
