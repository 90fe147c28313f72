"""Content deltas: what the reply reducer emits, and the reply they fold into.

A reply is a sequence of blocks (text, thinking, tool_use) in the order the
model produced them. The reducer describes it as small typed deltas (a
block starts, text is added to it, it ends); a streamed reply renders each
delta as it comes, a whole reply renders :class:`Reply`, the fold of the very
same deltas, so the two cannot disagree on content.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kvllama.replies.tool_calls import ToolCall

BlockKind = Literal["text", "thinking", "tool_use"]


@dataclass(frozen=True, slots=True)
class BlockStart:
    """Block ``index`` opens; a tool_use block names its call up front (the name leads the block)."""

    index: int
    kind: BlockKind
    call: ToolCall | None = None


@dataclass(frozen=True, slots=True)
class TextDelta:
    """Text added to text block ``index``.

    ``text`` is the block's own text. ``flat`` is the same piece for a reply
    whose text is one string (OpenAI's ``content``): whitespace trimmed from
    the start of a block that follows another block is kept there once the
    text has begun, since in one string it still separates the parts.
    """

    index: int
    text: str
    flat: str


@dataclass(frozen=True, slots=True)
class ThinkingDelta:
    index: int
    text: str


@dataclass(frozen=True, slots=True)
class SignatureDelta:
    """The thinking block's signature (never sent empty: no key, no signature)."""

    index: int
    signature: str


@dataclass(frozen=True, slots=True)
class ToolInputDelta:
    """The call's arguments as one JSON object text."""

    index: int
    arguments_json: str


@dataclass(frozen=True, slots=True)
class BlockEnd:
    index: int


Delta = BlockStart | TextDelta | ThinkingDelta | SignatureDelta | ToolInputDelta | BlockEnd


@dataclass(slots=True)
class Block:
    """One folded block; ``parts`` holds text or thinking, ``arguments_json`` a tool call's input."""

    kind: BlockKind
    parts: list[str] = field(default_factory=list)
    signature: str = ""
    call: ToolCall | None = None
    arguments_json: str = ""

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def name(self) -> str:
        """The tool call's name ("" for other blocks)."""
        return self.call.name if self.call is not None else ""


class Reply:
    """The fold of a reply's deltas: its blocks, and the one-string views of them."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self._flat: list[str] = []

    def apply(self, delta: Delta) -> None:
        match delta:
            case BlockStart(kind=kind, call=call):
                self.blocks.append(Block(kind, call=call))
            case TextDelta(index=index, text=text, flat=flat):
                self.blocks[index].parts.append(text)
                self._flat.append(flat)
            case ThinkingDelta(index=index, text=text):
                self.blocks[index].parts.append(text)
            case SignatureDelta(index=index, signature=signature):
                self.blocks[index].signature = signature
            case ToolInputDelta(index=index, arguments_json=arguments):
                self.blocks[index].arguments_json += arguments
            case BlockEnd():
                pass

    @property
    def text(self) -> str:
        """All text as one string (the ``flat`` pieces)."""
        return "".join(self._flat)

    @property
    def thinking(self) -> str:
        return "".join(b.text for b in self.blocks if b.kind == "thinking")

    @property
    def calls(self) -> list[Block]:
        """The tool_use blocks, in order."""
        return [b for b in self.blocks if b.kind == "tool_use"]

    @property
    def ends_with_tool_use(self) -> bool:
        return bool(self.blocks) and self.blocks[-1].kind == "tool_use"
