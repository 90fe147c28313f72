"""Ollama's request bodies (pydantic), as its clients send them.

Unknown fields and options are ignored, as Ollama ignores them; fields
kvllama cannot honour (``suffix``) are a 400 when set; ``images`` need a model with a projector.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kvllama.media.inputs import from_base64
from kvllama.media.messages import MEDIA_MARKER
from kvllama.request import ChatInput, GenerationRequest
from kvllama.server.edge import Edge
from kvllama.server.grammar import JSON_OBJECT_GRAMMAR, json_schema_grammar
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
    # How long the model stays loaded after this request (seconds or a duration, "5m").
    keep_alive: float | str | None = None
    think: bool | Literal["low", "medium", "high"] | None = None
    # Extension (vLLM's meaning): lower runs sooner.
    priority: int | None = None

    @field_validator("format", mode="before")
    @classmethod
    def _format(cls, value: Any) -> Any:
        if value is None or isinstance(value, dict) or (isinstance(value, str) and value in ("", "json")):
            return value
        raise ValueError('format must be "json" or a JSON schema object')

    def _build(self, edge: Edge, prompt: str | None = None, chat: ChatInput | None = None,
               **extra: Any) -> GenerationRequest:
        o = self.options or Options()
        limit = edge.config.max_tokens_limit
        # Ollama never refuses num_predict: the server's limit caps it, and <= 0 means "as many as allowed".
        max_tokens = limit if o.num_predict is None or o.num_predict <= 0 else min(o.num_predict, limit)
        return GenerationRequest.build(
            prompt, chat=chat, media_limits=edge.config.media_limits, max_tokens=max_tokens, stop=o.stop,
            seed=o.seed if o.seed is None or o.seed >= 0 else None,
            temperature=o.temperature, top_p=o.top_p, top_k=o.top_k, min_p=o.min_p,
            repetition_penalty=o.repeat_penalty, penalty_last_n=o.repeat_last_n,
            frequency_penalty=o.frequency_penalty, presence_penalty=o.presence_penalty,
            grammar=_grammar(self.format), thinking=self.think if self.think is None else bool(self.think),
            keep_alive=self.keep_alive, priority=edge.priority(self.priority), **extra,
        )


def _grammar(fmt: str | dict[str, Any] | None) -> str | None:
    if fmt is None or fmt == "":
        return None
    if isinstance(fmt, str):  # "json" (the schema allows no other string)
        return JSON_OBJECT_GRAMMAR
    return json_schema_grammar(fmt)


class GenerateRequest(_Generation):
    prompt: str = ""
    system: str | None = None
    template: str | None = None  # accepted; the model's own chat template is used
    # A previous reply's ``context``: the conversation this prompt continues.
    context: list[int] | None = None
    raw: bool = False
    suffix: str | None = None
    # Base64 images (models loaded with a projector): before the prompt's text, as Ollama puts them.
    images: list[str] | None = None

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        return refuse_suffix(value)

    def empty(self) -> bool:
        """No prompt: Ollama's way to load (or, with keep_alive 0, unload) a model."""
        return not self.prompt

    def to_request(self, edge: Edge) -> GenerationRequest:
        """One user turn through the template unless ``raw``; after ``context`` (reply tokens) if given."""
        context = tuple(self.context or ())
        if self.raw:
            media = [from_base64(d, f"images[{i}]", kind="image", limits=edge.config.media_limits)
                     for i, d in enumerate(self.images or ())]
            prompt = self.prompt if MEDIA_MARKER in self.prompt else MEDIA_MARKER * len(media) + self.prompt
            return self._build(edge, prompt, context=context, media=media)
        user: dict[str, Any] = {"role": "user", "content": self.prompt}
        if self.images:
            user["images"] = self.images
        chat = ChatInput.of([user], system=self.system)
        return self._build(edge, chat=chat, context=context)


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
        if self.images:
            out["images"] = self.images  # taken out as media once, at the request's build
        return out


class ChatRequest(_Generation):
    messages: list[Message] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None

    def empty(self) -> bool:
        """No messages: Ollama's way to load (or, with keep_alive 0, unload) a model."""
        return not self.messages

    def to_request(self, edge: Edge) -> GenerationRequest:
        chat = ChatInput.of([m.for_template() for m in self.messages], tools=self.tools)
        return self._build(edge, chat=chat, session_id=edge.session(None))


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
