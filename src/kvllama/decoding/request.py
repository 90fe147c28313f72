"""One generation request as the decode loop sees it, and where its events go."""

from __future__ import annotations

import asyncio
import collections
import enum
import functools
import itertools
import queue
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from kvllama.decoding.spec_governor import SpeculationGovernor
from kvllama.events import CacheHitKind, Event
from kvllama.media.layout import PromptLayout
from kvllama.request.options import RequestOptions

if TYPE_CHECKING:
    from kvllama.backend.protocol import Sampler
    from kvllama.decoding.channels import Channels
from kvllama.sampling import SamplingParams

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


class _Mailbox:
    """Events for the sinks of one asyncio loop, handed over with one wake-up per batch.

    The decode thread emits a token for every running stream in a tick; one
    ``call_soon_threadsafe`` each would wake the consumers' loop (a self-pipe
    write and a read) once per token. Appending to a shared deque and waking
    the loop only when no delivery is pending makes it once per tick. Safe
    without a lock: the producer appends before it reads ``scheduled``, the
    loop clears ``scheduled`` before it drains, so an event is either drained
    by the delivery in flight or schedules the next one.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: collections.deque[tuple[asyncio.Queue[Event], Event]] = collections.deque()
        self.scheduled = False

    def post(self, target: asyncio.Queue[Event], event: Event) -> None:
        self.pending.append((target, event))
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        self.scheduled = False
        pending = self.pending
        while pending:
            target, event = pending.popleft()
            target.put_nowait(event)


_mailboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mailbox] = weakref.WeakKeyDictionary()


class AsyncioSink:
    """For asyncio consumers: hands each event to the consumer's event loop.

    Never blocks the decode thread, so a slow consumer only grows its own
    queue. If the consumer's loop is gone, events are dropped and ``gone``
    tells the decode loop to cancel the request. Create it on the loop's thread.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.gone = False
        mailbox = _mailboxes.get(loop)
        if mailbox is None:
            mailbox = _mailboxes[loop] = _Mailbox(loop)
        self._mailbox = mailbox

    def put(self, event: Event) -> None:
        if self.loop.is_closed():
            self.gone = True
            return
        try:
            self._mailbox.post(self.queue, event)
        except RuntimeError:  # the consumer's loop closed just now
            self.gone = True


class Status(enum.Enum):
    WAITING = "waiting"
    PREFILLING = "prefilling"
    DECODING = "decoding"
    FINISHED = "finished"


@dataclass(frozen=True)
class RequestSpec:
    """The request as submitted: nothing here changes while it runs."""

    id: str
    prompt: tuple[int, ...]
    params: SamplingParams
    options: RequestOptions = field(default_factory=RequestOptions)
    submitted_at: float = field(default_factory=time.perf_counter)
    # Where the prompt's media are (None: text only); media positions are computed from
    # embeddings, and resumes follow the layout's rules (kvllama.media.layout).
    layout: PromptLayout | None = None

    @functools.cached_property
    def decode_ids(self) -> tuple[int, ...]:
        """The prompt as the vocabulary ids a forward pass takes: a media prompt's tagged ids given
        back (``~t``; kvllama.media.layout), computed once; a text prompt as it is."""
        if self.layout is None:
            return self.prompt
        return tuple(t if t >= 0 else ~t for t in self.prompt)


@dataclass(frozen=True)
class ParkedState:
    """A preempted request's KV state blob, and when it was parked."""

    blob: bytes
    since: float


@dataclass
class Timing:
    admitted_at: float | None = None
    first_token_at: float | None = None
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    # Preemption (decoding/preemption.py): times parked, seconds parked, and since when now.
    preemptions: int = 0
    preempted_seconds: float = 0.0


