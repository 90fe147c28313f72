"""The LoRA adapters a llama.cpp model has loaded, and the set its context applies now.

A forward pass applies one adapter set to all its rows (llama.cpp sets
adapters per context), so the decode loop runs the requests of one set per
pass and switches the set between passes (``use``), which costs llama.cpp a
graph rebuild, not a reload. Decode thread only, like the context.
"""

from __future__ import annotations

from kvllama.errors import InvalidRequestError
from kvllama.native.lora_adapter import NativeAdapter, set_context_adapters
from kvllama.native.model import NativeModel

# ((adapter id, scale), ...), sorted by id, zero scales left out: what a request runs with.
AdapterSet = tuple[tuple[str, float], ...]


class AdapterRegistry:
    def __init__(self, model: NativeModel) -> None:
        self._model = model
        self.loaded: dict[str, NativeAdapter] = {}
        self._active: AdapterSet = ()

    def load(self, adapter_id: str, path: str) -> str:
        """Load a LoRA file under ``adapter_id``; returns its sha256."""
        if adapter_id in self.loaded:
            raise InvalidRequestError(f"an adapter is loaded as {adapter_id!r} already; unload it first")
        adapter = NativeAdapter(self._model, path)
        self.loaded[adapter_id] = adapter
        return adapter.sha256

    def unload(self, adapter_id: str, ctx_handle: object) -> None:
        adapter = self.loaded.pop(adapter_id, None)
        if adapter is None:
            raise InvalidRequestError(f"no adapter {adapter_id!r} is loaded")
        if any(i == adapter_id for i, _ in self._active):
            self.use((), ctx_handle)
        adapter.close()

    def sha256(self, adapter_id: str) -> str:
        adapter = self.loaded.get(adapter_id)
        if adapter is None:
            raise InvalidRequestError(f"no adapter {adapter_id!r} is loaded for this model")
        return adapter.sha256

    def use(self, adapters: AdapterSet, ctx_handle: object) -> None:
        """Make ``adapters`` the context's set (a no-op when it is already)."""
        if adapters == self._active:
            return
        set_context_adapters(ctx_handle, [(self.loaded[i], s) for i, s in adapters])
        self._active = adapters

    def forget_context(self) -> None:
        """A new context starts with no adapters (after a rebuild)."""
        self._active = ()

    def close(self) -> None:
        for adapter in self.loaded.values():
            adapter.close()
        self.loaded.clear()
