"""Where backends come from: the real llama.cpp one by default, any other for tests."""

from __future__ import annotations

from collections.abc import Callable

from kvllama.backend.protocol import Backend
from kvllama.decoding.speculation import Drafter
from kvllama.errors import InvalidOptionError
from kvllama.options import ModelOptions

# Builds a backend from a GGUF path (None: the embedded default) and options.
BackendFactory = Callable[[str | None, ModelOptions], Backend]


def llama_backend_factory(path: str | None, options: ModelOptions) -> Backend:
    from kvllama.backend.llama import LlamaBackend
    from kvllama.models.default import default_model_path

    return LlamaBackend(path if path is not None else default_model_path(), options)


def draft_model_for(backend: Backend, options: ModelOptions) -> Drafter | None:
    """The draft model ``options.draft_model`` names, next to ``backend`` (None: prompt lookup)."""
    if options.draft_model is None:
        return None
    target = getattr(backend, "model", None)
    if target is None:  # a test backend has no llama.cpp model to compare vocabularies with
        raise InvalidOptionError("draft_model", options.draft_model, "a model loaded by llama.cpp")
    from kvllama.backend.draft_model import DraftModel
    from kvllama.native.gguf import read_gguf

    read_gguf(options.draft_model)  # typed errors (missing, not a GGUF) before llama.cpp sees the file
    return DraftModel(options.draft_model, options, backend.shape.n_ctx_seq, target)
