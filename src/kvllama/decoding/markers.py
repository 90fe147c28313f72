"""Recognising thinking and tool-call markers in the generated text.

A model loaded with markers (presets in :data:`PRESETS`, documented in
docs/agents.md) gets one :class:`MarkerRouter` per request. The decode loop
pushes every token's text through it and gets back where that text belongs:
the visible ``text`` channel, ``thinking`` or ``tool_call``, plus boundary
items when a thinking span or a tool call ends.

Why on text, not token ids: the same marker can be sampled as different
tokens. Under a grammar, Gemma 3 spells ``</tool_call>`` one character per
token, never as the tokens the tokenizer gives for that string, so id
matching missed every marker (measured). Special-token markers (Qwen's
``<think>``) are rendered as their text before they get here, so they match
too. Text that could be the start of a marker is held back until the marker
completes or is ruled out, so no partial marker ever leaks into a channel.
Payload markers stay in the tool call's text (they are part of its syntax,
and the call must be replayable verbatim); the outer markers are swallowed.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from kvllama.errors import InvalidOptionError
from kvllama.options import ModelOptions


class Kind(enum.StrEnum):
    """Where routed text goes: a channel, or the end of a span (which carries "" as text)."""

    TEXT = "text"
    THINKING = "thinking"
    TOOL_CALL = "tool_call"
    THINKING_END = "thinking_end"
    TOOL_CALL_END = "tool_call_end"


class State(enum.StrEnum):
    """The router's position: plain text, inside thinking, a tool call's syntax, or its payload."""

    TEXT = "text"
    THINKING = "thinking"
    TOOL_CALL = "tool_call"
    PAYLOAD = "payload"


class Action(enum.Enum):
    """What a marker does when it is seen in the current state."""

    THINK = "think"
    SWALLOW = "swallow"
    END_THINK = "end_think"
    CALL = "call"
    END_CALL = "end_call"
    OPEN = "open"
    CLOSE = "close"


Routed = tuple[Kind, str]


@dataclass(frozen=True)
class MarkerStrings:
    """A model's markers: thinking (start, end); tool_call start, end, optional payload pair."""

    thinking: tuple[str, str] | None = None
    tool_call: Mapping[str, str] | None = None

    @property
    def has_tool_calls(self) -> bool:
        return self.tool_call is not None


_THINK = ("<think>", "</think>")
_HERMES = {"start": "<tool_call>", "end": "</tool_call>"}
# Named model families (docs/agents.md says which models use which).
PRESETS: dict[str, MarkerStrings] = {
    "think": MarkerStrings(thinking=_THINK),
    "deepseek-r1": MarkerStrings(thinking=_THINK),
    "qwen3": MarkerStrings(thinking=_THINK, tool_call=_HERMES),
    "hermes": MarkerStrings(tool_call=_HERMES),
    "gemma-tools": MarkerStrings(tool_call={"start": "```tool_code", "end": "```"}),
}


