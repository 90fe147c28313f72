"""Anthropic Messages bodies and the streaming event sequence.

The stream follows Anthropic's documented order exactly::

    message_start                  (message with empty content, usage.input_tokens)
    content_block_start  index 0   (then one ping, after the first block start)
    content_block_delta  ...       (text_delta; thinking_delta/signature_delta; input_json_delta)
    content_block_stop   index 0
    ... further blocks ...
    message_delta                  (stop_reason, stop_sequence, cumulative usage)
    message_stop

:class:`AnthropicStreamWriter` frames the block events of a
:class:`~kvllama.server.anthropic_blocks.BlockMachine` (thinking, text and
tool_use blocks, in the order the model produced them); the non-streamed
reply folds the same block events, so both carry the same content. A reply
whose last block is a tool call stops with ``tool_use``.

Usage: ``input_tokens`` excludes cache reads (Anthropic's convention: input + cache_read + cache_creation is
the whole prompt); the cache read is known only at the end, so message_start
carries the full prompt length and message_delta the corrected cumulative
counts, which the SDKs overwrite.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from typing import Any

from kvllama.events import DoneEvent, Event
from kvllama.results import CompletionResult
from kvllama.server import sse
from kvllama.server.anthropic_blocks import BlockMachine, fold_blocks
from kvllama.server.errors import error_body, from_exception


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


class MessageCollector:
    """For a non-streamed reply: folds events into content blocks as the stream would show them."""

    def __init__(self) -> None:
        self.machine = BlockMachine()
        self._blocks: list[dict[str, Any]] = []

    def add(self, event: Event) -> None:
        self._blocks += self.machine.on_event(event)

    def content(self) -> list[dict[str, Any]]:
        return fold_blocks(self._blocks + self.machine.finish())


def response(
    mid: str, model: str, result: CompletionResult, client_stops: Collection[str], max_tokens: int,
    collected: MessageCollector | None = None,
) -> dict[str, Any]:
    """The whole non-streamed message: the blocks ``collected`` folded (else one text block)."""
    if collected is not None:
        content = collected.content()
        tool_use = collected.machine.ended_with_tool_use
    else:
        content, tool_use = [{"type": "text", "text": result.reply}], False
    reason, sequence = stop_of(result, client_stops, max_tokens, tool_use)
    return {
        "id": mid, "type": "message", "role": "assistant", "model": model, "content": content,
        "stop_reason": reason, "stop_sequence": sequence, "usage": usage(result),
    }


class AnthropicStreamWriter:
    """kvllama events -> Anthropic SSE frames, in the documented order."""

    def __init__(
        self, mid: str, model: str, input_tokens: int, client_stops: Collection[str], max_tokens: int
    ) -> None:
        self._mid, self._model, self._input_tokens = mid, model, input_tokens
        self._client_stops, self._max_tokens = client_stops, max_tokens
        self._blocks = BlockMachine()
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
        return self._frames(self._blocks.on_event(event))

    def finish(self, done: DoneEvent, result: CompletionResult) -> list[str]:
        frames = self._frames(self._blocks.finish())
        reason, sequence = stop_of(result, self._client_stops, self._max_tokens,
                                   self._blocks.ended_with_tool_use)
        frames.append(sse.event_frame({
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": usage(result),
        }))
        frames.append(sse.event_frame({"type": "message_stop"}))
        return frames

    def error(self, exc: BaseException) -> list[str]:
        return [sse.event_frame(error_body(from_exception(exc), "anthropic"))]

    def _frames(self, events: list[dict[str, Any]]) -> list[str]:
        """SSE frames for block events; one ping right after the first block start, as Anthropic sends."""
        frames = []
        for ev in events:
            frames.append(sse.event_frame(ev))
            if not self._pinged and ev["type"] == "content_block_start":
                self._pinged = True
                frames.append(sse.event_frame({"type": "ping"}))
        return frames
