"""Driving one engine request from an HTTP handler.

:class:`Generation` wraps the engine's :class:`AsyncRequestStream`: it feeds
every event to a :class:`ResultBuilder` (the one reducer the Python API uses
too), keeps the content deltas each event yields for a stream writer to
render (a non-streamed reply renders their fold, ``builder.reply``, so the
two cannot disagree), meters time to first token and inter-token latency,
and cancels the request when it is closed early.

:func:`until_disconnect` covers the stretch before a response starts (a
queued or prefilling request, or a whole non-streamed generation): Starlette
only notices a vanished client once a streaming body is being sent, so until
then we watch the ASGI receive channel ourselves and cancel on disconnect.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Protocol, TypeVar

from starlette.requests import Request

from kvllama.api.streams import AsyncRequestStream
from kvllama.events import DoneEvent, ErrorEvent, Event, TokenEvent
from kvllama.replies import Delta, Reply
from kvllama.request import GenerationRequest
from kvllama.results import CompletionResult, ResultBuilder
from kvllama.server.errors import ClientDisconnected
from kvllama.server.state import ServerState

T = TypeVar("T")


class StreamWriter(Protocol):
    """Renders one API family's SSE frames: from each event's content deltas, then the result."""

    def start(self) -> list[str]: ...
    def on_event(self, event: Event, deltas: Sequence[Delta]) -> list[str]: ...
    def finish(self, result: CompletionResult, reply: Reply) -> list[str]: ...
    def error(self, exc: BaseException) -> list[str]: ...


class Generation:
    """One admitted request as a handler drives it."""

    def __init__(self, state: ServerState, name: str, stream: AsyncRequestStream, started: float) -> None:
        self.name = name
        self.stream = stream
        self.builder = ResultBuilder()
        # The content deltas the last event yielded (rendered by a stream writer).
        self.deltas: list[Delta] = []
        self._state = state
        self._events: AsyncIterator[Event] = aiter(stream)
        self._started = started
        self._last_token: float | None = None
        self._first_token: float | None = None
        # Labelled once: prometheus_client's labels() takes a lock and a dict lookup per call.
        self._ttft = state.metrics.ttft.labels(name)
        self._itl = state.metrics.itl.labels(name)

    @property
    def prompt_tokens(self) -> int:
        return len(self.stream.request.prompt)

    async def next_event(self) -> Event | None:
        """The next event (folded, its deltas in :attr:`deltas`, metered), or None after the last."""
        try:
            event = await anext(self._events)
        except StopAsyncIteration:
            return None
        self.deltas = self.builder.add(event)
        self._meter(event)
        return event

    async def drain(self) -> CompletionResult:
        """Read to the end; the result (content in ``builder.reply``), or the request's typed error raised."""
        while await self.next_event() is not None:
            pass
        return self.builder.result()

    def result(self) -> CompletionResult:
        return self.builder.result()

    async def aclose(self) -> None:
        """Cancel (idempotent, a no-op after the done event) and release the event iterator.

        The cancel comes first and is synchronous, so it happens even when this
        runs inside a task that is itself being cancelled.
        """
        self.stream.cancel()
        await self._events.aclose()  # type: ignore[attr-defined]

    def _meter(self, event: Event) -> None:
        if isinstance(event, TokenEvent):
            now = time.perf_counter()
            if self._last_token is None:
                self._first_token = now
                self._ttft.observe(now - self._started)
            else:
                self._itl.observe(now - self._last_token)
            self._last_token = now
        elif isinstance(event, DoneEvent):
            now, first = time.perf_counter(), self._first_token
            ttft = None if first is None else first - self._started
            self._state.metrics.observe_result(self.name, self.builder.result(), ttft, now - self._started)


async def start(
    state: ServerState, name: str, model_id: str, generation: GenerationRequest, started: float,
) -> Generation:
    """Queue a request (typed errors such as ContextOverflowError are raised here, before any body).

    Rendering a chat, tokenizing and grammar parsing run in a worker thread
    (``Engine.asubmit``), so a huge prompt does not stall the event loop that
    feeds every stream.
    """
    state.check_capacity(name, model_id)
    stream = await state.engine.asubmit(model_id, generation)
    return Generation(state, name, stream, started)


async def first_event(request: Request, gen: Generation) -> Event:
    """Wait for the first event before any response header is sent.

    Errors that only show at admission (a grammar that does not parse) then
    still get a proper 4xx status instead of an error frame inside a 200 stream.
    """
    try:
        event = await until_disconnect(request, gen.next_event())
    except BaseException:
        await gen.aclose()
        raise
    if event is None or isinstance(event, ErrorEvent):
        await gen.aclose()
        gen.result()  # raises the request's typed error
        raise RuntimeError("stream ended without events")  # pragma: no cover
    return event


async def complete(request: Request, gen: Generation) -> CompletionResult:
    """Run a non-streamed request to the end, cancelling it if the client leaves."""
    try:
        return await until_disconnect(request, gen.drain())
    finally:
        await gen.aclose()


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it and raise ClientDisconnected."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
        await asyncio.wait({task, watch})
    if task.cancelled():
        raise ClientDisconnected()
    return task.result()


async def _disconnected(request: Request) -> None:
    # The body has been read, so the next ASGI message can only be the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.05)


async def stream_frames(gen: Generation, first: Event, writer: StreamWriter) -> AsyncIterator[str]:
    """The SSE body: frames for ``first`` and every later event, then the closing frames.

    ``first`` is the last event read (by :func:`first_event`), so ``gen.deltas`` are still its deltas.

    Closing the generator early (the client left, Starlette cancelled the
    response) runs the ``finally``, which cancels the request and frees its slot.
    """
    try:
        for frame in writer.start():
            yield frame
        event: Event | None = first
        while event is not None:
            if isinstance(event, ErrorEvent):
                for frame in writer.error(event.error):
                    yield frame
                return
            for frame in writer.on_event(event, gen.deltas):
                yield frame
            if isinstance(event, DoneEvent):
                for frame in writer.finish(gen.result(), gen.builder.reply):
                    yield frame
                return
            event = await gen.next_event()
    except Exception as exc:  # headers are sent: the error can only travel as a frame
        for frame in writer.error(exc):
            yield frame
    finally:
        await gen.aclose()
