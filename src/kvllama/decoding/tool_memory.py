"""Exact tool-call replay: the assistant turn a tool call came from, by the call's id.

A client sends a tool call back as structured data (a name and JSON
arguments) and the chat template renders it its own way: other whitespace,
key order or quoting than the model sampled, so the next prompt holds tokens
the model never produced. kvllama names every call ``call_<span>_<k>`` (the
tool-call span it came from, and its place in that span), remembers the
whole assistant turn each span came from (its tokens rendered as text, control
tokens included), and, when a later request's assistant message carries
exactly the calls of one remembered turn, renders that message as the turn's
own text (Engine.apply_chat_template). The prompt then holds what the model
produced. Calls it does not know (another server, an expired entry, an edited
message) are rendered by the template as before. Thread-safe; an LRU.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

MAX_TURNS = 4096
_PREFIXES = ("call_", "toolu_")


def span_of(call_id: object) -> str | None:
    """The span id inside a call id this engine gave out (OpenAI or Anthropic form), else None."""
    if not isinstance(call_id, str):
        return None
    for prefix in _PREFIXES:
        if call_id.startswith(prefix):
            span, sep, index = call_id[len(prefix):].rpartition("_")
            return span if sep and span and index.isdigit() else None
    return None


class ToolCallMemory:
    def __init__(self, max_turns: int = MAX_TURNS) -> None:
        self._turns: OrderedDict[str, tuple[str, int]] = OrderedDict()  # span -> (turn text, n calls)
        self._lock = threading.Lock()
        self._max = max_turns

    def remember(self, spans: Iterable[tuple[str, int]], turn_text: str) -> None:
        """``spans``: (span id, number of calls in it) for every tool-call span of one turn."""
        with self._lock:
            for span, n_calls in spans:
                self._turns[span] = (turn_text, n_calls)
                self._turns.move_to_end(span)
            while len(self._turns) > self._max:
                self._turns.popitem(last=False)

    def replay(self, messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Assistant messages whose calls are exactly one remembered turn's, as that turn's text."""
        return [self._replayed(m) for m in messages]

    def _replayed(self, message: Mapping[str, Any]) -> dict[str, Any]:
        calls = message.get("tool_calls") or []
        if message.get("role") != "assistant" or not calls:
            return dict(message)
        spans = {span_of(c.get("id") if isinstance(c, Mapping) else None) for c in calls}
        with self._lock:
            turns = [self._turns.get(s) for s in spans if s is not None]
        known = [t for t in turns if t is not None]
        if None in spans or len(known) != len(spans) or len({text for text, _ in known}) != 1:
            return dict(message)
        if sum(n for _, n in known) != len(calls):
            return dict(message)  # some of the turn's calls were dropped, or repeated
        return {"role": "assistant", "content": known[0][0]}
