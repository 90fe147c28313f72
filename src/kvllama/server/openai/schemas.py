"""OpenAI request bodies (pydantic), with the checks OpenAI itself makes.

Unknown fields are ignored (clients send ``user``, ``store``, vendor
extensions); fields kvllama cannot honour are accepted only at their neutral
value (``suffix`` unset, ``best_of`` 1, ``echo`` without ``logprobs``),
anything else is a 400 naming the field. ``top_k``, ``min_p``,
``repetition_penalty``, ``min_tokens``, ``ignore_eos`` and ``grammar`` are
extensions, as in llama-server and vLLM.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kvllama.request import ChatInput, GenerationRequest
from kvllama.server.edge import Edge
from kvllama.server.errors import ApiError
from kvllama.server.grammar import JSON_OBJECT_GRAMMAR, json_schema_grammar
from kvllama.server.schemas_common import CacheSalt, LoraRef, SessionId, refuse_suffix

MAX_CHOICES = 16


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class JsonSchemaFormat(_Body):
    name: str = "response"
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class _Sampling(_Body):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    # OpenAI's documented ranges (the engine's own are wider).
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    max_tokens: int | None = None
    # Choices sampled from one prompt (its prefill is shared through the KV cache).
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    # Token id (as a string, JSON object keys are) -> bias in [-100, 100].
    logit_bias: dict[str, float] | None = None
    min_tokens: int | None = Field(default=None, ge=0)
    ignore_eos: bool = False
    grammar: str | None = None
    cache_salt: CacheSalt | None = None
    session_id: SessionId | None = None
    # llama-server's per-request LoRA set: [{"id": index or name, "scale"}]; unset: the defaults.
    lora: list[LoraRef] | None = None
    # Extension (Ollama's meaning): how long the model stays loaded after this request.
    keep_alive: float | str | None = None
    # vLLM's extension: lower runs sooner (default 0).
    priority: int | None = None

    def _options(self, edge: Edge, max_tokens: int) -> dict[str, Any]:
        """The options both routes share, as GenerationRequest.build takes them (None: unset)."""
        return dict(
            max_tokens=edge.max_tokens(max_tokens), stop=self.stop, seed=self.seed,
            temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p,
            repetition_penalty=self.repetition_penalty, frequency_penalty=self.frequency_penalty,
            presence_penalty=self.presence_penalty, logit_bias=self.logit_bias, min_tokens=self.min_tokens,
            ignore_eos=self.ignore_eos or None, grammar=self.grammar, cache_salt=self.cache_salt,
            session_id=edge.session(self.session_id), adapters=edge.adapters(self.lora),
            keep_alive=self.keep_alive, priority=edge.priority(self.priority),
        )


def _first(*values: int | None, default: int) -> int:
    """The first value the client set (0 included, so that it is refused rather than replaced)."""
    return next((v for v in values if v is not None), default)


class ChatMessage(_Body):
    role: str
    # A string or a list of content parts; checked and flattened by kvllama.chat.messages.
    content: str | list[Any] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    # Rendered into the chat template; calls come back as tool_calls (models with tool markers).
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    # kvllama extensions (engine params of the same names); thinking comes back as reasoning_content.
    thinking: bool | None = None
    thinking_budget_tokens: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def engine_logprobs(self) -> int | None:
        """The engine's ``logprobs`` (alternatives per token), or None when not asked for."""
        return (self.top_logprobs or 0) if self.logprobs else None

    def to_request(self, edge: Edge) -> GenerationRequest:
        options = self._options(edge, _first(self.max_completion_tokens, self.max_tokens,
                                             default=edge.config.max_tokens_limit))
        options["grammar"] = _grammar(self.response_format, self.grammar)
        chat = ChatInput.of([m.model_dump(exclude_none=True) for m in self.messages], tools=self.tools)
        return GenerationRequest.build(chat=chat, media_limits=edge.config.media_limits,
                                       thinking=self.thinking,
                                       thinking_budget_tokens=self.thinking_budget_tokens,
                                       logprobs=self.engine_logprobs(), **options)


def _grammar(fmt: ResponseFormat | None, grammar: str | None) -> str | None:
    if fmt is None or fmt.type == "text":
        return grammar
    if grammar is not None:
        raise ApiError(400, "give either response_format or grammar, not both", param="grammar")
    if fmt.type == "json_object":
        return JSON_OBJECT_GRAMMAR
    if fmt.json_schema is None:
        raise ApiError(400, "response_format of type json_schema needs a json_schema object",
                       param="response_format.json_schema")
    return json_schema_grammar(fmt.json_schema.schema_)


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    # The legacy API's alternatives per token (0..5 at OpenAI; up to 20 here).
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    # kvllama extensions: the prompt follows the session's transcript (its last prompt and
    # reply) instead of repeating it, optionally only if the transcript has this many tokens.
    continue_session: bool = False
    expect_session_tokens: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _echo_without_logprobs(self) -> CompletionRequest:
        if self.echo and self.logprobs is not None:
            # Prompt log-probabilities need logits for every prompt row, which changes how
            # llama.cpp batches the output layer and so the reply (docs/measured/exactness.md).
            raise ValueError("echo with logprobs is not supported (prompt log-probabilities)")
        return self

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        return refuse_suffix(value)

    @field_validator("best_of")
    @classmethod
    def _no_best_of(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError("only best_of=1 is supported")
        return value

    def single_prompt(self) -> str | list[int]:
        """The one prompt of this request (a batch of several is refused)."""
        p = self.prompt
        if isinstance(p, list) and p and isinstance(p[0], str | list):
            if len(p) != 1:
                raise ValueError("only one prompt per request is supported")
            return p[0]  # type: ignore[return-value]
        return p  # type: ignore[return-value]

    def to_request(self, edge: Edge) -> GenerationRequest:
        try:
            prompt = self.single_prompt()
        except ValueError as exc:
            raise ApiError(400, str(exc), param="prompt") from None
        default = edge.config.default_completion_max_tokens
        options = self._options(edge, _first(self.max_tokens, default=default))
        return GenerationRequest.build(
            prompt, logprobs=self.logprobs, continue_session=self.continue_session or None,
            expect_session_tokens=self.expect_session_tokens if self.continue_session else None, **options)


class EmbeddingRequest(_Body):
    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None

    @field_validator("dimensions")
    @classmethod
    def _no_dimensions(cls, value: int | None) -> int | None:
        if value is not None:
            raise ValueError("dimensions (truncated embeddings) is not supported")
        return value
