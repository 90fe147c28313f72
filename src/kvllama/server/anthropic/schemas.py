"""Anthropic Messages request bodies (pydantic).

``max_tokens`` is required, as in Anthropic's API. Content blocks are kept as
plain dicts and checked by :mod:`kvllama.chat.messages`, which knows which
block types a text model can render (text, tool_use, tool_result) and
refuses the others with a clear error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kvllama.chat import prefix_points
from kvllama.request import ChatInput, GenerationRequest
from kvllama.server.agent_params import check_thinking_signatures
from kvllama.server.edge import Edge
from kvllama.server.schemas_common import CacheSalt, LoraRef, SessionId


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ThinkingConfig(_Body):
    """``{"type": "enabled", "budget_tokens": N}`` or ``{"type": "disabled"}``.

    Anthropic requires budget_tokens >= 1024; a local model may think less, so
    any positive budget is accepted, and leaving it out means no budget.
    """

    type: Literal["enabled", "disabled"]
    budget_tokens: int | None = Field(default=None, ge=1)

    def engine_params(self) -> dict[str, Any]:
        if self.type == "disabled":
            return {"thinking": False}
        params: dict[str, Any] = {"thinking": True}
        if self.budget_tokens is not None:
            params["thinking_budget_tokens"] = self.budget_tokens
        return params


class Message(_Body):
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class _Conversation(_Body):
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    # Rendered into the chat template; calls come back as tool_use blocks (models with tool markers).
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: ThinkingConfig | None = None

    def message_dicts(self) -> list[dict[str, Any]]:
        return [m.model_dump() for m in self.messages]

    def chat(self, *, with_breakpoints: bool = False) -> ChatInput:
        """The conversation, tools in the function shape templates know; with its cache_control marks."""
        turns = self.message_dicts()
        marks = (prefix_points.anthropic_breakpoints(turns, self.system, self.tools, tools_as_functions)
                 if with_breakpoints else ())
        tools = tools_as_functions(self.tools)
        return ChatInput.of(turns, system=self.system, tools=tools, breakpoints=marks)


class MessagesRequest(_Conversation):
    max_tokens: int
    stop_sequences: list[str] | None = None
    # Anthropic's documented ranges.
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, ge=0, le=1)
    metadata: dict[str, Any] | None = None
    stream: bool = False
    seed: int | None = None
    cache_salt: CacheSalt | None = None
    session_id: SessionId | None = None
    lora: list[LoraRef] | None = None
    # Extension (vLLM's meaning): lower runs sooner.
    priority: int | None = None
    # Extensions (as on the OpenAI routes): a GBNF grammar constraining the reply, and how
    # long the model stays loaded after this request (Ollama's keep_alive).
    grammar: str | None = None
    keep_alive: float | str | None = None


    def to_request(self, edge: Edge) -> GenerationRequest:
        chat = self.chat(with_breakpoints=True)
        check_thinking_signatures(edge.thinking_key, chat.messages)
        thinking = self.thinking.engine_params() if self.thinking is not None else {}
        return GenerationRequest.build(
            chat=chat, media_limits=edge.config.media_limits, max_tokens=edge.max_tokens(self.max_tokens),
            stop=self.stop_sequences,
            temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, seed=self.seed,
            grammar=self.grammar, cache_salt=self.cache_salt, session_id=edge.session(self.session_id),
            adapters=edge.adapters(self.lora), keep_alive=self.keep_alive,
            priority=edge.priority(self.priority), **thinking,
        )


class CountTokensRequest(_Conversation):
    pass


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
