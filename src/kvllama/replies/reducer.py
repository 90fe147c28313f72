"""The one reducer of engine events: into the exact result fields, and into content deltas.

Every consumer folds events through :class:`Reducer`: the Python API (via
:class:`~kvllama.results.ResultBuilder`), and both HTTP families, streamed or
not. It keeps two views in one pass:

* the exact fields of :class:`~kvllama.results.CompletionResult` (tokens,
  text as generated, thinking, signature, tool-call texts, done or error);
* content deltas (:mod:`kvllama.replies.deltas`) for a reply shown to an
  API client, and :attr:`Reducer.reply`, their fold.

The presentation rules live here, once:

* thinking is passed on exactly (the signature covers those bytes); its
  block closes at ThinkingEndEvent, with the signature when there is one;
* a tool-call span becomes one tool_use block per call; a span that is not a
  call in any accepted shape is shown as text instead of being dropped;
* whitespace-only text is held, so whitespace alone never opens a text
  block: held whitespace is dropped when thinking or a tool call comes next,
  and a text block that follows another block starts at its first non-blank
  character (models put "\\n\\n" after ``</think>``). A reply with no block at
  all ends with one (possibly empty, possibly whitespace) text block.
"""

from __future__ import annotations

from dataclasses import replace

from kvllama.events import (
    DoneEvent,
    ErrorEvent,
    Event,
    TextEvent,
    ThinkingEndEvent,
    ThinkingEvent,
    TokenEvent,
    TokenLogprob,
    ToolCallEndEvent,
    ToolCallEvent,
)
from kvllama.replies.deltas import (
    BlockEnd,
    BlockKind,
    BlockStart,
    Delta,
    Reply,
    SignatureDelta,
    TextDelta,
    ThinkingDelta,
    ToolInputDelta,
)
from kvllama.replies.tool_calls import ToolCall, parse_tool_calls


class Reducer:
    """Folds events, in order; :meth:`add` returns the content deltas each event yields.

    The DoneEvent closes the reply (:meth:`finish`), so a stream's deltas are
    complete once its last event is added.
    """

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.logprobs: list[TokenLogprob] = []
        self.chunks: list[str] = []
        self.thinking: list[str] = []
        self.thinking_signature = ""
        self.tool_calls: list[str] = []
        self.done: DoneEvent | None = None
        self.error: Exception | None = None
        self.reply = Reply()
        self._index = -1
        self._open: BlockKind | None = None
        self._last: BlockKind | None = None  # kind of the last block opened
        self._held = ""  # whitespace-only text not shown yet
        self._text_begun = False

    def add(self, event: Event) -> list[Delta]:
        match event:
            case TokenEvent(token=token, logprob=logprob):
                self.tokens.append(token)
                if logprob is not None:
                    self.logprobs.append(logprob)
                return []
            case TextEvent(text=text):
                self.chunks.append(text)
                return self._emit(self._text(text)) if text else []
            case ThinkingEvent(text=text):
                self.thinking.append(text)
                return self._emit(self._thought(text)) if text else []
            case ThinkingEndEvent(signature=signature):
                self.thinking_signature = signature
                return self._emit(self._thought_end(signature))
            case ToolCallEvent():
                return []  # the end event carries the whole call
            case ToolCallEndEvent(text=text, span=span):
                self.tool_calls.append(text)
                return self._emit(self._tool_calls(text, span))
            case DoneEvent():
                self.done = event
                return self.finish()
            case ErrorEvent(error=error):
                self.error = error
                return []
            case _:
                raise TypeError(f"not a kvllama event: {event!r}")

    def finish(self) -> list[Delta]:
        """Close the last block (idempotent); a reply with no block at all gets one text block."""
        out: list[Delta] = []
        if self._last is None or (self._open == "text" and self._held):
            out += self._open_block("text")
            if self._held:
                out.append(TextDelta(self._index, self._held, self._held))
        self._held = ""
        return self._emit(out + self._close())

    def _emit(self, deltas: list[Delta]) -> list[Delta]:
        for delta in deltas:
            self.reply.apply(delta)
        return deltas

    def _text(self, text: str) -> list[Delta]:
        if not text.strip():
            self._held += text
            return []
        text, self._held = self._held + text, ""
        flat = text
        if self._open != "text" and self._last is not None:
            text = text.lstrip()
            flat = flat if self._text_begun else text
        self._text_begun = True
        return [*self._open_block("text"), TextDelta(self._index, text, flat)]

    def _thought(self, text: str) -> list[Delta]:
        self._held = ""
        return [*self._open_block("thinking"), ThinkingDelta(self._index, text)]

    def _thought_end(self, signature: str) -> list[Delta]:
        self._held = ""
        out = self._open_block("thinking")
        if signature:
            out.append(SignatureDelta(self._index, signature))
        return out + self._close()

    def _tool_calls(self, text: str, span: str = "") -> list[Delta]:
        calls = parse_tool_calls(text)
        if calls is None:
            return self._text(text) if text else []
        if span:
            calls = [replace(c, id=f"call_{span}_{k}") for k, c in enumerate(calls)]
        out: list[Delta] = []
        for call in calls:
            self._held = ""
            out += self._open_block("tool_use", call)
            out.append(ToolInputDelta(self._index, call.arguments_json))
            out += self._close()
        return out

    def _open_block(self, kind: BlockKind, call: ToolCall | None = None) -> list[Delta]:
        if self._open == kind and kind != "tool_use":
            return []
        out = self._close()
        self._index += 1
        self._open = self._last = kind
        out.append(BlockStart(self._index, kind, call))
        return out

    def _close(self) -> list[Delta]:
        if self._open is None:
            return []
        self._open = None
        return [BlockEnd(self._index)]
