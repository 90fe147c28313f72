"""Anthropic Messages bodies and the streaming event sequence.

The stream follows Anthropic's documented order exactly::

    message_start                  (message with empty content, usage.input_tokens)
    content_block_start  index 0   (then one ping, after the first block start)
    content_block_delta  ...       (text_delta; thinking_delta/signature_delta; input_json_delta)
    content_block_stop   index 0
    ... further blocks ...
    message_delta                  (stop_reason, stop_sequence, cumulative usage)
    message_stop

:class:`AnthropicStreamWriter` renders the content deltas of the one reply
reducer (:mod:`kvllama.replies`: thinking, text and tool_use blocks, in the
order the model produced them) as block events; the non-streamed reply
renders :class:`~kvllama.replies.Reply`, the fold of the same deltas, so
both carry the same content. A reply whose last block is a tool call stops
with ``tool_use``.

Usage: ``input_tokens`` excludes cache reads and the prompt tokens this
request wrote to the cache (Anthropic's convention: input + cache_read +
cache_creation is the whole prompt); the cache read is known only at the end, so message_start
carries the full prompt length and message_delta the corrected cumulative
counts, which the SDKs overwrite.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Sequence
from typing import Any

from kvllama.events import Event
from kvllama.replies import (
    BlockEnd,
    BlockStart,
    Delta,
    Reply,
    SignatureDelta,
    TextDelta,
    ThinkingDelta,
    ToolInputDelta,
)
from kvllama.replies.tool_calls import ToolCall
from kvllama.results import CompletionResult
from kvllama.server import sse
from kvllama.server.errors import error_body, from_exception


def new_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def tool_use_id() -> str:
    return f"toolu_{uuid.uuid4().hex[:24]}"


def usage(result: CompletionResult) -> dict[str, int]:
    prompt, read = result.stats.prompt_tokens, result.cache_delta.read
    created = min(result.cache_delta.created, prompt - read)
    return {
        # Anthropic's identity: input + cache_creation + cache_read = every prompt token.
        "input_tokens": prompt - read - created,
        "output_tokens": result.stats.generated_tokens,
        "cache_creation_input_tokens": created,
        "cache_read_input_tokens": read,
    }


def stop_of(
    result: CompletionResult, client_stops: Collection[str], max_tokens: int, tool_use: bool = False
) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence). Default stops added by the server are an ordinary end_turn.

    ``tool_use``: the reply's last block is a tool call, so an ordinary end is "tool_use".
    """
    if result.finish_reason == "length":
        full = result.stats.generated_tokens < max_tokens
        return ("model_context_window_exceeded" if full else "max_tokens"), None
    if result.stop_sequence is not None and result.stop_sequence in client_stops:
        return "stop_sequence", result.stop_sequence
    return ("tool_use" if tool_use else "end_turn"), None


def content(reply: Reply) -> list[dict[str, Any]]:
    """The content list of a whole reply (what an SDK builds from the stream of its deltas)."""
    out: list[dict[str, Any]] = []
    for block in reply.blocks:
        if block.kind == "text":
            out.append({"type": "text", "text": block.text})
        elif block.kind == "thinking":
            out.append({"type": "thinking", "thinking": block.text, "signature": block.signature})
        else:
            out.append({**_tool_use(block.call), "input": json.loads(block.arguments_json or "{}")})
    return out


def response(
    mid: str, model: str, result: CompletionResult, client_stops: Collection[str], max_tokens: int,
    reply: Reply,
) -> dict[str, Any]:
    """The whole non-streamed message: the content blocks of ``reply``."""
    reason, sequence = stop_of(result, client_stops, max_tokens, reply.ends_with_tool_use)
    return {
        "id": mid, "type": "message", "role": "assistant", "model": model, "content": content(reply),
        "stop_reason": reason, "stop_sequence": sequence, "usage": usage(result),
    }


def _tool_use(call: ToolCall | None) -> dict[str, Any]:
    """A tool_use block head; a call the engine sampled keeps its id (``toolu_<span>_<k>``), so
    the engine replays it exactly when the client sends it back (decoding/tool_memory.py)."""
    call_id = "toolu_" + call.id.removeprefix("call_") if call is not None and call.id else tool_use_id()
    return {"type": "tool_use", "id": call_id, "name": call.name if call is not None else ""}


def block_event(delta: Delta) -> dict[str, Any]:
    """One content delta as Anthropic's content_block_start / _delta / _stop event."""
    match delta:
        case BlockStart(index=index, kind="text"):
            return _start(index, {"type": "text", "text": ""})
        case BlockStart(index=index, kind="thinking"):
            return _start(index, {"type": "thinking", "thinking": "", "signature": ""})
        case BlockStart(index=index, call=call):
            return _start(index, {**_tool_use(call), "input": {}})
        case TextDelta(index=index, text=text):
            return _delta(index, {"type": "text_delta", "text": text})
        case ThinkingDelta(index=index, text=text):
            return _delta(index, {"type": "thinking_delta", "thinking": text})
        case SignatureDelta(index=index, signature=signature):
            return _delta(index, {"type": "signature_delta", "signature": signature})
        case ToolInputDelta(index=index, arguments_json=arguments):
            return _delta(index, {"type": "input_json_delta", "partial_json": arguments})
        case BlockEnd(index=index):
            return {"type": "content_block_stop", "index": index}
    raise TypeError(f"not a content delta: {delta!r}")


def _start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def _delta(index: int, delta: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": delta}


class AnthropicStreamWriter:
    """Content deltas -> Anthropic SSE frames, in the documented order."""

    def __init__(
        self, mid: str, model: str, input_tokens: int, client_stops: Collection[str], max_tokens: int
    ) -> None:
        self._mid, self._model, self._input_tokens = mid, model, input_tokens
        self._client_stops, self._max_tokens = client_stops, max_tokens
        self._pinged = False

    def start(self) -> list[str]:
        message = {
            "id": self._mid, "type": "message", "role": "assistant", "model": self._model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self._input_tokens, "output_tokens": 0,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        }
        return [sse.event_frame({"type": "message_start", "message": message})]

    def on_event(self, event: Event, deltas: Sequence[Delta]) -> list[str]:
        """Frames for the deltas one event yielded; one ping right after the first block start."""
        frames = []
        for delta in deltas:
            frames.append(sse.event_frame(block_event(delta)))
            if not self._pinged and isinstance(delta, BlockStart):
                self._pinged = True
                frames.append(sse.event_frame({"type": "ping"}))
        return frames

    def finish(self, result: CompletionResult, reply: Reply) -> list[str]:
        reason, sequence = stop_of(result, self._client_stops, self._max_tokens, reply.ends_with_tool_use)
        delta = {"stop_reason": reason, "stop_sequence": sequence}
        return [
            sse.event_frame({"type": "message_delta", "delta": delta, "usage": usage(result)}),
            sse.event_frame({"type": "message_stop"}),
        ]

    def error(self, exc: BaseException) -> list[str]:
        return [sse.event_frame(error_body(from_exception(exc), "anthropic"))]
