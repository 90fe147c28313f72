"""The Responses API's request body, and its input items as chat messages.

``input`` is a string or a list of items: messages (``input_text``,
``output_text`` and ``input_image`` parts), ``function_call`` items (a
previous reply's calls, sent back), ``function_call_output`` items (their
results) and ``reasoning`` items (skipped: the model does not read its own
reasoning back). Each becomes the chat message templates know; a bad item is a
400 naming its place (``input[2].type``). Fields kvllama cannot honour
(``background``, server-side tools) are a 400 naming the field.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, field_validator

from kvllama.server.errors import ApiError
from kvllama.server.openai.schemas import _Body
from kvllama.server.schemas_common import CacheSalt, LoraRef

_MESSAGE_ROLES = ("user", "system", "developer", "assistant")
_TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "reasoning_text")
MAX_METADATA_KEYS = 16


class TextFormat(_Body):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class TextConfig(_Body):
    format: TextFormat | None = None
    verbosity: str | None = None


class ReasoningConfig(_Body):
    effort: str | None = None
    summary: str | None = None


class ResponsesRequest(_Body):
    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    previous_response_id: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    store: bool = True
    metadata: dict[str, str] | None = None
    stream: bool = False
    background: bool | None = None
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = None
    # Extensions, as on the other routes (llama-server's and vLLM's names).
    seed: int | None = None
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = None
    grammar: str | None = None
    cache_salt: CacheSalt | None = None
    lora: list[LoraRef] | None = None
    keep_alive: float | str | None = None
    # vLLM's extension: lower runs sooner.
    priority: int | None = None

    @field_validator("background")
    @classmethod
    def _no_background(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("background responses are not supported; stream instead")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_bounds(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        """OpenAI's limits: 16 pairs, keys up to 64 characters, values up to 512."""
        if value is not None and (len(value) > MAX_METADATA_KEYS or any(
                len(k) > 64 or len(v) > 512 for k, v in value.items())):
            raise ValueError("metadata takes at most 16 pairs, keys of at most 64 characters and "
                             "values of at most 512")
        return value

    @property
    def thinking(self) -> bool | None:
        """``reasoning.effort``: "none" (or "minimal") turns thinking off, any other effort on."""
        effort = self.reasoning.effort if self.reasoning is not None else None
        return None if effort is None else effort not in ("none", "minimal")

    def function_tools(self) -> list[dict[str, Any]] | None:
        """The tools in the function shape templates know (only function tools are served)."""
        if not self.tools:
            return None
        out = []
        for i, tool in enumerate(self.tools):
            if tool.get("type") != "function" or not isinstance(tool.get("name"), str):
                raise ApiError(400, f"tools[{i}]: only function tools (type 'function' with a name) are "
                                    "supported", param=f"tools[{i}]")
            function = {"name": tool["name"], "parameters": tool.get("parameters") or {"type": "object"}}
            if tool.get("description"):
                function["description"] = tool["description"]
            out.append({"type": "function", "function": function})
        return out

    def forced_tool(self) -> str | None:
        """The tool a call must be made to: "" for any ("required"), a name, or None (not forced)."""
        choice = self.tool_choice
        if choice is None or choice in ("auto", "none"):
            return None
        if choice == "required":
            return ""
        named = isinstance(choice, dict) and choice.get("type") == "function"
        if named and isinstance(choice.get("name"), str):  # type: ignore[union-attr]
            return str(choice["name"])  # type: ignore[index]
        raise ApiError(400, "tool_choice must be 'auto', 'none', 'required' or "
                            "{'type': 'function', 'name': ...}", param="tool_choice")

    def input_items(self) -> list[dict[str, Any]]:
        """``input`` as a list of items (a string is one user message)."""
        if isinstance(self.input, str):
            return [{"type": "message", "role": "user", "content": self.input}]
        return list(self.input)


def items_to_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Input items as chat messages; consecutive ``function_call`` items make one assistant turn."""
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        kind = item.get("type", "message")
        if kind == "message" or (kind is None and "role" in item):
            messages.append(_message(item, where))
        elif kind == "function_call":
            function = {"name": _str(item, "name", where), "arguments": _str(item, "arguments", where)}
            call = {"id": _str(item, "call_id", where), "type": "function", "function": function}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls") \
                    and not last["content"]:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            if isinstance(output, list):
                output = _text_of(output, f"{where}.output")
            elif not isinstance(output, str):
                output = json.dumps(output)
            messages.append({"role": "tool", "tool_call_id": _str(item, "call_id", where), "content": output})
        elif kind == "reasoning":
            continue
        else:
            raise ApiError(400, f"{where}.type {kind!r} is not supported (message, function_call, "
                                "function_call_output or reasoning)", param=f"{where}.type")
    return messages


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in _MESSAGE_ROLES:
        raise ApiError(400, f"{where}.role must be one of {', '.join(_MESSAGE_ROLES)}", param=f"{where}.role")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise ApiError(400, f"{where}.content must be a string or a list of parts", param=f"{where}.content")
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS:
            parts.append({"type": "text", "text": _str(part, "text", at)})
        elif kind == "input_image":
            if part.get("file_id") is not None or not isinstance(part.get("image_url"), str):
                raise ApiError(400, f"{at}: images are sent inline as image_url data URLs (no file ids)",
                               param=f"{at}.image_url")
            parts.append({"type": "input_image", "image_url": part["image_url"]})
        else:
            raise ApiError(400, f"{at}.type {kind!r} is not supported (input_text, output_text or "
                                "input_image)", param=f"{at}.type")
    return {"role": role, "content": parts}


def _text_of(parts: list[Any], where: str) -> str:
    texts = []
    for j, part in enumerate(parts):
        if not isinstance(part, dict) or part.get("type") not in _TEXT_PARTS:
            raise ApiError(400, f"{where}[{j}] must be a text part", param=f"{where}[{j}]")
        texts.append(_str(part, "text", f"{where}[{j}]"))
    return "".join(texts)


def _str(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise ApiError(400, f"{where}.{key} must be a string", param=f"{where}.{key}")
    return value
