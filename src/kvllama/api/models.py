"""The engine's models: every model it knows, by id, and the ones in memory.

Model ids are plain strings (never interned symbols). A model is *known*
once registered (``register``, or ``load`` which registers and loads it) and
*loaded* while it holds memory; the residency (api/residency.py) loads known
models on demand and unloads idle ones after their keep-alive or to stay in
budget. Unloading never forgets a model: its next use loads it again, with
its adapters, and its rows are still in the cache tiers, so a conversation
goes on warm. The engine's other parts reach a model through :meth:`use`
(a short call) or :meth:`acquire` / :meth:`release` (a request's lifetime).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from kvllama.api.residency import Budget, Residency
from kvllama.backend.llama import quant_tag
from kvllama.chat.templates import resolve_template
from kvllama.decoding.loop import PREFILL_ALIGN, ModelLoop
from kvllama.decoding.markers import markers_from_options
from kvllama.decoding.tool_memory import ToolCallMemory
from kvllama.decoding.warm import SavePolicy, WarmStart
from kvllama.errors import (
    EngineClosedError,
    InvalidOptionError,
    InvalidRequestError,
    KvllamaError,
    ModelBusyError,
    ModelExistsError,
    ModelFileNotFoundError,
    UnknownModelError,
)
from kvllama.kvcache import KvCache
from kvllama.models.default import default_model_path
from kvllama.models.factory import BackendFactory, draft_model_for
from kvllama.models.fingerprint import key_root
from kvllama.models.loaded import LoadedModel
from kvllama.native.gguf import read_gguf
from kvllama.native.heap import trim_heap
from kvllama.options import ModelOptions
from kvllama.request.options import parse_keep_alive


@dataclass
class ModelEntry:
    """What it takes to load a model again: its file, its options, its adapters."""

    id: str
    path: str | None
    options: ModelOptions
    # adapter id -> (path, default scale), in load order.
    adapters: dict[str, tuple[str, float]] = field(default_factory=dict)
    # From the GGUF header, read the first time the entry is listed (what /api/tags shows
    # without loading the model; a tokenizer's arrays make a header take ~0.3 s to parse).
    architecture: str = "unknown"
    quant: str = "unknown"
    size_bytes: int = 0
    header_read: bool = False
    # Seconds it stays loaded when idle (None: the engine's keep-alive).
    keep_alive: float | None = None


class ModelRegistry:
    def __init__(self, factory: BackendFactory, cache: KvCache | None, save_policy: SavePolicy,
                 tool_memory: ToolCallMemory, thinking_key: bytes | None,
                 budget: Budget | None = None) -> None:
        self._factory = factory
        self._cache = cache
        self._save_policy = save_policy
        self._tool_memory = tool_memory
        self._thinking_key = thinking_key
        self._entries: dict[str, ModelEntry] = {}
        # Guards the registry and the residency, and the engine's busy sessions (api/sessions.py).
        self.lock = threading.Lock()
        self._closed = False
        self.residency = Residency(budget or Budget(), self.lock, self._load_entry, self._close_model,
                                   self._estimate)

    # --- knowing models -------------------------------------------------------

    def register(self, model_id: str, path: str | os.PathLike[str] | None, *,
                 keep_alive: float | str | None = None, **options: Any) -> ModelEntry:
        """Know a model without loading it (its options are checked now)."""
        if not isinstance(model_id, str) or not model_id.strip():
            raise InvalidRequestError("model_id must be a non-empty string")
        opts = ModelOptions.from_kwargs(**options)
        keep = None if keep_alive is None else parse_keep_alive(keep_alive)
        markers_from_options(opts)  # an unknown preset fails before loading
        if path is not None and not os.path.exists(os.fspath(path)):
            raise ModelFileNotFoundError(os.fspath(path))  # now, not at the first request
        entry = ModelEntry(model_id, os.fspath(path) if path is not None else None, opts, keep_alive=keep)
        with self.lock:
            self.check_open()
            if model_id in self._entries:
                raise ModelExistsError(model_id)
            self._entries[model_id] = entry
        return entry

    def load(self, model_id: str, path: str | os.PathLike[str] | None, *,
             keep_alive: float | str | None = None, **options: Any) -> LoadedModel:
        """Register and load now (within the budget); the model stays loaded for its keep-alive."""
        self.register(model_id, path, keep_alive=keep_alive, **options)
        try:
            with self.use(model_id) as model:
                return model
        except BaseException:
            with self.lock:
                self._entries.pop(model_id, None)
            raise

    def forget(self, model_id: str) -> None:
        """Unload (if loaded) and unregister: the id is unknown afterwards."""
        self.unload(model_id, cancel=True)
        with self.lock:
            self._entries.pop(model_id, None)
            self.residency.states.pop(model_id, None)

    def entry(self, model_id: str) -> ModelEntry:
        with self.lock:
            entry = self._entries.get(model_id)
        if entry is None:
            raise UnknownModelError(model_id)
        return entry

    def entries(self) -> list[ModelEntry]:
        with self.lock:
            return list(self._entries.values())

    def known(self) -> list[ModelEntry]:
        """Every registered model, its GGUF header read (once)."""
        with self.lock:
            entries = list(self._entries.values())
        for entry in entries:
            if not entry.header_read:
                _read_header(entry)
        return entries

    # --- using models ---------------------------------------------------------

    def acquire(self, model_id: str) -> LoadedModel:
        """The model, loaded if need be, held in memory until :meth:`release`."""
        self.check_open()
        self.entry(model_id)
        return self.residency.acquire(model_id)

    def release(self, model_id: str, keep_alive: float | None = None) -> None:
        """One use ended; the model stays loaded for ``keep_alive``, else its own, else the engine's."""
        if keep_alive is None:
            with self.lock:
                entry = self._entries.get(model_id)
            keep_alive = entry.keep_alive if entry is not None else None
        self.residency.release(model_id, keep_alive)

    @contextlib.contextmanager
    def use(self, model_id: str) -> Iterator[LoadedModel]:
        """Hold the model for a short call (tokenize, a template, an adapter change)."""
        model = self.acquire(model_id)
        try:
            yield model
        finally:
            self.release(model_id)

    def get(self, model_id: str) -> LoadedModel:
        """The model if it is loaded now (UnknownModelError otherwise); it may unload at any time
        after this returns, so calls that touch it go through :meth:`use`."""
        with self.lock:
            self.check_open()
            res = self.residency.states.get(model_id)
            model = res.loaded if res is not None else None
        if model is None:
            raise UnknownModelError(model_id)
        return model

    def all(self) -> list[LoadedModel]:
        """The loaded models."""
        with self.lock:
            return [r.loaded for r in self.residency.states.values() if r.loaded is not None]

    def remember_adapter(self, model_id: str, adapter_id: str, path: str | None, scale: float) -> None:
        """Keep the entry's adapters in step with the loaded model's (path None: unloaded)."""
        entry = self.entry(model_id)
        with self.lock:
            if path is None:
                entry.adapters.pop(adapter_id, None)
            else:
                entry.adapters[adapter_id] = (path, scale)

    # --- unloading ------------------------------------------------------------

    def unload(self, model_id: str, *, cancel: bool = False) -> None:
        """Free a loaded model now; it stays known (its next use loads it again)."""
        self.entry(model_id)
        try:
            model = self.get(model_id)
        except UnknownModelError:
            return  # known, not loaded: nothing to free
        if not cancel and (model.loop.status.in_flight or model.loop.pending
                           or self.residency.in_use(model_id)):
            raise ModelBusyError(
                f"model {model_id!r} has requests in flight; wait for them or pass cancel=True"
            )
        evicted = self.residency.evict(model_id)
        if evicted is not None:
            self._close_model(evicted)

    def close(self) -> bool:
        """Stop every loop and free every model; the registry refuses work afterwards.

        Idempotent: True for the call that closed it.
        """
        with self.lock:
            if self._closed:
                return False
            self._closed = True
        self.residency.close()
        for model in self.all():
            self.residency.evict(model.id)
            self._close_model(model)
        return True

    @property
    def closed(self) -> bool:
        return self._closed

    def check_open(self) -> None:
        if self._closed:
            raise EngineClosedError("the engine is closed")

    # --- loading (the residency calls these, outside its lock) ------------------------------

    def _load_entry(self, model_id: str) -> LoadedModel:
        entry = self.entry(model_id)
        opts = entry.options
        backend = self._factory(entry.path, opts)
        try:
            model = self._start(model_id, backend, opts)
        except BaseException:
            backend.close()
            raise
        try:
            for adapter_id, (path, scale) in entry.adapters.items():
                model.loop.call(lambda a=adapter_id, p=path: backend.load_adapter(a, p)).result()
                model.adapters[adapter_id] = (path, scale)
        except BaseException:
            self._close_model(model)
            raise
        return model

    def _start(self, model_id: str, backend: Any, opts: ModelOptions) -> LoadedModel:
        """The model's decode loop (with its cache root, drafter and markers) around a loaded backend."""
        if opts.speculative_draft and not backend.shape.exact_verify:
            raise InvalidOptionError(
                "speculative_draft", opts.speculative_draft,
                "0 on this build and model: speculation needs verify passes computed as decode steps "
                "are (kvllama's patched llama.cpp on the CPU, see docs/kernel-patch.md, or canonical_decode)")
        _, source = resolve_template(None, backend.description.chat_template, opts.chat_template)
        warm = None
        if self._cache is not None:
            policy = replace(self._save_policy, boundary=min(PREFILL_ALIGN, opts.effective_chunk_size()),
                             min_tail=backend.shape.min_chunk_rows)
            warm = WarmStart(self._cache, key_root(backend, opts), backend, policy)
        loop = ModelLoop(
            backend, chunk_size=opts.effective_chunk_size(), name=model_id, warm=warm,
            keep_finished=opts.keep_finished, tool_memory=self._tool_memory,
            speculative_draft=opts.speculative_draft, drafter=draft_model_for(backend, opts),
            markers=markers_from_options(opts), signing_key=self._thinking_key,
            burst_window=opts.burst_window_ms / 1000, settle_replies=opts.settle_replies,
        )
        return LoadedModel(model_id, backend, loop, opts, source)

    @staticmethod
    def _close_model(model: LoadedModel) -> None:
        """Stop its loop (parked sessions are saved to the cache as it stops), free it, and give
        the freed memory back to the operating system (native/heap.py)."""
        model.loop.close()
        model.backend.close()
        trim_heap()

    def _estimate(self, model_id: str) -> int:
        """Bytes a model will take before it was ever loaded: its file's size (its KV comes on top)."""
        entry = self._entries.get(model_id)
        if entry is None or entry.path is None:
            return 0
        try:
            return os.path.getsize(entry.path)
        except OSError:
            return 0


def _read_header(entry: ModelEntry) -> None:
    """The GGUF header's architecture, quantisation and size (left unknown if the file cannot tell)."""
    entry.header_read = True
    try:
        gguf = read_gguf(entry.path if entry.path is not None else default_model_path())
    except (KvllamaError, OSError):
        return  # the load will say what is wrong with the file
    entry.architecture, entry.quant, entry.size_bytes = gguf.architecture, quant_tag(gguf), gguf.size_bytes
