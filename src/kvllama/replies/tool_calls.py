"""Parsing the text of a model's tool call into (name, arguments).

The engine hands over the exact text between the model's tool-call markers
(:class:`~kvllama.events.ToolCallEndEvent`); the reply reducer turns it into
structured calls here, once for every API family (each family mints its own
call ids when it renders them). Accepted shapes (the table in
docs/agents.md), after stripping whitespace and an optional code fence:

* ``{"name": ..., "arguments": {...}}`` - Hermes, Qwen 2.5/3, most fine-tunes
  (``arguments`` may also be a JSON string holding the object);
* ``{"name": ..., "parameters": {...}}`` - Llama 3.x JSON tool calling;
* ``{"name": ..., "input": {...}}`` - Anthropic's own shape;
* ``{"function": {"name": ..., "arguments": ...}}`` - OpenAI's shape;
* a JSON list of any of these (several calls inside one span);
* ``name(key=value, ...)`` or ``print(name(...))`` with literal values -
  Gemma's ``tool_code`` and other Python-call formats.

Anything else is not a call: the reducer shows it as text instead of
dropping it.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]
    # ``call_<span>_<k>`` for a call the engine sampled (replayed exactly when sent back);
    # "" when unnamed (the server then makes one up).
    id: str = ""

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.arguments, ensure_ascii=False)


def parse_tool_calls(text: str) -> list[ToolCall] | None:
    """The calls in one tool-call span, or None when it is not a call in any accepted shape."""
    body = _unfence(text.strip())
    if not body:
        return None
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        call = _python_call(body)
        return [call] if call is not None else None
    items = data if isinstance(data, list) else [data]
    calls = [_json_call(item) for item in items]
    if not calls or any(c is None for c in calls):
        return None
    return calls  # type: ignore[return-value]


def _unfence(body: str) -> str:
    """Drop a Markdown code fence around the call (```json ... ```)."""
    if body.startswith("```") and body.endswith("```") and len(body) >= 6:
        inner = body[3:-3]
        first, _, rest = inner.partition("\n")
        return (rest if first.strip().isidentifier() or not first.strip() else inner).strip()
    return body


def _json_call(item: Any) -> ToolCall | None:
    if not isinstance(item, dict):
        return None
    if isinstance(item.get("function"), dict):
        item = item["function"]
    name = item.get("name")
    if not isinstance(name, str) or not name:
        return None
    args: Any = {}
    for key in ("arguments", "parameters", "input"):
        if key in item:
            args = item[key]
            break
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return None
    if args is None:
        args = {}
    return ToolCall(name, args) if isinstance(args, dict) else None


def _python_call(body: str) -> ToolCall | None:
    """``name(k=v, ...)``, optionally wrapped in ``print(...)``, with literal arguments only."""
    try:
        tree = ast.parse(body, mode="eval")
    except SyntaxError:
        return None
    node = tree.body
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
            and len(node.args) == 1 and not node.keywords and isinstance(node.args[0], ast.Call)):
        node = node.args[0]
    if not isinstance(node, ast.Call) or node.args:
        return None
    name = _dotted(node.func)
    if name is None:
        return None
    args: dict[str, Any] = {}
    for kw in node.keywords:
        if kw.arg is None:
            return None
        try:
            args[kw.arg] = ast.literal_eval(kw.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return None
    try:
        json.dumps(args)
    except (TypeError, ValueError):  # sets, bytes, complex numbers: not JSON arguments
        return None
    return ToolCall(name, args)


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None
