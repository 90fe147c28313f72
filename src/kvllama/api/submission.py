"""Taking a :class:`~kvllama.request.GenerationRequest` to a model's decode loop, and back as a stream.

Preparing a request (rendering its chat, tokenizing, parsing its grammar,
building its samplers) runs in the caller's thread, never on the decode
thread, and everything model-bound is checked there (api/preparation.py),
so a bad request is a typed exception before it is queued. A prepared
request that never reaches the loop gives its session and samplers back.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from kvllama.api.models import ModelRegistry
from kvllama.api.preparation import chat_prompt, close_samplers, loop_request, resolve
from kvllama.api.sessions import Sessions
from kvllama.api.streams import AsyncRequestStream, RequestStream, asyncio_sink
from kvllama.api.text import TextTools
from kvllama.chat.prompt import ChatInput, ChatPrompt
from kvllama.chat.templates import template_stops
from kvllama.decoding.request import EventSink, QueueSink, Request
from kvllama.models.loaded import LoadedModel
from kvllama.request import GenerationRequest

Stream = RequestStream | AsyncRequestStream


class Submissions:
    def __init__(self, models: ModelRegistry, sessions: Sessions, text: TextTools,
                 saves_prompt_rows: Callable[[], bool]) -> None:
        self._models = models
        self._sessions = sessions
        self._text = text
        # Whether prompts are cached, so that a chat's save points are worth finding.
        self._saves_prompt_rows = saves_prompt_rows
        # Live streams by request id (for Engine.cancel by id).
        self._streams: weakref.WeakValueDictionary[str, Stream] = weakref.WeakValueDictionary()

    def start(self, model_id: str, request: GenerationRequest) -> RequestStream:
        model, loop_req = self.prepare(model_id, request, QueueSink())
        stream = RequestStream(loop_req, model.loop, model_id)
        self._submit(model, stream)
        return stream

    def start_many(self, model_id: str, requests: Sequence[GenerationRequest]) -> list[RequestStream]:
        """Prepared one by one, submitted together (their prompts prefill in the same passes)."""
        streams: list[RequestStream] = []
        try:
            for request in requests:
                model, loop_req = self.prepare(model_id, request, QueueSink())
                streams.append(RequestStream(loop_req, model.loop, model_id))
        except BaseException:
            for stream in streams:
                release(stream.request)
            raise
        if streams:
            self._submit(model, *streams)
        return streams

    def astart(self, model_id: str, request: GenerationRequest) -> AsyncRequestStream:
        model, loop_req = self.prepare(model_id, request, asyncio_sink())
        stream = AsyncRequestStream(loop_req, model.loop, model_id)
        self._submit(model, stream)
        return stream

    async def asubmit(self, model_id: str, request: GenerationRequest) -> AsyncRequestStream:
        sink = asyncio_sink()
        prepared = asyncio.ensure_future(asyncio.to_thread(self.prepare, model_id, request, sink))
        try:
            model, loop_req = await asyncio.shield(prepared)
        except asyncio.CancelledError:
            # The caller left (a client that disconnected while its model loaded): the worker
            # thread runs on, so what it prepares (the model held, a session claimed) is given
            # back when it is done instead of being held for ever.
            prepared.add_done_callback(_release_prepared)
            raise
        stream = AsyncRequestStream(loop_req, model.loop, model_id)
        self._submit(model, stream)
        return stream

    def stream(self, request_id: str) -> Stream | None:
        return self._streams.get(request_id)

    def resolve(self, model_id: str, request: GenerationRequest) -> GenerationRequest:
        with self._models.use(model_id) as model:
            return self._resolve(model, request)

    def chat_prompt(self, model_id: str, chat: ChatInput, *, find_save_points: bool = False) -> ChatPrompt:
        with self._models.use(model_id) as model:
            return self._chat_prompt(model, chat, find_save_points)

    def prepare(
        self, model_id: str, request: GenerationRequest, sink: EventSink
    ) -> tuple[LoadedModel, Request]:
        """The loop's request, built and checked (its session claimed, its model held until it
        ends, loaded first if need be); not yet submitted."""
        model = self._models.acquire(model_id)
        try:
            defaults = {i: scale for i, (_path, scale) in model.adapters.items()}
            loop_req = loop_request(model.backend, model.loop.markers, self._resolve(model, request), sink,
                                    defaults)
        except BaseException:
            self._models.release(model_id)
            raise
        keep_alive = request.options.keep_alive
        loop_req.add_release(lambda: self._models.release(model_id, keep_alive))
        session_id = loop_req.options.session_id
        if session_id is not None:
            try:
                self._sessions.claim(model_id, session_id, loop_req)
            except BaseException:
                release(loop_req)
                raise
        return model, loop_req

    def _resolve(self, model: LoadedModel, request: GenerationRequest) -> GenerationRequest:
        def build_chat(chat: ChatInput, find_save_points: bool) -> ChatPrompt:
            return self._chat_prompt(model, chat, find_save_points and self._saves_prompt_rows())

        return resolve(model.backend, request, build_chat)

    def _chat_prompt(self, model: LoadedModel, chat: ChatInput, find_save_points: bool) -> ChatPrompt:
        stops = template_stops(chat.template or model.chat_template_source)

        def render(messages: Any, system: Any, tools: Any) -> str:
            return self._text.render_chat(model, messages, system, tools, chat.template)

        return chat_prompt(model.backend, chat, render, stops, find_save_points=find_save_points)

    def _submit(self, model: LoadedModel, *streams: Stream) -> None:
        for stream in streams:
            self._streams[stream.id] = stream
        try:
            model.loop.submit(*(s.request for s in streams))
        except BaseException:
            for stream in streams:
                release(stream.request)
            raise


def _release_prepared(done: asyncio.Future[tuple[LoadedModel, Request]]) -> None:
    if not done.cancelled() and done.exception() is None:
        release(done.result()[1])


def release(request: Request) -> None:
    """A prepared request that never reached the loop: its session and samplers go back."""
    if request.on_release is not None:
        request.on_release()  # the session claimed in prepare is not in use
    close_samplers(request)
