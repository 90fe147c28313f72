"""The Python entry point: ``kvllama.Engine``.

The engine is a registry of loaded models (string ids, never interned
symbols) and a router of calls to each model's decode loop. It validates
everything it is handed before a request is queued, so a bad request is a
typed exception in the caller's thread and never reaches the decode loop.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from kvllama.api.adapters import AdapterMethods
from kvllama.api.chat import ChatMethods
from kvllama.api.preparation import (
    chat_prompt,
    close_samplers,
    loop_request,
    prompt_tokens,
    resolve,
    tokenize_text,
)
from kvllama.api.probe_methods import ProbeMethods
from kvllama.api.session_methods import SessionMethods
from kvllama.api.spec_methods import SpecMethods
from kvllama.api.streams import AsyncRequestStream, RequestStream, asyncio_sink
from kvllama.api.text_methods import TextMethods
from kvllama.chat.prompt import ChatInput, ChatPrompt
from kvllama.chat.templates import resolve_template, template_stops
from kvllama.engine.loop import PREFILL_ALIGN, ModelLoop
from kvllama.engine.markers import markers_from_options
from kvllama.engine.request import EventSink, QueueSink, Request
from kvllama.engine.tool_memory import ToolCallMemory
from kvllama.engine.warm import SavePolicy, WarmStart
from kvllama.errors import (
    EngineClosedError,
    InvalidOptionError,
    InvalidRequestError,
    ModelBusyError,
    ModelExistsError,
    SessionBusyError,
    UnknownModelError,
)
from kvllama.kvcache import CacheConfig, KvCache
from kvllama.models.factory import BackendFactory, draft_model_for, llama_backend_factory
from kvllama.models.fingerprint import key_root
from kvllama.models.loaded import LoadedModel, ModelInfo
from kvllama.options import ModelOptions
from kvllama.request import GenerationRequest, Prompt
from kvllama.results import CompletionResult


class _DefaultCache:
    """The default cache: RAM and /dev/shm tiers on, disk off (built per engine, so
    ``$KVLLAMA_SHM_DIR`` is read when the engine starts). Pass
    ``CacheConfig(disk_dir=...)`` for rows that survive restarts."""


DEFAULT_CACHE = _DefaultCache()

# Most texts and tokens one embed() call takes. Embedding through a generative
# model computes its output layer for every token (llama.cpp cannot prune it),
# measured with the default model on one thread at 55-200 ms per short text and
# 7-17 ms per token (the machine's speed varies 2x from day to day), so these
# bounds keep one call under ~35 s (docs/measured/reliability.md).
MAX_EMBED_INPUTS = 128
MAX_EMBED_TOKENS = 2048


class Engine(TextMethods, ChatMethods, AdapterMethods, SpecMethods, ProbeMethods, SessionMethods):
    """Loads models and serves generation, tokenisation, templates and embeddings."""

    def __init__(
        self,
        *,
        cache: CacheConfig | _DefaultCache | None = DEFAULT_CACHE,
        save_policy: SavePolicy | None = None,
        thinking_key: bytes | str | None = None,
        backend_factory: BackendFactory | None = None,
    ) -> None:
        """``cache``: tier budgets and directories (None disables the KV cache).

        ``thinking_key`` signs thinking blocks (HMAC-SHA256); without it signatures are empty.
        """
        self.thinking_key = thinking_key.encode() if isinstance(thinking_key, str) else thinking_key
        self._factory = backend_factory or llama_backend_factory
        if isinstance(cache, _DefaultCache):
            cache = CacheConfig()
        self.cache: KvCache | None = KvCache(cache) if cache is not None else None
        self._save_policy = save_policy or SavePolicy()
        # The turns tool calls came from, for exact replay (engine/tool_memory.py).
        self.tool_memory = ToolCallMemory()
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()
        self._streams: weakref.WeakValueDictionary[str, RequestStream | AsyncRequestStream] = (
            weakref.WeakValueDictionary()
        )
        self._closed = False
        # Sessions with a request in flight, per (model id, cache salt, session id).
        self._busy_sessions: set[tuple[str, str | None, str]] = set()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- models -------------------------------------------------------------

    def load_model(
        self, model_id: str, path: str | os.PathLike[str] | None = None, **options: Any
    ) -> ModelInfo:
        """Load a GGUF file (no path: the embedded default) under ``model_id``."""
        if not isinstance(model_id, str) or not model_id.strip():
            raise InvalidRequestError("model_id must be a non-empty string")
        opts = ModelOptions.from_kwargs(**options)
        markers_from_options(opts)  # an unknown preset fails before loading
        with self._lock:
            self._check_open()
            if model_id in self._models:
                raise ModelExistsError(model_id)
        backend = self._factory(os.fspath(path) if path is not None else None, opts)
        if opts.speculative_draft and not backend.shape.exact_verify:
            backend.close()
            raise InvalidOptionError(
                "speculative_draft", opts.speculative_draft,
                "0 on this build and model: speculation needs verify passes computed as decode steps "
                "are (kvllama's patched llama.cpp on the CPU, see docs/kernel-patch.md, or canonical_decode)")
        try:
            _, source = resolve_template(None, backend.description.chat_template, opts.chat_template)
            warm = None
            if self.cache is not None:
                root = key_root(backend, opts)
                policy = replace(self._save_policy, boundary=min(PREFILL_ALIGN, opts.effective_chunk_size()),
                                 min_tail=backend.shape.min_chunk_rows)
                warm = WarmStart(self.cache, root, backend, policy)
            drafter = draft_model_for(backend, opts)
            loop = ModelLoop(
                backend, chunk_size=opts.effective_chunk_size(), name=model_id, warm=warm,
                keep_finished=opts.keep_finished, tool_memory=self.tool_memory,
                speculative_draft=opts.speculative_draft, drafter=drafter,
                markers=markers_from_options(opts), signing_key=self.thinking_key,
                burst_window=opts.burst_window_ms / 1000, settle_replies=opts.settle_replies,
            )
        except BaseException:
            backend.close()
            raise
        loaded = LoadedModel(model_id, backend, loop, opts, source)
        with self._lock:
            if model_id in self._models or self._closed:
                loop.close()
                backend.close()
                raise ModelExistsError(model_id) if not self._closed else EngineClosedError()
            self._models[model_id] = loaded
        return loaded.info()

    def unload_model(self, model_id: str, *, cancel: bool = False) -> None:
        """Free a model. With requests in flight: ModelBusyError, or cancel them if asked."""
        model = self._model(model_id)
        if not cancel and (model.loop.status.in_flight or model.loop.pending):
            raise ModelBusyError(
                f"model {model_id!r} has requests in flight; wait for them or pass cancel=True"
            )
        with self._lock:
            self._models.pop(model_id, None)
        model.loop.close()
        model.backend.close()

    def list_models(self) -> list[ModelInfo]:
        with self._lock:
            models = list(self._models.values())
        return [m.info() for m in models]

    def model_info(self, model_id: str) -> ModelInfo:
        return self._model(model_id).info()

    def in_flight(self) -> int:
        """Requests holding a sequence slot, over all models."""
        with self._lock:
            models = list(self._models.values())
        return sum(m.loop.status.in_flight for m in models)

    def pending(self, model_id: str | None = None) -> int:
        """Requests queued for a slot: of one model, or over all models."""
        if model_id is not None:
            return self._model(model_id).loop.pending
        with self._lock:
            models = list(self._models.values())
        return sum(m.loop.pending for m in models)

    def chat_template_source(self, model_id: str) -> str:
        """Where this model's chat template comes from (what ``model_info(id).chat_template_source`` says)."""
        return self._model(model_id).chat_template_source

    # --- generation ---------------------------------------------------------

    def complete(self, model_id: str, prompt: Prompt, **params: Any) -> CompletionResult:
        """Generate to the end and return the whole result."""
        return self.infer(model_id, prompt, **params).result()

    async def acomplete(self, model_id: str, prompt: Prompt, **params: Any) -> CompletionResult:
        return await self.ainfer(model_id, prompt, **params).result()

    def infer(self, model_id: str, prompt: Prompt, **params: Any) -> RequestStream:
        """Start a request; iterate the returned stream for its events."""
        return self.start(model_id, GenerationRequest.build(prompt, **params))

    def start(self, model_id: str, request: GenerationRequest) -> RequestStream:
        """:meth:`infer` for a request built already (``GenerationRequest.build``, an HTTP edge)."""
        model, loop_req = self._prepare(model_id, request, QueueSink())
        stream = RequestStream(loop_req, model.loop, model_id)
        self._start(model, stream)
        return stream

    def infer_many(self, model_id: str, prompts: Sequence[Prompt], **params: Any) -> list[RequestStream]:
        """Start one request per prompt, admitted together: their prompts prefill in the same
        passes, as a batched llama.cpp loop's would (one :meth:`infer` after another lets the
        first start alone). Streams in the prompts' order."""
        streams: list[RequestStream] = []
        try:
            for prompt in prompts:
                request = GenerationRequest.build(prompt, **params)
                model, loop_req = self._prepare(model_id, request, QueueSink())
                streams.append(RequestStream(loop_req, model.loop, model_id))
        except BaseException:
            for stream in streams:
                self._release(stream.request)
            raise
        if streams:
            self._start(self._model(model_id), *streams)
        return streams

    def ainfer(self, model_id: str, prompt: Prompt, **params: Any) -> AsyncRequestStream:
        """Like :meth:`infer`, for ``async for``; call it from a running event loop."""
        return self.astart(model_id, GenerationRequest.build(prompt, **params))

    def astart(self, model_id: str, request: GenerationRequest) -> AsyncRequestStream:
        """:meth:`ainfer` for a built request (see :meth:`asubmit` to prepare it off the event loop)."""
        model, loop_req = self._prepare(model_id, request, asyncio_sink())
        stream = AsyncRequestStream(loop_req, model.loop, model_id)
        self._start(model, stream)
        return stream

    async def asubmit(self, model_id: str, request: GenerationRequest) -> AsyncRequestStream:
        """Start a built request with its CPU work in a worker thread (what the HTTP server calls).

        Rendering a chat, tokenizing a long prompt and parsing a grammar can take
        a while; done on the event loop they would stall every other stream an
        HTTP server feeds.
        """
        sink = asyncio_sink()
        model, loop_req = await asyncio.to_thread(self._prepare, model_id, request, sink)
        stream = AsyncRequestStream(loop_req, model.loop, model_id)
        self._start(model, stream)
        return stream

    def cancel(self, request: RequestStream | AsyncRequestStream | str) -> bool:
        """Idempotent. Returns False if the id is unknown (finished and forgotten)."""
        stream = self._streams.get(request) if isinstance(request, str) else request
        if stream is None:
            return False
        stream.cancel()
        return True

    def resolve_request(self, model_id: str, request: GenerationRequest) -> GenerationRequest:
        """The request with its prompt as this model's token ids: a conversation rendered (once),
        its template's stops added and its shared prefixes found; ids checked against the vocabulary."""
        model = self._model(model_id)

        def build_chat(chat: ChatInput, find_save_points: bool) -> ChatPrompt:
            return self.chat_prompt(model_id, chat,
                                    find_save_points=find_save_points and self.saves_prompt_rows)

        return resolve(model.backend, request, build_chat)

    def chat_prompt(self, model_id: str, chat: ChatInput, *, find_save_points: bool = False) -> ChatPrompt:
        """A conversation's prompt as a request queues it: text, tokens, the template's stops, save points."""
        model = self._model(model_id)
        stops = template_stops(chat.template or model.chat_template_source)

        def render(messages: Any, system: Any, tools: Any) -> str:
            return self.apply_chat_template(model_id, messages, system=system, tools=tools,
                                            template=chat.template)

        return chat_prompt(model.backend, chat, render, stops, find_save_points=find_save_points)

    def _prepare(
        self, model_id: str, request: GenerationRequest, sink: EventSink
    ) -> tuple[LoadedModel, Request]:
        model = self._model(model_id)
        defaults = {i: scale for i, (_path, scale) in model.adapters.items()}
        resolved = self.resolve_request(model_id, request)
        loop_req = loop_request(model.backend, model.loop.markers, resolved, sink, defaults)
        session_id = loop_req.options.session_id
        if session_id is not None:
            try:
                self._claim_session(model_id, session_id, loop_req)
            except BaseException:
                close_samplers(loop_req)
                raise
        return model, loop_req

    def _claim_session(self, model_id: str, session_id: str, request: Request) -> None:
        """Fail fast if the session is busy; free it again when the request ends.

        Sessions are per tenant: the same id under another cache salt is another session.
        """
        slot = (model_id, request.options.cache_salt, session_id)
        with self._lock:
            if slot in self._busy_sessions:
                raise SessionBusyError(session_id)
            self._busy_sessions.add(slot)

        def release() -> None:
            with self._lock:
                self._busy_sessions.discard(slot)

        request.on_release = release

    def _start(self, model: LoadedModel, *streams: RequestStream | AsyncRequestStream) -> None:
        for stream in streams:
            self._streams[stream.id] = stream
        try:
            model.loop.submit(*(s.request for s in streams))
        except BaseException:
            for stream in streams:
                self._release(stream.request)
            raise

    @staticmethod
    def _release(request: Request) -> None:
        """A prepared request that never reached the loop: its session and samplers go back."""
        if request.on_release is not None:
            request.on_release()  # the session claimed in _prepare is not in use
        close_samplers(request)

    def prefill_only(
        self, model_id: str, prompt: Prompt, parent_key: bytes | None = None,
        cache_salt: str | None = None, session_id: str | None = None,
    ) -> bytes | None:
        """Decode a prompt into the cache without sampling; returns its finish key.

        Warms the cache before a burst of follow-ups that share this prefix.
        None when the cache is disabled or the save was dropped (pool full).
        """
        result = self.complete(model_id, prompt, max_tokens=0, parent_key=parent_key,
                               cache_salt=cache_salt, session_id=session_id)
        return result.finish_key

    def list_cached_prefixes(
        self, model_id: str, tokens: Prompt, cache_salt: str | None = None
    ) -> int:
        """Longest cached prefix of ``tokens`` across all tiers, in tokens (for routers)."""
        model = self._model(model_id)
        warm = model.loop.warm
        if warm is None:
            return 0
        ids = prompt_tokens(model.backend, tokens)
        return warm.cache.longest_prefix_len(warm.root(cache_salt), ids)

    @property
    def saves_prompt_rows(self) -> bool:
        """Whether prompts are cached, so that chat save points are worth computing."""
        return self.cache is not None

    def cache_metrics(self) -> dict[str, Any]:
        """Hits, misses, saves, evictions, bytes per tier, timings (empty when disabled)."""
        return self.cache.metrics() if self.cache is not None else {}

    def embed(self, model_id: str, texts: str | Sequence[str]) -> list[list[float]]:
        """One pooled vector per text (mean over tokens; last token where pooling is absent).

        Runs in the caller's thread on the model's embedding context, never on
        the decode thread: a call with thousands of inputs does not stall the
        streams being generated meanwhile. Calls to one model take turns.
        """
        items = [texts] if isinstance(texts, str) else list(texts)
        if not items or not all(isinstance(t, str) and t for t in items):
            raise InvalidRequestError("texts must be a non-empty string or list of them")
        if len(items) > MAX_EMBED_INPUTS:
            raise InvalidRequestError(
                f"{len(items)} texts in one embed call; at most {MAX_EMBED_INPUTS} (split the batch)"
            )
        model = self._model(model_id)
        token_lists = [tokenize_text(model.backend, f"texts[{i}]", t, add_special=True)
                       for i, t in enumerate(items)]
        total = sum(len(tokens) for tokens in token_lists)
        if total > MAX_EMBED_TOKENS:
            raise InvalidRequestError(
                f"{total} tokens in one embed call; at most {MAX_EMBED_TOKENS} (split the batch)"
            )
        with model.embed_lock:
            return [model.backend.embed(toks) for toks in token_lists]

    # --- lifecycle ----------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            models = list(self._models.values())
            self._models.clear()
        for m in models:
            m.loop.close()
            m.backend.close()
        if self.cache is not None:
            self.cache.close()

    def _model(self, model_id: str) -> LoadedModel:
        with self._lock:
            self._check_open()
            model = self._models.get(model_id)
        if model is None:
            raise UnknownModelError(model_id)
        return model

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosedError("the engine is closed")
