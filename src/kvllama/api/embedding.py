"""``Engine.embed``: one pooled vector per text, computed beside the decode loop, never on it."""

from __future__ import annotations

from collections.abc import Sequence

from kvllama.api.preparation import tokenize_text
from kvllama.errors import InvalidRequestError
from kvllama.models.loaded import LoadedModel

# Most texts and tokens one embed() call takes. Embedding through a generative
# model computes its output layer for every token (llama.cpp cannot prune it),
# measured with the default model on one thread at 55-200 ms per short text and
# 7-17 ms per token (the machine's speed varies 2x from day to day), so these
# bounds keep one call under ~35 s (docs/measured/reliability.md).
MAX_EMBED_INPUTS = 128
MAX_EMBED_TOKENS = 2048


def embed(model: LoadedModel, texts: str | Sequence[str]) -> list[list[float]]:
    """Mean over tokens (the last token where pooling is absent), on the model's embedding context.

    Runs in the caller's thread: a call with thousands of inputs does not
    stall the streams being generated meanwhile. Calls to one model take turns.
    """
    items = [texts] if isinstance(texts, str) else list(texts)
    if not items or not all(isinstance(t, str) and t for t in items):
        raise InvalidRequestError("texts must be a non-empty string or list of them")
    if len(items) > MAX_EMBED_INPUTS:
        raise InvalidRequestError(
            f"{len(items)} texts in one embed call; at most {MAX_EMBED_INPUTS} (split the batch)"
        )
    token_lists = [tokenize_text(model.backend, f"texts[{i}]", t, add_special=True)
                   for i, t in enumerate(items)]
    total = sum(len(tokens) for tokens in token_lists)
    if total > MAX_EMBED_TOKENS:
        raise InvalidRequestError(
            f"{total} tokens in one embed call; at most {MAX_EMBED_TOKENS} (split the batch)"
        )
    with model.embed_lock:
        return [model.backend.embed(toks) for toks in token_lists]
