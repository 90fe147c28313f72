"""Anthropic Messages request bodies (pydantic).

``max_tokens`` is required, as in Anthropic's API. Content blocks are kept as
plain dicts and checked by :mod:`kvllama.chat.messages`, which knows which
block types a text model can render (text, tool_use, tool_result) and
refuses the others with a clear error.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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
    # Extension (as on the OpenAI routes): a GBNF grammar constraining the reply.
    grammar: str | None = None


class CountTokensRequest(_Conversation):
    pass