class MarkerRouter:
    """One request's marker state machine: text | thinking | tool_call | payload."""

    def __init__(
        self,
        markers: MarkerStrings,
        *,
        thinking_enabled: bool = True,
        thinking_budget_tokens: int | None = None,
    ) -> None:
        self._think = markers.thinking if thinking_enabled else None
        tool = dict(markers.tool_call or {})
        self._tool = (tool["start"], tool["end"]) if tool else None
        self._payload = (tool["payload_start"], tool["payload_end"]) if "payload_start" in tool else None
        self._budget = thinking_budget_tokens
        self.state = State.TEXT
        self.thinking_tokens = 0
        self.budget_spent = False
        self._held = ""

    @property
    def greedy_now(self) -> bool:
        """True inside a tool call's syntax (outside its payload): sample greedily."""
        return self.state is State.TOOL_CALL

    def push(self, text: str) -> list[Routed]:
        """Route one token's text (call once per token: the thinking budget counts tokens)."""
        out: list[Routed] = []
        if self.state is State.THINKING and self._budget is not None:
            self.thinking_tokens += 1
            if self.thinking_tokens > self._budget:
                self._release_held(out)
                out.append((Kind.THINKING_END, ""))
                self.state, self.budget_spent = State.TEXT, True
        self._scan(self._held + text, out)
        return out

    def flush(self) -> list[Routed]:
        """End of generation: release held text and close any open span."""
        out: list[Routed] = []
        self._release_held(out)
        if self.state is State.THINKING:
            out.append((Kind.THINKING_END, ""))
        elif self.state in (State.TOOL_CALL, State.PAYLOAD):
            out.append((Kind.TOOL_CALL_END, ""))
        self.state = State.TEXT
        return out

    def _release_held(self, out: list[Routed]) -> None:
        if self._held:
            out.append((self._channel(), self._held))
            self._held = ""

    def _channel(self) -> Kind:
        return {State.TEXT: Kind.TEXT, State.THINKING: Kind.THINKING}.get(self.state, Kind.TOOL_CALL)

    def _markers(self) -> list[tuple[str, Action]]:
        """(marker, action) pairs that mean something in the current state."""
        live: list[tuple[str, Action]] = []
        if self.state is State.TEXT:
            if self._think:
                # After a spent budget, late thinking markers are swallowed, never reopen thinking.
                live += [(self._think[0], Action.SWALLOW if self.budget_spent else Action.THINK)]
                if self.budget_spent:
                    live += [(self._think[1], Action.SWALLOW)]
            if self._tool:
                live += [(self._tool[0], Action.CALL)]
        elif self.state is State.THINKING and self._think:
            live += [(self._think[1], Action.END_THINK)]
        elif self.state in (State.TOOL_CALL, State.PAYLOAD) and self._tool:
            live += [(self._tool[1], Action.END_CALL)]
            if self._payload:
                live += [self._payload_marker()]
        return live

    def _payload_marker(self) -> tuple[str, Action]:
        assert self._payload is not None
        if self.state is State.TOOL_CALL:
            return (self._payload[0], Action.OPEN)
        return (self._payload[1], Action.CLOSE)

    def _scan(self, window: str, out: list[Routed]) -> None:
        while True:
            live = self._markers()
            hits = [(window.find(m), m, a) for m, a in live if m and m in window]
            if not hits:
                keep = _partial_suffix(window, [m for m, _ in live])
                if window[: len(window) - keep]:
                    out.append((self._channel(), window[: len(window) - keep]))
                self._held = window[len(window) - keep :]
                return
            at, marker, action = min(hits)
            if window[:at]:
                out.append((self._channel(), window[:at]))
            self._apply(action, marker, out)
            window = window[at + len(marker) :]

    def _apply(self, action: Action, marker: str, out: list[Routed]) -> None:
        if action is Action.THINK:
            self.state = State.THINKING
        elif action is Action.END_THINK:
            out.append((Kind.THINKING_END, ""))
            self.state = State.TEXT
        elif action is Action.CALL:
            self.state = State.TOOL_CALL
        elif action is Action.END_CALL:
            out.append((Kind.TOOL_CALL_END, ""))
            self.state = State.TEXT
        elif action in (Action.OPEN, Action.CLOSE):
            out.append((Kind.TOOL_CALL, marker))
            self.state = State.PAYLOAD if action is Action.OPEN else State.TOOL_CALL


def _partial_suffix(window: str, markers: list[str]) -> int:
    """Length of the longest suffix of ``window`` that is a proper prefix of a marker."""
    best = 0
    for m in markers:
        for n in range(min(len(m) - 1, len(window)), best, -1):
            if window.endswith(m[:n]):
                best = n
                break
    return best


def markers_from_options(options: ModelOptions) -> MarkerStrings | None:
    """The model's thinking / tool-call markers from its options (None: no markers)."""
    thinking = options.thinking_markers
    tool_call = options.tool_call_markers
    if options.markers is not None:
        preset = PRESETS.get(options.markers)
        if preset is None:
            raise InvalidOptionError("markers", options.markers, "one of " + ", ".join(sorted(PRESETS)))
        thinking = thinking or preset.thinking
        tool_call = tool_call or preset.tool_call
    if thinking is None and tool_call is None:
        return None
    return MarkerStrings(thinking=tuple(thinking) if thinking else None, tool_call=tool_call)  # type: ignore[arg-type]
