"""Turning one request's sampled tokens into stream events, channel by channel.

Without markers every token is reply text. With a model's thinking or
tool-call markers, :class:`~kvllama.decoding.markers.MarkerRouter` splits the
stream into text, thinking and tool-call channels; each channel has its own
UTF-8 assembler, stop sequences apply to the reply text only, a thinking span
ends with its HMAC signature, and a tool call ends with the exact bytes the
model sampled (so a client can replay them verbatim and keep the cached
prefix matching).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable

from kvllama.decoding.markers import Kind, MarkerRouter, Routed
from kvllama.decoding.request import EventSink
from kvllama.decoding.text import StopMatcher, Utf8Assembler
from kvllama.events import TextEvent, ThinkingEndEvent, ThinkingEvent, ToolCallEndEvent, ToolCallEvent
from kvllama.replies.tool_calls import parse_tool_calls
from kvllama.signing import sign_thinking

# token id, special rendering -> bytes
PieceFn = Callable[[int, bool], bytes]


class Channels:
    def __init__(
        self,
        piece: PieceFn,
        sink: EventSink,
        stops: tuple[str, ...],
        router: MarkerRouter | None = None,
        signing_key: bytes | None = None,
    ) -> None:
        self._piece = piece
        self._sink = sink
        self._router = router
        self._key = signing_key
        self._utf8 = Utf8Assembler()
        self._stops = StopMatcher(stops)
        self._thinking_parts: list[str] = []
        self._tool_parts: list[str] = []
        # (span id, calls in it) of every tool-call span so far (decoding/tool_memory.py).
        self.call_spans: list[tuple[str, int]] = []
        # The stop sequence that ended the reply, once one matched.
        self.stopped: str | None = None

    @property
    def greedy_now(self) -> bool:
        """True while the next token is tool-call syntax (sampled greedily)."""
        return self._router is not None and self._router.greedy_now

    def push(self, token: int) -> str | None:
        """Route one sampled token; returns the stop sequence if the reply must end.

        With markers, control tokens are rendered as their text so special-token
        markers (Qwen's <think>) are seen; without, they render as nothing.
        """
        text = self._utf8.push(self._piece(token, self._router is not None))
        self._route(self._router.push(text) if self._router is not None else ((Kind.TEXT, text),))
        return self.stopped

    def finish(self) -> str | None:
        """End of generation: close open spans and release held text (unless a stop ended it)."""
        tail = self._utf8.flush()
        if self._router is not None:
            self._route([*(self._router.push(tail) if tail else ()), *self._router.flush()])
        else:
            self._route(((Kind.TEXT, tail),))
        if self.stopped is None:
            rest = self._stops.flush()
            if rest:
                self._sink.put(TextEvent(rest))
        return self.stopped

    def _route(self, items: Iterable[Routed]) -> None:
        for kind, text in items:
            if self.stopped is not None:
                return
            if kind is Kind.TEXT:
                self._emit_text(text)
            elif kind is Kind.THINKING and text:
                self._thinking_parts.append(text)
                self._sink.put(ThinkingEvent(text))
            elif kind is Kind.THINKING_END:
                whole = "".join(self._thinking_parts)
                self._thinking_parts.clear()
                self._sink.put(ThinkingEndEvent(whole, sign_thinking(self._key, whole)))
            elif kind is Kind.TOOL_CALL and text:
                self._tool_parts.append(text)
                self._sink.put(ToolCallEvent(text))
            elif kind is Kind.TOOL_CALL_END:
                whole = "".join(self._tool_parts)
                self._tool_parts.clear()
                span = uuid.uuid4().hex[:20]
                calls = parse_tool_calls(whole)
                if calls:
                    self.call_spans.append((span, len(calls)))
                self._sink.put(ToolCallEndEvent(whole, whole.encode("utf-8"), span))

    def _emit_text(self, text: str) -> None:
        if not text:
            return
        result = self._stops.push(text)
        if result.text:
            self._sink.put(TextEvent(result.text))
        if result.matched is not None:
            self.stopped = result.matched
