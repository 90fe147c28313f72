"""Anthropic Messages bodies and the streaming event sequence.

The stream follows Anthropic's documented order exactly::

    message_start                  (message with empty content, usage.input_tokens)
    content_block_start  index 0   (then one ping, after the first block start)
    content_block_delta  ...       (text_delta; thinking_delta/signature_delta; input_json_delta)
    content_block_stop   index 0
    ... further blocks ...
    message_delta                  (stop_reason, stop_sequence, cumulative usage)
    message_stop

:class:`AnthropicStreamWriter` is a state machine over kvllama events whose
state is "which block is open"; thinking and tool_use blocks slot in as new
event cases that open their own block kind. Usage: ``input_tokens`` excludes
cache reads (Anthropic's convention: input + cache_read + cache_creation is
the whole prompt); the cache read is known only at the end, so message_start
carries the full prompt length and message_delta the corrected cumulative
counts, which the SDKs overwrite.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from typing import Any

from kvllama.events import DoneEvent, Event, TextEvent
from kvllama.results import CompletionResult
from kvllama.server import sse
from kvllama.server.errors import error_body, from_exception

_BLOCK_START = {
    "text": {"type": "text", "text": ""},
    "thinking": {"type": "thinking", "thinking": "", "signature": ""},
}


def new_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def usage(result: CompletionResult) -> dict[str, int]:
    read = result.cache_delta.read
    return {
        "input_tokens": result.stats.prompt_tokens - read,
        "output_tokens": result.stats.generated_tokens,
        "cache_creation_input_tokens": result.cache_delta.created,
        "cache_read_input_tokens": read,
    }


def stop_of(
    result: CompletionResult, client_stops: Collection[str], max_tokens: int
) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence). Default stops added by the server are an ordinary end_turn."""
    if result.finish_reason == "length":
        full = result.stats.generated_tokens < max_tokens
        return ("model_context_window_exceeded" if full else "max_tokens"), None
    if result.stop_sequence is not None and result.stop_sequence in client_stops:
        return "stop_sequence", result.stop_sequence
    return "end_turn", None


def response(
    mid: str, model: str, result: CompletionResult, client_stops: Collection[str], max_tokens: int
) -> dict[str, Any]:
    """The whole non-streamed message (always one text block, as the stream has)."""
    reason, sequence = stop_of(result, client_stops, max_tokens)
    return {
        "id": mid, "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": result.reply}],
        "stop_reason": reason, "stop_sequence": sequence, "usage": usage(result),
    }


class AnthropicStreamWriter:
    """kvllama events -> Anthropic SSE frames, in the documented order."""

    def __init__(
        self, mid: str, model: str, input_tokens: int, client_stops: Collection[str], max_tokens: int
    ) -> None:
        self._mid, self._model, self._input_tokens = mid, model, input_tokens
        self._client_stops, self._max_tokens = client_stops, max_tokens
        self._index = -1
        self._open: str | None = None
        self._pinged = False

    def start(self) -> list[str]:
        message = {
            "id": self._mid, "type": "message", "role": "assistant", "model": self._model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self._input_tokens, "output_tokens": 0,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        }
        return [sse.event_frame({"type": "message_start", "message": message})]

    def on_event(self, event: Event) -> list[str]:
        if isinstance(event, TextEvent) and event.text:
            frames = self._open_block("text")
            frames.append(self._delta({"type": "text_delta", "text": event.text}))
            return frames
        # TODO(thinking, tools): ThinkingDelta -> _open_block("thinking") + thinking_delta,
        # ThinkingEnd -> signature_delta; ToolCallDelta/End -> a tool_use block + input_json_delta.
        return []

    def finish(self, done: DoneEvent, result: CompletionResult) -> list[str]:
        frames = self._open_block("text") if self._index < 0 else []
        frames += self._close_block()
        reason, sequence = stop_of(result, self._client_stops, self._max_tokens)
        frames.append(sse.event_frame({
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": usage(result),
        }))
        frames.append(sse.event_frame({"type": "message_stop"}))
        return frames

    def error(self, exc: BaseException) -> list[str]:
        return [sse.event_frame(error_body(from_exception(exc), "anthropic"))]

    def _open_block(self, kind: str, block: dict[str, Any] | None = None) -> list[str]:
        if self._open == kind:
            return []
        frames = self._close_block()
        self._index += 1
        self._open = kind
        frames.append(sse.event_frame({
            "type": "content_block_start", "index": self._index,
            "content_block": block if block is not None else dict(_BLOCK_START[kind]),
        }))
        if not self._pinged:
            self._pinged = True
            frames.append(sse.event_frame({"type": "ping"}))
        return frames

    def _close_block(self) -> list[str]:
        if self._open is None:
            return []
        self._open = None
        return [sse.event_frame({"type": "content_block_stop", "index": self._index})]

    def _delta(self, delta: dict[str, Any]) -> str:
        return sse.event_frame({"type": "content_block_delta", "index": self._index, "delta": delta})
