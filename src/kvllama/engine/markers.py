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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from kvllama.errors import InvalidOptionError
from kvllama.options import ModelOptions

Kind = Literal["text", "thinking", "tool_call", "thinking_end", "tool_call_end"]
# (channel or boundary, text); boundaries carry "" as text.
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
        self.state = "text"
        self.thinking_tokens = 0
        self.budget_spent = False
        self._held = ""

    @property
    def greedy_now(self) -> bool:
        """True inside a tool call's syntax (outside its payload): sample greedily."""
        return self.state == "tool_call"

    def push(self, text: str) -> list[Routed]:
        """Route one token's text (call once per token: the thinking budget counts tokens)."""
        out: list[Routed] = []
        if self.state == "thinking" and self._budget is not None:
            self.thinking_tokens += 1
            if self.thinking_tokens > self._budget:
                self._release_held(out)
                out.append(("thinking_end", ""))
                self.state, self.budget_spent = "text", True
        self._scan(self._held + text, out)
        return out

    def flush(self) -> list[Routed]:
        """End of generation: release held text and close any open span."""
        out: list[Routed] = []
        self._release_held(out)
        if self.state == "thinking":
            out.append(("thinking_end", ""))
        elif self.state in ("tool_call", "payload"):
            out.append(("tool_call_end", ""))
        self.state = "text"
        return out

    def _release_held(self, out: list[Routed]) -> None:
        if self._held:
            out.append((self._channel(), self._held))
            self._held = ""

    def _channel(self) -> Kind:
        return {"text": "text", "thinking": "thinking"}.get(self.state, "tool_call")  # type: ignore[return-value]

    def _markers(self) -> list[tuple[str, str]]:
        """(marker, action) pairs that mean something in the current state."""
        live: list[tuple[str, str]] = []
        if self.state == "text":
            if self._think:
                # After a spent budget, late thinking markers are swallowed, never reopen thinking.
                live += [(self._think[0], "swallow" if self.budget_spent else "think")]
                if self.budget_spent:
                    live += [(self._think[1], "swallow")]
            if self._tool:
                live += [(self._tool[0], "call")]
        elif self.state == "thinking" and self._think:
            live += [(self._think[1], "end_think")]
        elif self.state in ("tool_call", "payload") and self._tool:
            live += [(self._tool[1], "end_call")]
            if self._payload:
                live += [self._payload_marker()]
        return live

    def _payload_marker(self) -> tuple[str, str]:
        assert self._payload is not None
        return (self._payload[0], "open") if self.state == "tool_call" else (self._payload[1], "close")

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

    def _apply(self, action: str, marker: str, out: list[Routed]) -> None:
        if action == "think":
            self.state = "thinking"
        elif action == "end_think":
            out.append(("thinking_end", ""))
            self.state = "text"
        elif action == "call":
            self.state = "tool_call"
        elif action == "end_call":
            out.append(("tool_call_end", ""))
            self.state = "text"
        elif action in ("open", "close"):
            out.append(("tool_call", marker))
            self.state = "payload" if action == "open" else "tool_call"


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
