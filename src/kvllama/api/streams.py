"""Handles returned by ``infer()`` and ``ainfer()``: iterate them for events.

A stream that is abandoned before its done event (a ``break`` out of the
loop, a closed HTTP connection, garbage collection) cancels its request, so
a consumer that walks away never keeps a sequence slot busy.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

from kvllama.decoding.request import AsyncioSink, QueueSink, Request
from kvllama.events import DoneEvent, ErrorEvent, Event
from kvllama.results import CompletionResult, ResultBuilder

if TYPE_CHECKING:
    from kvllama.decoding.loop import ModelLoop


class _StreamBase:
    def __init__(self, request: Request, loop: ModelLoop, model_id: str) -> None:
        self.request = request
        self.model_id = model_id
        self._loop = loop
        self._finished = False

    @property
    def id(self) -> str:
        return self.request.id

    def cancel(self) -> None:
        """Idempotent; the request stops before its next decode step."""
        if not self._finished:
            self._loop.cancel(self.request)

    def _note(self, event: Event) -> bool:
        """True when ``event`` ends the stream."""
        if isinstance(event, DoneEvent | ErrorEvent):
            self._finished = True
            return True
        return False


class RequestStream(_StreamBase):
    """Blocking iterator over a request's events."""

    def __iter__(self) -> Iterator[Event]:
        sink = self.request.sink
        assert isinstance(sink, QueueSink)
        try:
            while not self._finished:
                event = sink.queue.get()
                self._note(event)
                yield event
        finally:
            self.cancel()

    def result(self) -> CompletionResult:
        builder = ResultBuilder()
        for event in self:
            builder.add(event)
        return builder.result()


class AsyncRequestStream(_StreamBase):
    """Async iterator over a request's events (``async for event in stream``)."""

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    async def _events(self) -> AsyncIterator[Event]:
        sink = self.request.sink
        assert isinstance(sink, AsyncioSink)
        try:
            while not self._finished:
                event = await sink.queue.get()
                self._note(event)
                yield event
        finally:
            self.cancel()

    async def result(self) -> CompletionResult:
        builder = ResultBuilder()
        async for event in self:
            builder.add(event)
        return builder.result()


def asyncio_sink() -> AsyncioSink:
    return AsyncioSink(asyncio.get_running_loop())
