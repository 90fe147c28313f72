"""The engine's LoRA adapters (``Engine.load_adapter`` and friends), per model, and each request's set.

A loaded adapter applies to every request of its model at its default scale
(llama-server's behaviour; scale 0 leaves it out) unless the request names its
own set (``adapters=[(id, scale), ...]``). The set is fixed when the request
is submitted, so changing a scale or loading another adapter never changes a
request already queued or running. Rows and sessions computed with an adapter
set are keyed by the adapters' file sha256 and scales: they never serve a
request with another set (kvllama.kvcache.KeyRoot.adapters).
"""

from __future__ import annotations

from typing import Any

from kvllama.api.models import ModelRegistry
from kvllama.errors import InvalidRequestError
from kvllama.request import check_adapter_scale


class Adapters:
    def __init__(self, models: ModelRegistry) -> None:
        self._models = models

    def load(self, model_id: str, adapter_id: str, path: str, scale: float = 1.0) -> str:
        """Load a LoRA GGUF for ``model_id`` under ``adapter_id``; returns the file's sha256.

        The model's entry remembers it, so a model unloaded and loaded again has it too.
        """
        check_adapter_scale(scale)
        if not isinstance(adapter_id, str) or not adapter_id:
            raise InvalidRequestError("adapter_id must be a non-empty string")
        with self._models.use(model_id) as model:
            sha = model.loop.call(lambda: model.backend.load_adapter(adapter_id, str(path))).result()
            model.adapters[adapter_id] = (str(path), float(scale))
        self._models.remember_adapter(model_id, adapter_id, str(path), float(scale))
        return str(sha)

    def unload(self, model_id: str, adapter_id: str) -> None:
        """Unload it; refused while a queued or running request uses it."""
        with self._models.use(model_id) as model:
            if adapter_id not in model.adapters:
                raise InvalidRequestError(f"no adapter {adapter_id!r} is loaded for {model_id!r}")
            if model.loop.call(lambda: model.loop.uses_adapter(adapter_id)).result():
                raise InvalidRequestError(f"adapter {adapter_id!r} is in use by a request; "
                                          "retry when it ends")
            model.loop.call(lambda: model.backend.unload_adapter(adapter_id)).result()
            del model.adapters[adapter_id]
        self._models.remember_adapter(model_id, adapter_id, None, 0.0)

    def set_scale(self, model_id: str, adapter_id: str, scale: float) -> None:
        """The default scale for requests submitted from now on (0: left out)."""
        check_adapter_scale(scale)
        with self._models.use(model_id) as model:
            if adapter_id not in model.adapters:
                raise InvalidRequestError(f"no adapter {adapter_id!r} is loaded for {model_id!r}")
            path, _ = model.adapters[adapter_id]
            model.adapters[adapter_id] = (path, float(scale))
        self._models.remember_adapter(model_id, adapter_id, path, float(scale))

    def list(self, model_id: str) -> list[dict[str, Any]]:
        with self._models.use(model_id) as model:
            return [{"id": i, "path": path, "scale": scale, "sha256": model.backend.adapter_sha256(i)}
                    for i, (path, scale) in model.adapters.items()]
