"""Chat messages -> one prompt string, through the engine's chat template.

The engine picks the template (request, GGUF, load option, then the
documented ``plain`` fallback "User: ...\\nAssistant:"). A base model such as
the default Gemma 3 270M has no template and no notion of a turn ending, so
with the fallback it would go on writing the user's next line; the default
stop sequences ``"\\nUser:"`` and ``"\\nAssistant:"`` end the reply at the turn
boundary instead. Such a default stop is not the client's, so the Anthropic edge reports it as
``end_turn``, not
``stop_sequence``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvllama.api.engine import Engine
from kvllama.chat import prefix_points
from kvllama.chat.templates import template_stops


@dataclass(frozen=True)
class ChatPrompt:
    text: str
    # Stop sequences the template needs (the client's own come on top).
    default_stops: tuple[str, ...]
    # Token offsets where shared prefixes end (server/prefix_points.py): the engine's
    # ``save_points``. Empty when the engine has no KV cache to save them in.
    save_points: tuple[int, ...] = ()

    def stops_with(self, client_stops: Sequence[str]) -> list[str]:
        merged = list(client_stops)
        merged.extend(s for s in self.default_stops if s not in merged)
        return merged


def render(
    engine: Engine,
    model_id: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    system: str | Sequence[Any] | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    breakpoints: Sequence[prefix_points.Variant] = (),
) -> ChatPrompt:
    text = engine.apply_chat_template(model_id, messages, system=system, tools=tools)
    points: tuple[int, ...] = ()
    if engine.saves_prompt_rows:
        conv = prefix_points.Conversation(messages, system, tools)
        points = prefix_points.save_points(
            lambda m, s, t: engine.apply_chat_template(model_id, m, system=s, tools=t),
            lambda t: engine.prompt_tokens(model_id, t), conv, text, breakpoints)
    return ChatPrompt(text, default_stops(engine, model_id), points)


def default_stops(engine: Engine, model_id: str) -> tuple[str, ...]:
    return template_stops(engine.chat_template_source(model_id))


def count_prompt_tokens(engine: Engine, model_id: str, text: str) -> int:
    """Tokens ``ainfer`` would queue for ``text``: BOS is added unless the text already starts with it.

    (The rendered template may begin with the BOS text; the engine then adds none.)
    """
    return len(engine.prompt_tokens(model_id, text))


def tools_as_functions(tools: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Anthropic tool definitions in the OpenAI function shape that model templates are written for.

    Anthropic server tools (typed, e.g. ``web_search_20250305``, with no input
    schema) have no meaning for a local model and are left out.
    """
    if not tools:
        return None
    out = []
    for tool in tools:
        if "input_schema" not in tool or tool.get("type") not in (None, "custom"):
            continue
        out.append({"type": "function", "function": {
            "name": tool.get("name", ""), "description": tool.get("description", ""),
            "parameters": tool["input_schema"],
        }})
    return out or None
