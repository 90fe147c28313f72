"""Where a chat prompt's shared prefixes end, in tokens: the engine saves a row at each.

Many requests share the start of their prompt and differ after it: users of
one app after its system prompt, a conversation's branches after its
history, Anthropic clients after each ``cache_control`` breakpoint. The
engine can save a row at such a point while it prefills (decoding/warm.py,
``save_points``); this module finds the points, for any chat template:
render the conversation once more with everything after the point replaced
by a marker, and the tokens the two renderings share are the prefix. No
template needs to be understood, and the offset is in the very tokens the
engine will compute (a boundary token that merges across the point is
simply not part of the prefix).

Points, shortest first (the engine keeps a few and puts them on its grid):
each ``cache_control`` breakpoint (tools, system blocks, message blocks),
the end of the system prompt, and the end of the history before the last
message. A rendering that the marker does not change (a template that
ignores tools, say) gives no point.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvllama.tokens import shared_prefix

MARKER = "\u2063kvllama-save-point\u2063"
MAX_POINTS = 6
_SYSTEM_ROLES = ("system", "developer")

Messages = list[dict[str, Any]]
System = str | Sequence[Any] | None
# (messages, system, tools) -> the prompt text; text -> the tokens the engine queues for it.
Render = Callable[[Sequence[Mapping[str, Any]], System, Sequence[Mapping[str, Any]] | None], str]
Tokenize = Callable[[str], list[int]]


@dataclass(frozen=True)
class Conversation:
    messages: Sequence[Mapping[str, Any]]
    system: System = None
    tools: Sequence[Mapping[str, Any]] | None = None  # as the template gets them


@dataclass(frozen=True)
class Variant:
    """The conversation with everything after one point replaced by the marker."""

    messages: Messages
    system: System
    tools: Sequence[Mapping[str, Any]] | None


def save_points(render: Render, tokenize: Tokenize, conv: Conversation, text: str, tokens: Sequence[int],
                breakpoints: Sequence[Variant] = ()) -> tuple[int, ...]:
    """Token offsets into the prompt ``text`` (``tokens``: ``tokenize(text)``) where shared prefixes end."""
    points: set[int] = set()
    for variant in [*breakpoints, *_structural(conv)][:MAX_POINTS]:
        other = render(variant.messages, variant.system, variant.tools)
        if other == text:
            continue
        n = shared_prefix(tokens, tokenize(other))
        if 0 < n < len(tokens):
            points.add(n)
    return tuple(sorted(points))


def _structural(conv: Conversation) -> list[Variant]:
    """The end of the system prompt, and the end of the history before the last message."""
    messages = [dict(m) for m in conv.messages]
    turns = [i for i, m in enumerate(messages) if m.get("role") not in _SYSTEM_ROLES]
    has_system = bool(conv.system) or len(turns) < len(messages)
    out: list[Variant] = []
    if has_system and turns:
        out.append(Variant(_replace_content(messages, turns[0]), conv.system, conv.tools))
    if len(turns) >= 2:
        out.append(Variant(_replace_content(messages, turns[-1]), conv.system, conv.tools))
    return out


def _replace_content(messages: Messages, index: int) -> Messages:
    changed = dict(messages[index], content=MARKER)
    changed.pop("tool_calls", None)
    return [*messages[:index], changed]


def anthropic_breakpoints(
    messages: Sequence[Mapping[str, Any]], system: System, tools: Sequence[Mapping[str, Any]] | None,
    tool_shape: Callable[[Sequence[Mapping[str, Any]] | None], Sequence[Mapping[str, Any]] | None],
) -> list[Variant]:
    """One variant per ``cache_control`` block, in Anthropic's prefix order: tools, system, messages."""
    out: list[Variant] = []
    raw_tools = list(tools or [])
    msgs = [dict(m) for m in messages]
    for i, tool in enumerate(raw_tools):
        if _marked(tool):
            cut = [*raw_tools[: i + 1], {"name": "save_point", "description": MARKER,
                                         "input_schema": {"type": "object"}}]
            out.append(Variant([{"role": "user", "content": MARKER}], None, tool_shape(cut)))
    if isinstance(system, Sequence) and not isinstance(system, str):
        for i, block in enumerate(system):
            if _marked(block):
                cut_system = [*system[: i + 1], {"type": "text", "text": MARKER}]
                out.append(Variant([{"role": "user", "content": MARKER}], cut_system, tool_shape(raw_tools)))
    for k, message in enumerate(msgs):
        content = message.get("content")
        if isinstance(content, str) or not isinstance(content, Sequence):
            continue
        for j, block in enumerate(content):
            if _marked(block):
                cut_msg = dict(message, content=[*content[: j + 1], {"type": "text", "text": MARKER}])
                out.append(Variant([*msgs[:k], cut_msg], system, tool_shape(raw_tools)))
    return out


def _marked(block: Any) -> bool:
    return isinstance(block, Mapping) and isinstance(block.get("cache_control"), Mapping)
