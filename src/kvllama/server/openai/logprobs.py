"""OpenAI's two log-probability shapes, from the engine's per-token records.

Chat completions carry ``{"content": [{token, logprob, bytes, top_logprobs}]}``;
the legacy text completions carry parallel lists (``tokens``,
``token_logprobs``, ``top_logprobs`` as token -> logprob maps, and
``text_offset``, each token's character offset in the returned text). A
token's text is its bytes decoded leniently: a token may hold part of a
UTF-8 character, which ``bytes`` keeps exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kvllama.events import TokenLogprob


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def chat_logprobs(entries: Sequence[TokenLogprob]) -> dict[str, Any]:
    return {
        "content": [
            {"token": _text(e.bytes), "logprob": e.logprob, "bytes": list(e.bytes),
             "top_logprobs": [{"token": _text(b), "logprob": lp, "bytes": list(b)} for _t, lp, b in e.top]}
            for e in entries
        ],
        "refusal": None,
    }


def completion_logprobs(entries: Sequence[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    """``offset``: where the first token's text starts in the choice's ``text``."""
    tokens, offsets = [], []
    for e in entries:
        tokens.append(_text(e.bytes))
        offsets.append(offset)
        offset += len(tokens[-1])
    return {
        "tokens": tokens,
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{_text(b): lp for _t, lp, b in e.top} for e in entries],
        "text_offset": offsets,
    }
