"""kvllama events -> Anthropic content-block events, shared by the streamed and whole replies.

:class:`BlockMachine` turns the event stream into Anthropic's
``content_block_start`` / ``content_block_delta`` / ``content_block_stop``
dicts. The streaming writer frames them as SSE; the non-streamed reply
folds the very same dicts with :func:`fold_blocks` (as the SDKs accumulate a
stream), so the two can never disagree on content.

Block rules:

* thinking: ``thinking_delta`` per ThinkingEvent; at ThinkingEndEvent a
  ``signature_delta`` (omitted when the signature is empty: no key is
  configured) and the block closes. The thinking text is passed on exactly,
  since the signature covers those bytes.
* tool_use: emitted whole at ToolCallEndEvent (the name must lead the block),
  ``input: {}`` at start then one ``input_json_delta`` with the input JSON. A
  span that is not a call in any accepted shape is shown as text instead.
* text: whitespace-only chunks are held, so whitespace alone never opens a
  block; held whitespace before a thinking or tool_use block is dropped, and a
  text block that follows another block starts at its first non-blank
  character (models put "\\n\\n" after ``</think>``).
"""

from __future__ import annotations

import copy
import json
from typing import Any

from kvllama.events import Event, TextEvent, ThinkingEndEvent, ThinkingEvent, ToolCallEndEvent
from kvllama.server.tool_calls import anthropic_id, parse_tool_calls

_START = {
    "text": {"type": "text", "text": ""},
    "thinking": {"type": "thinking", "thinking": "", "signature": ""},
}


class BlockMachine:
    """A state machine whose state is the open block (and held whitespace)."""

    def __init__(self) -> None:
        self.index = -1
        self.open: str | None = None
        # Kind of the last block opened (None: no block yet).
        self.last: str | None = None
        self._pending = ""

    def on_event(self, event: Event) -> list[dict[str, Any]]:
        if isinstance(event, TextEvent) and event.text:
            return self._text(event.text)
        if isinstance(event, ThinkingEvent) and event.text:
            return [*self._open_block("thinking"), self._delta({"type": "thinking_delta",
                                                                  "thinking": event.text})]
        if isinstance(event, ThinkingEndEvent):
            out = self._open_block("thinking")
            if event.signature:
                out.append(self._delta({"type": "signature_delta", "signature": event.signature}))
            return out + self._close()
        if isinstance(event, ToolCallEndEvent):
            return self._tool_calls(event.text)
        return []

    def finish(self) -> list[dict[str, Any]]:
        """Close the last block; a reply with no block at all gets one (possibly empty) text block."""
        out: list[dict[str, Any]] = []
        if self.last is None or (self.open == "text" and self._pending):
            out += self._open_block("text")
            if self._pending:
                out.append(self._delta({"type": "text_delta", "text": self._pending}))
        self._pending = ""
        return out + self._close()

    @property
    def ended_with_tool_use(self) -> bool:
        return self.last == "tool_use"

    def _text(self, text: str) -> list[dict[str, Any]]:
        if not text.strip():
            self._pending += text
            return []
        text, self._pending = self._pending + text, ""
        if self.open != "text" and self.last is not None:
            text = text.lstrip()
        return [*self._open_block("text"), self._delta({"type": "text_delta", "text": text})]

    def _tool_calls(self, text: str) -> list[dict[str, Any]]:
        calls = parse_tool_calls(text)
        if calls is None:
            return self._text(text) if text else []
        out: list[dict[str, Any]] = []
        for call in calls:
            self._pending = ""
            block = {"type": "tool_use", "id": anthropic_id(), "name": call.name, "input": {}}
            out += self._open_block("tool_use", block)
            out.append(self._delta({"type": "input_json_delta", "partial_json": call.arguments_json}))
            out += self._close()
        return out

    def _open_block(self, kind: str, block: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        if self.open == kind and kind != "tool_use":
            return []
        out = self._close()
        if kind != "text":
            self._pending = ""
        self.index += 1
        self.open = self.last = kind
        start = block if block is not None else dict(_START[kind])
        out.append({"type": "content_block_start", "index": self.index, "content_block": start})
        return out

    def _close(self) -> list[dict[str, Any]]:
        if self.open is None:
            return []
        self.open = None
        return [{"type": "content_block_stop", "index": self.index}]

    def _delta(self, delta: dict[str, Any]) -> dict[str, Any]:
        return {"type": "content_block_delta", "index": self.index, "delta": delta}


def fold_blocks(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The content list these block events describe (what an SDK builds from a stream)."""
    content: list[dict[str, Any]] = []
    partial: dict[int, str] = {}
    for ev in events:
        kind = ev["type"]
        if kind == "content_block_start":
            content.append(copy.deepcopy(ev["content_block"]))
        elif kind == "content_block_delta":
            block, delta = content[ev["index"]], ev["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
            elif delta["type"] == "input_json_delta":
                partial[ev["index"]] = partial.get(ev["index"], "") + delta["partial_json"]
        elif kind == "content_block_stop" and ev["index"] in partial:
            content[ev["index"]]["input"] = json.loads(partial.pop(ev["index"]) or "{}")
    return content
