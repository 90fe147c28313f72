"""Stream events: one discriminated union of small frozen dataclasses.

The decode loop emits these, ``infer()`` yields them, and the one reducer
(:class:`kvllama.replies.Reducer`, via :class:`~kvllama.results.ResultBuilder`)
folds them into a :class:`~kvllama.results.CompletionResult` and into the
content every HTTP reply renders. Both the streaming and the non-streaming
paths go through it, so they cannot disagree.
Every event has a ``type`` literal so consumers can ``match`` on it or
serialise it without isinstance chains.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "cancelled"]
CacheHitKind = Literal["exact", "partial", "cold", "sticky"]


@dataclass(frozen=True, slots=True)
class CacheDelta:
    # Tokens restored from the cache at admission instead of prefilled.
    read: int = 0
    # The largest number of tokens this request added to the cache beyond `read`.
    created: int = 0


@dataclass(frozen=True, slots=True)
class Stats:
    prompt_tokens: int
    generated_tokens: int
    # Seconds spent waiting for a sequence slot.
    queue_seconds: float
    prefill_seconds: float
    decode_seconds: float
    # From submission to the first generated token (None: no token was generated).
    time_to_first_token: float | None
    # Generated tokens per second of decode time.
    tokens_per_second: float
    # Speculative decoding: draft tokens computed, and those accepted.
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    # Times a request of higher priority parked this one, and the seconds it spent parked.
    preemptions: int = 0
    preempted_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A sampled token's log-probability under the model, and the likeliest alternatives.

    ``bytes`` are the token's text bytes (a token may hold part of a UTF-8
    character); ``top`` is (token, logprob, bytes), most likely first.
    """

    token: int
    logprob: float
    bytes: bytes
    top: tuple[tuple[int, float, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """One generated token, also those that carry no visible text."""

    token: int
    # Only when the request asked for log-probabilities.
    logprob: TokenLogprob | None = None
    type: Literal["token"] = "token"


@dataclass(frozen=True, slots=True)
class TextEvent:
    """Visible text, UTF-8 complete and with any stop sequence held back or trimmed."""

    text: str
    type: Literal["text"] = "text"


@dataclass(frozen=True, slots=True)
class ThinkingEvent:
    """Text generated between the model's thinking markers (markers themselves excluded)."""

    text: str
    type: Literal["thinking"] = "thinking"


@dataclass(frozen=True, slots=True)
class ThinkingEndEvent:
    """Thinking is over (end marker seen, or the thinking budget ran out).

    ``signature`` is base64 HMAC-SHA256 of ``text`` (UTF-8) under the engine's
    thinking key, or "" when no key is configured.
    """

    text: str
    signature: str
    type: Literal["thinking_end"] = "thinking_end"


@dataclass(frozen=True, slots=True)
class ToolCallEvent:
    """Text of a tool call between the model's tool-call markers."""

    text: str
    type: Literal["tool_call"] = "tool_call"


@dataclass(frozen=True, slots=True)
class ToolCallEndEvent:
    """One tool call is complete; ``text`` is every ToolCallEvent of it concatenated.

    ``raw`` is ``text`` encoded as UTF-8: the call as generated, which a client
    sends back verbatim on the next turn to keep the cached prefix matching.
    (Markers are routed on decoded text, so it is not a copy of the token
    bytes: a byte sequence that was not valid UTF-8 arrives replaced.)
    """

    text: str
    raw: bytes
    # Names the span: its calls are ``call_<span>_<k>`` (decoding/tool_memory.py).
    span: str = ""
    type: Literal["tool_call_end"] = "tool_call_end"


@dataclass(frozen=True, slots=True)
class DoneEvent:
    """The last event of a successful (or cancelled) request."""

    finish_reason: FinishReason
    stats: Stats
    prompt_tokens: tuple[int, ...]
    stop_sequence: str | None = None
    committed_tokens: int = 0
    finish_key: bytes | None = None
    cache_hit_kind: CacheHitKind = "cold"
    cache_delta: CacheDelta = field(default_factory=CacheDelta)
    seed: int | None = None
    type: Literal["done"] = "done"


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """The last event of a failed request; ``error`` is the typed exception."""

    error: Exception
    type: Literal["error"] = "error"


Event = (
    TokenEvent
    | TextEvent
    | ThinkingEvent
    | ThinkingEndEvent
    | ToolCallEvent
    | ToolCallEndEvent
    | DoneEvent
    | ErrorEvent
)