@dataclass
class CacheAccount:
    """What the KV cache did for this request (decoding/warm.py fills it)."""

    hit_kind: CacheHitKind = "cold"
    # Prompt tokens restored, and the most tokens this request added to the cache.
    read: int = 0
    created: int = 0
    finish_key: bytes | None = None
    # The row restored into the sequence, while the sequence still holds exactly it.
    restored_key: bytes | None = None
    # Where the reused prompt tokens (``read``) came from: "session" (a parked sticky
    # session), "kept" (a finished request kept in its slot, taken over), "live" (copied from
    # another live sequence, which goes on: decoding/live_sources.py), "memory" (a row saved
    # moments ago, still in memory), "cache" (a row of the KV cache), or "none".
    source: str = "none"
    # Prompt length at which to snapshot the prefill (an aligned boundary), if any.
    cold_point: int | None = None
    # Shared-prefix save points inside the prompt (decoding/warm.py picks them at admission;
    # a follower that could restore one adds it while this request still prefills).
    prefix_points: set[int] = field(default_factory=set)

    def next_save_point(self, n_computed: int) -> int | None:
        """The first save point past ``n_computed``: the prefill stops a chunk there."""
        ahead = [p for p in (self.cold_point, *self.prefix_points) if p is not None and p > n_computed]
        return min(ahead) if ahead else None


@dataclass(eq=False)
class Request:
    """A request's decode state, owned by the loop thread (``cancel_requested`` excepted)."""

    spec: RequestSpec
    sink: EventSink
    status: Status = Status.WAITING
    seq_id: int | None = None
    # Speculative decoding: this step's draft, and the request's draft/accept counts.
    draft: tuple[int, ...] = ()
    drafted: int = 0
    accepted: int = 0
    # Seconds this step's draft took to make, and whether drafting pays (decoding/spec_governor.py).
    draft_seconds: float = 0.0
    governor: SpeculationGovernor = field(default_factory=SpeculationGovernor)
    # Tokens whose KV is in the sequence.
    n_computed: int = 0
    # Leading tokens whose KV came from prompt chunks of MIN_CHUNK_ROWS+ rows (or a cache
    # row or session made of those): the part a cold run of the same tokens computes the
    # same way. Decode rows never count (docs/measured/exactness.md), so only this part is reused.
    exact_len: int = 0
    generated: list[int] = field(default_factory=list)
    # Sampled but not yet decoded: the next tick's row for this request.
    pending_token: int | None = None
    # Set from any thread; the loop honours it before its next tick.
    cancel_requested: bool = False
    # Built before submission (grammar parsing stays off the loop); a greedy chain for
    # tool-call syntax if the model has markers; event channels built at admission.
    sampler: Sampler | None = None
    greedy_sampler: Sampler | None = None
    channels: Channels | None = None
    # A hook the engine uses to unmark the request's session busy.
    on_release: Callable[[], None] | None = None
    timing: Timing = field(default_factory=Timing)
    cache: CacheAccount = field(default_factory=CacheAccount)
    # The sequence's state while a request of higher priority holds its slot (decoding/preemption.py).
    parked: ParkedState | None = None

    @property
    def id(self) -> str:
        return self.spec.id

    def add_release(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` too when the request ends (hooks run newest first, each even if one fails)."""
        earlier = self.on_release

        def both() -> None:
            try:
                hook()
            finally:
                if earlier is not None:
                    earlier()

        self.on_release = both

    @property
    def prompt(self) -> tuple[int, ...]:
        return self.spec.prompt

    @property
    def params(self) -> SamplingParams:
        return self.spec.params

    @property
    def options(self) -> RequestOptions:
        return self.spec.options

    @property
    def done(self) -> bool:
        return self.status is Status.FINISHED


# Resume points above a sliding window are multiples of this (the prefill alignment).
RESUME_GRID = 64


def resume_point(n: int, swa_window: int) -> int:
    """The longest exact resume point at most ``n`` tokens long.

    A sequence's state keeps only the sliding-window layers' last ``n_swa``
    positions, and a restore (or a cut followed by llama.cpp re-placing
    cells) puts them at other cell indices than a cold run did. Attention
    sums over cells in vector lanes by cell index, so the shift must be a
    multiple of the lane grouping: measured, a 1,019-token row restored and
    continued differs from a cold run (max |delta logit| 0.29), 900 and 1,000
    too, while 768, 960 and 1,024 are bit-exact (docs/measured/exactness.md).
    """
    if swa_window and n > swa_window:
        return n // RESUME_GRID * RESUME_GRID
    return n


def prompt_resume_point(layout: PromptLayout | None, n: int, swa_window: int) -> int:
    """:func:`resume_point` for a prompt that may hold media: also on its layout's points
    (kvllama.media.layout), lowered until both rules agree."""
    if layout is None:
        return resume_point(n, swa_window)
    while (fitted := resume_point(layout.resume_point(n), swa_window)) != n:
        n = fitted
    return n
