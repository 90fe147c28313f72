"""The engine's loaded models: loading a GGUF into a decode loop, finding it by id, freeing it.

Model ids are plain strings (never interned symbols). The registry is the
one place that holds them, behind one lock; the engine's other parts
(requests, text tools, adapters, sessions) find a model through :meth:`get`.
"""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from typing import Any

from kvllama.chat.templates import resolve_template
from kvllama.decoding.loop import PREFILL_ALIGN, ModelLoop
from kvllama.decoding.markers import markers_from_options
from kvllama.decoding.tool_memory import ToolCallMemory
from kvllama.decoding.warm import SavePolicy, WarmStart
from kvllama.errors import (
    EngineClosedError,
    InvalidOptionError,
    InvalidRequestError,
    ModelBusyError,
    ModelExistsError,
    UnknownModelError,
)
from kvllama.kvcache import KvCache
from kvllama.models.factory import BackendFactory, draft_model_for
from kvllama.models.fingerprint import key_root
from kvllama.models.loaded import LoadedModel
from kvllama.options import ModelOptions


class ModelRegistry:
    def __init__(self, factory: BackendFactory, cache: KvCache | None, save_policy: SavePolicy,
                 tool_memory: ToolCallMemory, thinking_key: bytes | None) -> None:
        self._factory = factory
        self._cache = cache
        self._save_policy = save_policy
        self._tool_memory = tool_memory
        self._thinking_key = thinking_key
        self._models: dict[str, LoadedModel] = {}
        # Guards the registry, and the engine's set of busy sessions (api/sessions.py).
        self.lock = threading.Lock()
        self._closed = False

    def load(self, model_id: str, path: str | os.PathLike[str] | None, **options: Any) -> LoadedModel:
        if not isinstance(model_id, str) or not model_id.strip():
            raise InvalidRequestError("model_id must be a non-empty string")
        opts = ModelOptions.from_kwargs(**options)
        markers_from_options(opts)  # an unknown preset fails before loading
        with self.lock:
            self.check_open()
            if model_id in self._models:
                raise ModelExistsError(model_id)
        backend = self._factory(os.fspath(path) if path is not None else None, opts)
        try:
            loaded = self._start(model_id, backend, opts)
        except BaseException:
            backend.close()
            raise
        with self.lock:
            if model_id in self._models or self._closed:
                loaded.loop.close()
                backend.close()
                raise ModelExistsError(model_id) if not self._closed else EngineClosedError()
            self._models[model_id] = loaded
        return loaded

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

    def unload(self, model_id: str, *, cancel: bool = False) -> None:
        model = self.get(model_id)
        if not cancel and (model.loop.status.in_flight or model.loop.pending):
            raise ModelBusyError(
                f"model {model_id!r} has requests in flight; wait for them or pass cancel=True"
            )
        with self.lock:
            self._models.pop(model_id, None)
        model.loop.close()
        model.backend.close()

    def get(self, model_id: str) -> LoadedModel:
        """The loaded model (UnknownModelError if there is none by that id)."""
        with self.lock:
            self.check_open()
            model = self._models.get(model_id)
        if model is None:
            raise UnknownModelError(model_id)
        return model

    def find(self, model_id: str | None) -> list[LoadedModel]:
        """One model by id (UnknownModelError if unknown), or every model for None."""
        if model_id is not None:
            return [self.get(model_id)]
        return self.all()

    def all(self) -> list[LoadedModel]:
        with self.lock:
            return list(self._models.values())

    def close(self) -> bool:
        """Stop every loop and free every model; the registry refuses work afterwards.

        Idempotent: True for the call that closed it.
        """
        with self.lock:
            if self._closed:
                return False
            self._closed = True
            models = list(self._models.values())
            self._models.clear()
        for m in models:
            m.loop.close()
            m.backend.close()
        return True

    @property
    def closed(self) -> bool:
        return self._closed

    def check_open(self) -> None:
        if self._closed:
            raise EngineClosedError("the engine is closed")
