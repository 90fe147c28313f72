"""The Python entry point: ``kvllama.Engine``.

The engine is a facade over named parts, each in its own module and each
reachable as an attribute:

- ``models`` (:class:`~kvllama.api.models.ModelRegistry`): loaded models by id;
- ``submissions`` (:class:`~kvllama.api.submission.Submissions`): a
  :class:`~kvllama.request.GenerationRequest` prepared, checked and queued
  on its model's decode loop, and the stream that comes back;
- ``text`` (:class:`~kvllama.api.text.TextTools`): tokens and chat templates;
- ``adapters`` (:class:`~kvllama.api.adapters.Adapters`): LoRA per model;
- ``sessions`` (:class:`~kvllama.api.sessions.Sessions`): sticky sessions;
- ``cache`` (:class:`~kvllama.kvcache.KvCache`, or None): the KV cache.

Every public method below is one of theirs, named as Python users of
llama.cpp or vLLM expect; everything is validated before a request is
queued, so a bad request is a typed exception in the caller's thread and
never reaches the decode loop.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from kvllama.api import probes, speculation
from kvllama.api.adapters import Adapters
from kvllama.api.embedding import embed
from kvllama.api.models import ModelRegistry
from kvllama.api.preparation import prompt_tokens
from kvllama.api.residency import FOREVER, Budget, KnownModel
from kvllama.api.sessions import Sessions
from kvllama.api.streams import AsyncRequestStream, RequestStream
from kvllama.api.submission import Submissions
from kvllama.api.text import TextTools
from kvllama.chat.prompt import ChatInput, ChatPrompt
from kvllama.decoding.tool_memory import ToolCallMemory
from kvllama.decoding.warm import SavePolicy
from kvllama.kvcache import CacheConfig, KvCache
from kvllama.models.factory import BackendFactory, llama_backend_factory
from kvllama.models.loaded import ModelInfo
from kvllama.request import GenerationRequest, Prompt
from kvllama.request.options import parse_keep_alive
from kvllama.results import CompletionResult

Messages = Sequence[Mapping[str, Any]]
Tools = Sequence[Mapping[str, Any]] | None
System = str | Sequence[Any] | None


class _DefaultCache:
    """The default cache: RAM and /dev/shm tiers on, disk off (built per engine, so
    ``$KVLLAMA_SHM_DIR`` is read when the engine starts). Pass
    ``CacheConfig(disk_dir=...)`` for rows that survive restarts."""


DEFAULT_CACHE = _DefaultCache()


class Engine:
    """Loads models and serves generation, tokenisation, templates and embeddings."""

    def __init__(
        self,
        *,
        cache: CacheConfig | _DefaultCache | None = DEFAULT_CACHE,
        save_policy: SavePolicy | None = None,
        thinking_key: bytes | str | None = None,
        backend_factory: BackendFactory | None = None,
        max_loaded_models: int | None = None,
        max_memory: int | None = None,
        keep_alive: float | str = FOREVER,
        load_wait: float = 60.0,
    ) -> None:
        """``cache``: tier budgets and directories (None disables the KV cache).

        ``thinking_key`` signs thinking blocks (HMAC-SHA256); without it signatures are empty.
        ``max_loaded_models`` and ``max_memory`` (bytes) bound the models in memory: a model
        that does not fit unloads the least recently used idle ones first, waiting at most
        ``load_wait`` seconds for one to become idle. ``keep_alive``: how long an idle model
        stays loaded (seconds or a duration such as "5m"; negative, the default: for ever).
        """
        budget = Budget(max_loaded=max_loaded_models, max_memory=max_memory, load_wait=load_wait,
                        keep_alive=parse_keep_alive(keep_alive))
        self.thinking_key = thinking_key.encode() if isinstance(thinking_key, str) else thinking_key
        if isinstance(cache, _DefaultCache):
            cache = CacheConfig()
        self.cache: KvCache | None = KvCache(cache) if cache is not None else None
        # The turns tool calls came from, for exact replay (decoding/tool_memory.py).
        self.tool_memory = ToolCallMemory()
        self.models = ModelRegistry(backend_factory or llama_backend_factory, self.cache,
                                    save_policy or SavePolicy(), self.tool_memory, self.thinking_key, budget)
        self.sessions = Sessions(self.models)
        self.text = TextTools(self.models, self.tool_memory)
        self.adapters = Adapters(self.models)
        self.submissions = Submissions(self.models, self.sessions, self.text, lambda: self.saves_prompt_rows)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- models -------------------------------------------------------------

    def load_model(self, model_id: str, path: str | os.PathLike[str] | None = None,
                   **options: Any) -> ModelInfo:
        """Load a GGUF file (no path: the embedded default) under ``model_id``, now."""
        return self.models.load(model_id, path, **options).info()

    def register_model(self, model_id: str, path: str | os.PathLike[str] | None = None, *,
                       keep_alive: float | str | None = None, **options: Any) -> None:
        """Know a model without loading it: its first use loads it (within the memory budget).

        ``keep_alive``: how long this model stays loaded when idle (None: the engine's).
        """
        self.models.register(model_id, path, keep_alive=keep_alive, **options)

    def unload_model(self, model_id: str, *, cancel: bool = False) -> None:
        """Free a model's memory; it stays known, and its next use loads it again (its rows are
        still cached). With requests in flight: ModelBusyError, or cancel them if asked."""
        self.models.unload(model_id, cancel=cancel)

    def touch_model(self, model_id: str, keep_alive: float | str | None = None) -> None:
        """Load the model if it is not loaded, and keep it so for ``keep_alive`` (seconds or a
        duration; None: its default) from now, as Ollama's empty ``generate`` does."""
        seconds = None if keep_alive is None else parse_keep_alive(keep_alive)
        self.models.acquire(model_id)
        self.models.release(model_id, seconds)

    def forget_model(self, model_id: str) -> None:
        """Unload a model (cancelling its requests) and unregister it."""
        self.models.forget(model_id)

    def list_models(self) -> list[ModelInfo]:
        """The models in memory now."""
        return [m.info() for m in self.models.all()]

    def model_ids(self) -> list[str]:
        """The ids of every model this engine can serve, loaded or not (cheap: no file is read)."""
        return [e.id for e in self.models.entries()]

    def known_models(self) -> list[KnownModel]:
        """Every model this engine can serve, loaded or not (what ``/api/tags`` lists)."""
        return [self.models.residency.describe(e) for e in self.models.known()]

    def model_info(self, model_id: str) -> ModelInfo:
        """A loaded model's snapshot (a known model that is not loaded is loaded first)."""
        with self.models.use(model_id) as model:
            return model.info()

    def in_flight(self) -> int:
        """Requests holding a sequence slot, over all models."""
        return sum(m.loop.status.in_flight for m in self.models.all())

    def pending(self, model_id: str | None = None) -> int:
        """Requests queued for a slot: of one model (0 while it is not loaded), or over all models."""
        if model_id is not None:
            self.models.entry(model_id)  # UnknownModelError for an id it never knew
        return sum(m.loop.pending for m in self.models.all() if model_id is None or m.id == model_id)

    def chat_template_source(self, model_id: str) -> str:
        """Where this model's chat template comes from (what ``model_info(id).chat_template_source`` says)."""
        with self.models.use(model_id) as model:
            return model.chat_template_source

    def routing_snapshot(self, model_id: str) -> probes.RoutingSnapshot:
        """The digest and load of ``model_id`` for a cache-affinity router (api/probes.py)."""
        with self.models.use(model_id) as model:
            return probes.routing_snapshot(model)

    # --- generation ---------------------------------------------------------

    def complete(self, model_id: str, prompt: Prompt, **params: Any) -> CompletionResult:
        """Generate to the end and return the whole result."""
        return self.infer(model_id, prompt, **params).result()

    async def acomplete(self, model_id: str, prompt: Prompt, **params: Any) -> CompletionResult:
        return await self.ainfer(model_id, prompt, **params).result()

    def infer(self, model_id: str, prompt: Prompt, **params: Any) -> RequestStream:
        """Start a request; iterate the returned stream for its events."""
        return self.start(model_id, GenerationRequest.build(prompt, **params))

    def infer_many(self, model_id: str, prompts: Sequence[Prompt], **params: Any) -> list[RequestStream]:
        """Start one request per prompt, admitted together: their prompts prefill in the same
        passes, as a batched llama.cpp loop's would (one :meth:`infer` after another lets the
        first start alone). Streams in the prompts' order."""
        requests = [GenerationRequest.build(prompt, **params) for prompt in prompts]
        return self.submissions.start_many(model_id, requests)

    def ainfer(self, model_id: str, prompt: Prompt, **params: Any) -> AsyncRequestStream:
        """Like :meth:`infer`, for ``async for``; call it from a running event loop."""
        return self.astart(model_id, GenerationRequest.build(prompt, **params))

    def start(self, model_id: str, request: GenerationRequest) -> RequestStream:
        """:meth:`infer` for a request built already (``GenerationRequest.build``, an HTTP edge)."""
        return self.submissions.start(model_id, request)

    def astart(self, model_id: str, request: GenerationRequest) -> AsyncRequestStream:
        """:meth:`ainfer` for a built request (see :meth:`asubmit` to prepare it off the event loop)."""
        return self.submissions.astart(model_id, request)

    async def asubmit(self, model_id: str, request: GenerationRequest) -> AsyncRequestStream:
        """Start a built request with its CPU work in a worker thread (what the HTTP server calls).

        Rendering a chat, tokenizing a long prompt and parsing a grammar can take
        a while; done on the event loop they would stall every other stream an
        HTTP server feeds.
        """
        return await self.submissions.asubmit(model_id, request)

    def cancel(self, request: RequestStream | AsyncRequestStream | str) -> bool:
        """Idempotent. Returns False if the id is unknown (finished and forgotten)."""
        stream = self.submissions.stream(request) if isinstance(request, str) else request
        if stream is None:
            return False
        stream.cancel()
        return True

    def resolve_request(self, model_id: str, request: GenerationRequest) -> GenerationRequest:
        """The request with its prompt as this model's token ids: a conversation rendered (once),
        its template's stops added and its shared prefixes found; ids checked against the vocabulary."""
        return self.submissions.resolve(model_id, request)

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

    # --- chat ---------------------------------------------------------------

    def chat(self, model_id: str, messages: Messages, *, system: System = None, tools: Tools = None,
             template: str | None = None, **params: Any) -> CompletionResult:
        """Run a chat turn to the end: the model's chat template is applied (the request's
        ``template``, else the GGUF's, else the load option, else ``plain``), its stop strings
        added to the caller's, and with a KV cache the prompt's shared prefixes saved
        (kvllama.chat.prompt), as for a chat over HTTP."""
        return self.infer_chat(model_id, messages, system=system, tools=tools, template=template,
                               **params).result()

    async def achat(self, model_id: str, messages: Messages, *, system: System = None, tools: Tools = None,
                    template: str | None = None, **params: Any) -> CompletionResult:
        chat = ChatInput.of(messages, system=system, tools=tools, template=template)
        stream = await self.asubmit(model_id, GenerationRequest.build(chat=chat, **params))
        return await stream.result()

    def infer_chat(self, model_id: str, messages: Messages, *, system: System = None, tools: Tools = None,
                   template: str | None = None, **params: Any) -> RequestStream:
        """A chat turn as a stream of events."""
        chat = ChatInput.of(messages, system=system, tools=tools, template=template)
        return self.start(model_id, GenerationRequest.build(chat=chat, **params))

    def ainfer_chat(self, model_id: str, messages: Messages, *, system: System = None, tools: Tools = None,
                    template: str | None = None, **params: Any) -> AsyncRequestStream:
        chat = ChatInput.of(messages, system=system, tools=tools, template=template)
        return self.astart(model_id, GenerationRequest.build(chat=chat, **params))

    def chat_prompt(self, model_id: str, chat: ChatInput, *, find_save_points: bool = False) -> ChatPrompt:
        """A conversation's prompt as a request queues it: text, tokens, the template's stops, save points."""
        return self.submissions.chat_prompt(model_id, chat, find_save_points=find_save_points)

    def apply_chat_template(self, model_id: str, messages: Messages, system: System = None,
                            tools: Tools = None, template: str | None = None, *,
                            add_generation_prompt: bool = True) -> str:
        """Render with the named template, else the GGUF's, else the load option, else 'plain'."""
        return self.text.apply_chat_template(model_id, messages, system, tools, template,
                                             add_generation_prompt=add_generation_prompt)

    # --- tokens -------------------------------------------------------------

    def tokenize(self, model_id: str, text: str, *, add_special: bool = True,
                 parse_special: bool = True) -> list[int]:
        return self.text.tokenize(model_id, text, add_special=add_special, parse_special=parse_special)

    def prompt_tokens(self, model_id: str, prompt: Prompt) -> list[int]:
        """The tokens a request with this prompt queues (BOS added unless a text starts with it)."""
        return self.text.prompt_tokens(model_id, prompt)

    def detokenize(self, model_id: str, tokens: Sequence[int]) -> str:
        return self.text.detokenize(model_id, tokens)

    def token_pieces(self, model_id: str, tokens: Sequence[int]) -> list[bytes]:
        """Each token's bytes, control tokens as their text (ids checked like a prompt's)."""
        return self.text.token_pieces(model_id, tokens)

    def embed(self, model_id: str, texts: str | Sequence[str]) -> list[list[float]]:
        """One pooled vector per text (mean over tokens; last token where pooling is absent)."""
        with self.models.use(model_id) as model:
            return embed(model, texts)

    # --- speculation's two steps ---------------------------------------------

    def draft_tokens(self, model_id: str, tokens: Sequence[int], n: int) -> list[int]:
        """Up to ``n`` tokens that followed the latest earlier occurrence of the last 3/2/1 tokens."""
        return speculation.draft_tokens(self, model_id, tokens, n)

    def verify(self, model_id: str, tokens: Sequence[int], draft: Sequence[int]) -> tuple[int, int | None]:
        """(how many draft tokens greedy decoding accepts, the token after them; None at the end)."""
        return speculation.verify(self, model_id, tokens, draft)

    # --- adapters and sessions -----------------------------------------------

    def load_adapter(self, model_id: str, adapter_id: str, path: str, scale: float = 1.0) -> str:
        """Load a LoRA GGUF for ``model_id`` under ``adapter_id``; returns the file's sha256."""
        return self.adapters.load(model_id, adapter_id, path, scale)

    def unload_adapter(self, model_id: str, adapter_id: str) -> None:
        """Unload it; refused while a queued or running request uses it."""
        self.adapters.unload(model_id, adapter_id)

    def set_adapter_scale(self, model_id: str, adapter_id: str, scale: float) -> None:
        """The default scale for requests submitted from now on (0: left out)."""
        self.adapters.set_scale(model_id, adapter_id, scale)

    def tool_call_markers(self, model_id: str) -> dict[str, str] | None:
        """The strings around the model's tool calls (its ``markers``: start, end, and an optional
        payload pair), or None: a grammar that forces a call (``tool_choice``) writes them."""
        with self.models.use(model_id) as model:
            markers = model.loop.markers
            return dict(markers.tool_call) if markers is not None and markers.tool_call else None

    def list_adapters(self, model_id: str) -> list[dict[str, Any]]:
        return self.adapters.list(model_id)

    def end_session(self, session_id: str, model_id: str | None = None,
                    cache_salt: str | None = None) -> bool:
        """Release a sticky session's slot (saved to the cache first); False if no model holds it idle."""
        return self.sessions.end(session_id, model_id, cache_salt)

    def fork_session(self, model_id: str, session_id: str, new_session_id: str,
                     cache_salt: str | None = None) -> None:
        """A new sticky session that starts as a copy of an idle one (its live KV copied once)."""
        self.sessions.fork(model_id, session_id, new_session_id, cache_salt)

    # --- the KV cache ---------------------------------------------------------

    def list_cached_prefixes(self, model_id: str, tokens: Prompt, cache_salt: str | None = None) -> int:
        """Longest cached prefix of ``tokens`` across all tiers, in tokens (for routers)."""
        with self.models.use(model_id) as model:
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

    def close(self) -> None:
        if self.models.close() and self.cache is not None:
            self.cache.close()
