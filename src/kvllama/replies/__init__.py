"""Replies: the one reducer of engine events into reply content, shared by every API.

``reducer`` (:class:`Reducer`: events -> exact result fields + content
deltas, with the whitespace and tool-call rules), ``deltas`` (the typed
deltas and :class:`Reply`, their fold), ``tool_calls`` (parsing a model's
tool-call text). The HTTP families only render deltas (SSE frames) or a
Reply (one JSON body); this package does not import :mod:`kvllama.server`.
"""

from kvllama.replies.deltas import (
    Block,
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
from kvllama.replies.reducer import Reducer
from kvllama.replies.tool_calls import ToolCall, parse_tool_calls

__all__ = [
    "Block", "BlockEnd", "BlockKind", "BlockStart", "Delta", "Reducer", "Reply", "SignatureDelta",
    "TextDelta", "ThinkingDelta", "ToolCall", "ToolInputDelta", "parse_tool_calls",
]
