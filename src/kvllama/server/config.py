"""Settings of one HTTP server instance.

The server never creates or loads models itself: the caller builds an
:class:`~kvllama.Engine`, loads what it wants served, and names here which
engine model answers to which API model name. That keeps the HTTP layer a thin
edge over the Python API (the same engine can serve HTTP and Python callers).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kvllama.media.inputs import MediaLimits

MIB = 1024 * 1024
# Queued requests per model beyond which a server refuses new ones: a burst of
# clients then hears "overloaded" at once instead of waiting without bound.
DEFAULT_MAX_QUEUE = 256

# A cache-metrics provider returns {name: number} or {name: {label value: number}}.
# Names ending in "_total" are exported as counters, the rest as gauges.
CacheMetricsProvider = Callable[[], Mapping[str, Any]]


@dataclass(frozen=True)
class ServerConfig:
    # Served model name -> engine model id. Empty: every engine model under its own id.
    models: Mapping[str, str] = field(default_factory=dict)
    # The served name used when a request names no model (None: the only model, if just one).
    default_model: str | None = None
    # When set, every route except /health needs `Authorization: Bearer KEY` or `x-api-key: KEY`.
    api_key: str | None = None
    # Larger request bodies are refused with 413 before they are parsed.
    max_body_bytes: int = 4 * MIB
    # max_tokens above this is a 400 naming the limit; also the default for chat requests.
    max_tokens_limit: int = 4096
    # OpenAI's documented default for /v1/completions when max_tokens is omitted.
    default_completion_max_tokens: int = 16
    # Requests waiting for a sequence slot, per model, beyond which new ones are refused
    # (429 on OpenAI routes, 529 overloaded_error on Anthropic routes). None: unbounded.
    max_queue: int | None = DEFAULT_MAX_QUEUE
    # Exported on /metrics as kvllama_cache_* when set (the KV cache plugs in here).
    cache_metrics_provider: CacheMetricsProvider | None = None
    # Key that checks the signatures of thinking blocks clients send back (Anthropic routes):
    # a block whose signature does not verify is a 400. It must be the key the engine signs
    # with; None: the engine's own `thinking_key`, if it has one, else no check.
    # (Thinking and tool-call markers are per model, set when the engine loads it.)
    thinking_key: bytes | None = None
    # Images and audio per request, bytes per medium, pixels per image (models with a projector).
    media_limits: MediaLimits = field(default_factory=MediaLimits)
    # Stored Responses-API responses: how many and for how long (seconds); where (None: beside the
    # KV cache's disk tier if the engine has one, so they survive a restart, else in memory).
    responses_max_count: int = 10_000
    responses_max_age: float = 30 * 24 * 3600.0
    responses_dir: str | None = None
    # A header a trusted proxy sets to give a request its priority (lower runs sooner); it wins
    # over the body's ``priority`` field. None: only the body says.
    priority_header: str | None = None

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1:
            raise ValueError("max_body_bytes must be positive")
        if self.max_tokens_limit < 1:
            raise ValueError("max_tokens_limit must be positive")
        if self.max_queue is not None and self.max_queue < 0:
            raise ValueError("max_queue must be >= 0 or None")
        if self.responses_max_count < 1 or not self.responses_max_age > 0:
            raise ValueError("responses_max_count must be >= 1 and responses_max_age positive seconds")
        if self.thinking_key is not None and not isinstance(self.thinking_key, bytes):
            raise ValueError("thinking_key must be bytes")
        if self.default_model is not None and self.models and self.default_model not in self.models:
            raise ValueError(f"default_model {self.default_model!r} is not one of the served models")
