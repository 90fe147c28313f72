"""Where backends come from: the real llama.cpp one by default, any other for tests."""

from __future__ import annotations

from collections.abc import Callable

from kvllama.backend.protocol import Backend
from kvllama.options import ModelOptions

# Builds a backend from a GGUF path (None: the embedded default) and options.
BackendFactory = Callable[[str | None, ModelOptions], Backend]


def llama_backend_factory(path: str | None, options: ModelOptions) -> Backend:
    from kvllama.backend.llama import LlamaBackend
    from kvllama.models.default import default_model_path

    return LlamaBackend(path if path is not None else default_model_path(), options)
