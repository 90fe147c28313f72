"""What the decode loop's parts share: its state, its status, and how a failure reads.

:class:`ModelLoop` (loop.py) is assembled from three parts, one concern each:
admission and sessions (admission.py), the runner that turns a plan into
forward passes and samples (runner.py), and finishing requests (finishing.py).
They share the attributes declared here, all owned by the loop thread.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kvllama.backend.protocol import Backend
from kvllama.engine.markers import MarkerStrings
from kvllama.engine.request import Request
from kvllama.engine.residents import ResidentPool
from kvllama.engine.sessions import SessionTable
from kvllama.engine.speculation import Drafter
from kvllama.engine.tool_memory import ToolCallMemory
from kvllama.engine.warm import WarmStart
from kvllama.errors import InternalEngineError, KvllamaError

if TYPE_CHECKING:
    from kvllama.events import FinishReason


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


REUSE_SOURCES = ("session", "slot", "live", "memory", "cache", "none")


def typed_error(exc: Exception) -> Exception:
    """What a request sees of a failure: kvllama's typed errors as they are, bugs as InternalEngineError."""
    if isinstance(exc, KvllamaError):
        return exc
    return InternalEngineError(
        f"internal error in the decode loop ({type(exc).__name__}: {exc}); see the kvllama.engine log"
    )


class LoopState:
    """The attributes every part of the loop reads and writes (set in ModelLoop.__init__)."""

    backend: Backend
    warm: WarmStart | None
    # Thinking / tool-call markers of this model, and the key that signs thinking.
    markers: MarkerStrings | None
    signing_key: bytes | None
    sessions: SessionTable
    residents: ResidentPool
    tool_memory: ToolCallMemory | None
    speculative_draft: int
    drafter: Drafter
    chunk_size: int
    align: int
    status: LoopStatus
    _waiting: deque[Request]
    _running: list[Request]
    # Requests with a prompt chunk in the forward pass running now (read by cancel()).
    _prefilling_now: frozenset[Request]

    if TYPE_CHECKING:  # the parts call each other through self
        def _fail(self, r: Request, exc: Exception) -> None: ...
        def _finish(self, r: Request, reason: FinishReason, stop: str | None = None) -> None: ...
        def _emit_error(self, r: Request, exc: Exception) -> None: ...
