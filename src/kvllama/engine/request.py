"""One generation request as the decode loop sees it, and where its events go."""

from __future__ import annotations

import asyncio
import enum
import itertools
import queue
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from kvllama.engine.params import SamplingParams
from kvllama.events import Event

_ids = itertools.count(1)


def new_request_id() -> str:
    return f"req-{next(_ids)}"


class EventSink(Protocol):
    """Receives a request's events on the decode thread; must never block it."""

    def put(self, event: Event) -> None: ...


class QueueSink:
    """For blocking consumers: an unbounded thread-safe queue."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[Event] = queue.SimpleQueue()

    def put(self, event: Event) -> None:
        self.queue.put(event)


class AsyncioSink:
    """For asyncio consumers: hands each event to the consumer's event loop.

    ``call_soon_threadsafe`` never blocks the decode thread, so a slow
    consumer only grows its own queue. If the consumer's loop is gone, events
    are dropped and ``gone`` tells the decode loop to cancel the request.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.gone = False

    def put(self, event: Event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the consumer's loop is closed
            self.gone = True


class Status(enum.Enum):
    WAITING = "waiting"
    PREFILLING = "prefilling"
    DECODING = "decoding"
    FINISHED = "finished"


@dataclass(eq=False)
class Request:
    id: str
    prompt: tuple[int, ...]
    params: SamplingParams
    sink: EventSink
    submitted_at: float = field(default_factory=time.perf_counter)
    status: Status = Status.WAITING
    seq_id: int | None = None
    sampler: Any = None
    # Tokens whose KV is in the sequence.
    n_computed: int = 0
    generated: list[int] = field(default_factory=list)
    # Sampled but not yet decoded: the next tick's row for this request.
    pending_token: int | None = None
    # Set from any thread; the loop honours it before its next tick.
    cancel_requested: bool = False
    admitted_at: float | None = None
    first_token_at: float | None = None
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    # Sticky session (engine/sessions.py) and a hook the engine uses to unmark it busy.
    session_id: str | None = None
    on_release: Any = None
    # --- KV cache (see engine/warm.py) ---
    cache_salt: str | None = None
    parent_key: bytes | None = None
    cache_hit_kind: str = "cold"
    # Prompt tokens restored from the cache, and the most this request added to it.
    cache_read: int = 0
    cache_created: int = 0
    finish_key: bytes | None = None
    # Prompt length at which to snapshot the prefill (an aligned boundary), if any.
    cold_point: int | None = None
    # Built at admission (engine/channels.py); a greedy chain for tool-call syntax if the model has markers.
    channels: Any = None
    greedy_sampler: Any = None

    @property
    def done(self) -> bool:
        return self.status is Status.FINISHED
