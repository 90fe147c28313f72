"""Ollama's request bodies (pydantic), as its clients send them.

Unknown fields and options are ignored, as Ollama ignores them; fields
kvllama cannot honour (``suffix``, ``images``) are a 400 when set.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kvllama.server.schemas_common import refuse_suffix


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Options(_Body):
    """The options kvllama honours; Ollama's others (num_ctx, num_gpu, mirostat, ...) are ignored."""

    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    # Negative: a random seed (Ollama's -1).
    seed: int | None = None
    # At most the server's max_tokens_limit; unset, 0 or negative (-1 "forever", -2 "fill") is the limit.
    num_predict: int | None = None
    stop: str | list[str] | None = None
    repeat_penalty: float | None = None
    repeat_last_n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


class _Generation(_Body):
    model: str | None = None
    # "json" (any JSON object) or a JSON schema, turned into a GBNF grammar.
    format: Literal["", "json"] | dict[str, Any] | None = None
    options: Options | None = None
    stream: bool = True
    keep_alive: float | str | None = None  # accepted; models stay loaded
    think: bool | Literal["low", "medium", "high"] | None = None

    @field_validator("format", mode="before")
    @classmethod
    def _format(cls, value: Any) -> Any:
        if value is None or isinstance(value, dict) or (isinstance(value, str) and value in ("", "json")):
            return value
        raise ValueError('format must be "json" or a JSON schema object')

    def stops(self) -> list[str]:
        stop = self.options.stop if self.options is not None else None
        return [] if stop is None else [stop] if isinstance(stop, str) else list(stop)


def _refuse_images(value: list[str] | None) -> list[str] | None:
    if value:
        raise ValueError("images are not supported: kvllama serves text models")
    return value


class GenerateRequest(_Generation):
    prompt: str = ""
    system: str | None = None
    template: str | None = None  # accepted; the model's own chat template is used
    # A previous reply's ``context``: the conversation this prompt continues.
    context: list[int] | None = None
    raw: bool = False
    suffix: str | None = None
    images: list[str] | None = None

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        return refuse_suffix(value)

    @field_validator("images")
    @classmethod
    def _no_images(cls, value: list[str] | None) -> list[str] | None:
        return _refuse_images(value)


class ToolFunction(_Body):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolCall(_Body):
    function: ToolFunction


class Message(_Body):
    role: str
    content: str | None = None
    thinking: str | None = None  # accepted; not fed back to the model
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None

    @field_validator("images")
    @classmethod
    def _no_images(cls, value: list[str] | None) -> list[str] | None:
        return _refuse_images(value)

    def for_template(self) -> dict[str, Any]:
        """The message as templates (and the other API families) have it: OpenAI's tool_calls shape."""
        out: dict[str, Any] = {"role": self.role, "content": self.content or ""}
        if self.tool_calls:
            out["tool_calls"] = [
                {"type": "function", "function": {"name": c.function.name, "arguments": json.dumps(
                    c.function.arguments, ensure_ascii=False)}}
                for c in self.tool_calls
            ]
        if self.tool_name is not None:
            out["name"] = self.tool_name
        return out


class ChatRequest(_Generation):
    messages: list[Message] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None


class EmbedRequest(_Body):
    model: str | None = None
    input: str | list[str] = ""
    truncate: bool = True  # accepted; an input longer than the model's context is a 400
    # Keep the first N dimensions (then normalise again), as Ollama does.
    dimensions: int | None = None


class EmbeddingsRequest(_Body):
    """The older ``/api/embeddings``: one prompt, one vector (not normalised)."""

    model: str | None = None
    prompt: str = ""


class ShowRequest(_Body):
    model: str | None = None
    name: str | None = None  # older clients' field for the model
    verbose: bool = False
