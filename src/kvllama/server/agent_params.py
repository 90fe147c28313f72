"""Thinking signatures: the key a server checks them with, and the check (Anthropic's rule)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kvllama.server.errors import ApiError
from kvllama.server.state import ServerState
from kvllama.signing import verify_thinking


def thinking_key(state: ServerState) -> bytes | None:
    """The key thinking signatures are checked with: the server's, else the engine's own."""
    if state.config.thinking_key is not None:
        return state.config.thinking_key
    key = getattr(state.engine, "thinking_key", None)
    return key if isinstance(key, bytes) and key else None


def check_thinking_signatures(key: bytes | None, messages: Sequence[Mapping[str, Any]]) -> None:
    """400 unless every thinking block in an assistant turn carries this server's signature.

    As with Anthropic's API, altered (or foreign) reasoning is refused rather
    than fed back to the model. Without a key nothing can be checked.
    """
    if key is None:
        return
    for i, message in enumerate(messages):
        content = message.get("content")
        if message.get("role") != "assistant" or not isinstance(content, list):
            continue
        for j, block in enumerate(content):
            if not isinstance(block, Mapping) or block.get("type") != "thinking":
                continue
            text, signature = block.get("thinking"), block.get("signature")
            if not (isinstance(text, str) and isinstance(signature, str)
                    and verify_thinking(key, text, signature)):
                raise ApiError(400, f"messages.{i}.content.{j}: the thinking block's signature does not "
                               "match its text; send thinking blocks back unchanged",
                               param=f"messages.{i}.content.{j}.signature")
