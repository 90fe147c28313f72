"""Agent-facing request options shared by both API families: sessions, thinking, signatures.

Each helper returns engine params only for what the client actually set, so
a request that uses none of these features queues exactly as before (and an
engine without the feature never sees an unknown parameter).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from starlette.requests import Request

from kvllama.server.errors import ApiError
from kvllama.server.schemas_common import MAX_SESSION_ID, SESSION_HEADER
from kvllama.server.state import ServerState
from kvllama.signing import verify_thinking


def session_params(request: Request, body_session: str | None) -> dict[str, Any]:
    """``{"session_id": ...}`` from the body or the ``x-session-id`` header; {} when neither is given."""
    header = request.headers.get(SESSION_HEADER)
    if header is not None and not 1 <= len(header) <= MAX_SESSION_ID:
        raise ApiError(400, f"{SESSION_HEADER} must be 1 to {MAX_SESSION_ID} characters", param="session_id")
    if body_session is not None and header is not None and header != body_session:
        raise ApiError(400, f"session_id in the body and the {SESSION_HEADER} header differ",
                       param="session_id")
    session = body_session if body_session is not None else header
    return {} if session is None else {"session_id": session}


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
