"""Normalising chat messages from either API's shape into what templates expect.

Templates (Hugging Face style Jinja) expect ``message.content`` to be a
string. Callers send strings, OpenAI content-part lists, or Anthropic content
block lists (text, tool_use, tool_result); all become plain messages here,
with tool calls in OpenAI's ``tool_calls`` shape, which is what model
templates are written against. Anything that cannot be rendered as text
(images, audio) is an :class:`InvalidChatContentError`, never a silent drop.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from kvllama.errors import InvalidChatContentError

ROLES = ("system", "developer", "user", "assistant", "tool")
# Blocks that carry no prompt text for a text-only model and are skipped.
_IGNORED_BLOCKS = ("thinking", "redacted_thinking")


def normalize_messages(
    messages: Sequence[Mapping[str, Any]], system: str | Sequence[Any] | None = None
) -> list[dict[str, Any]]:
    if not isinstance(messages, Sequence) or isinstance(messages, str | bytes):
        raise InvalidChatContentError("messages must be a list of {role, content} objects")
    out: list[dict[str, Any]] = []
    if system is not None:
        out.append({"role": "system", "content": _text_of(system, "system")})
    for index, message in enumerate(messages):
        out.extend(_normalize_one(message, index))
    return out


def _normalize_one(message: Any, index: int) -> list[dict[str, Any]]:
    where = f"messages[{index}]"
    if not isinstance(message, Mapping):
        raise InvalidChatContentError(f"{where} must be an object with role and content")
    role = message.get("role")
    if role not in ROLES:
        raise InvalidChatContentError(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}")
    if role == "developer":
        role = "system"
    content = message.get("content")
    if content is None and not message.get("tool_calls"):
        raise InvalidChatContentError(f"{where}.content is missing")
    result: dict[str, Any] = {"role": role}
    extra: list[dict[str, Any]] = []
    if isinstance(content, str) or content is None:
        result["content"] = content or ""
    elif isinstance(content, Sequence):
        text, tool_calls, tool_results = _split_blocks(content, where)
        result["content"] = text
        if tool_calls:
            result["tool_calls"] = tool_calls
        extra = tool_results
    else:
        raise InvalidChatContentError(f"{where}.content must be a string or a list of blocks")
    for key in ("tool_calls", "tool_call_id", "name"):
        if key in message and message[key] is not None:
            result[key] = message[key]
    # Anthropic puts tool results in a user turn; templates want role "tool" turns.
    if extra and not result["content"]:
        return extra
    return [*extra, result] if extra else [result]


def _split_blocks(
    blocks: Sequence[Any], where: str
) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    tool_results: list[dict[str, Any]] = []
    for i, block in enumerate(blocks):
        at = f"{where}.content[{i}]"
        if isinstance(block, str):
            texts.append(block)
            continue
        if not isinstance(block, Mapping):
            raise InvalidChatContentError(f"{at} must be a content block object")
        kind = block.get("type")
        if kind == "text":
            texts.append(_require_str(block, "text", at))
        elif kind == "tool_use":
            tool_calls.append({
                "id": block.get("id", ""),
                "type": "function",
                "function": {
                    "name": _require_str(block, "name", at),
                    "arguments": json.dumps(block.get("input", {}), ensure_ascii=False),
                },
            })
        elif kind == "tool_result":
            tool_results.append({
                "role": "tool",
                "tool_call_id": block.get("tool_use_id", ""),
                "content": _text_of(block.get("content", ""), at),
            })
        elif kind in _IGNORED_BLOCKS:
            continue
        else:
            raise InvalidChatContentError(
                f"{at}: content blocks of type {kind!r} are not supported by a text model"
            )
    return "".join(texts), tool_calls, tool_results


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        text, calls, results = _split_blocks(content, where)
        if calls or results:
            raise InvalidChatContentError(f"{where}: only text blocks are allowed here")
        return text
    raise InvalidChatContentError(f"{where} must be a string or a list of text blocks")


def _require_str(block: Mapping[str, Any], key: str, where: str) -> str:
    value = block.get(key)
    if not isinstance(value, str):
        raise InvalidChatContentError(f"{where}.{key} must be a string")
    return value
