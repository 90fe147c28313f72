"""The completion result, and the builder that folds it from events with the one reducer."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from kvllama.events import CacheDelta, CacheHitKind, DoneEvent, Event, FinishReason, Stats, TokenLogprob
from kvllama.replies.reducer import Reducer


@dataclass(frozen=True)
class CompletionResult:
    reply: str
    generated_tokens: tuple[int, ...]
    # Prompt + generated, the tokens the next turn of a conversation extends.
    context_tokens: tuple[int, ...]
    # Tokens whose KV state is in the sequence (the last sampled token is not
    # decoded unless the request goes on, so this is usually len(context) - 1).
    committed_tokens: int
    finish_reason: FinishReason
    stop_sequence: str | None
    # Cache key of the full context, to pass as parent_key on the next turn.
    finish_key: bytes | None
    cache_hit_kind: CacheHitKind
    cache_delta: CacheDelta
    stats: Stats
    seed: int | None = None
    # Extended thinking (models loaded with thinking markers): the text and its signature.
    thinking: str = ""
    thinking_signature: str = ""
    # Tool calls, each the exact text between the model's tool-call markers.
    tool_calls: tuple[str, ...] = ()
    # One per generated token when the request asked for ``logprobs``.
    logprobs: tuple[TokenLogprob, ...] = ()


class ResultBuilder(Reducer):
    """The one reducer (:class:`~kvllama.replies.Reducer`), ending in a :class:`CompletionResult`.

    ``complete()``, the streams and the HTTP layers (streaming or not) all
    feed events through this, so a streamed reply and a non-streamed one
    cannot disagree: the HTTP replies render the content deltas that
    :meth:`add` returns, or their fold (:attr:`reply`), and take usage and
    finish from :meth:`result`. Text chunks are joined once at the end.
    """

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    def result(self) -> CompletionResult:
        """The final result; raises the request's own error if it failed."""
        if self.error is not None:
            raise self.error
        if self.done is None:
            raise RuntimeError("stream ended without a done event")
        return replace(
            result_from(self.done, self.text, tuple(self.tokens)),
            thinking="".join(self.thinking),
            thinking_signature=self.thinking_signature,
            tool_calls=tuple(self.tool_calls),
            logprobs=tuple(self.logprobs),
        )


def collect(events: Iterable[Event]) -> CompletionResult:
    """Drain a stream into a result."""
    builder = ResultBuilder()
    for event in events:
        builder.add(event)
    return builder.result()


def result_from(done: DoneEvent, reply: str, generated: tuple[int, ...]) -> CompletionResult:
    return CompletionResult(
        reply=reply,
        generated_tokens=generated,
        context_tokens=done.prompt_tokens + generated,
        committed_tokens=done.committed_tokens,
        finish_reason=done.finish_reason,
        stop_sequence=done.stop_sequence,
        finish_key=done.finish_key,
        cache_hit_kind=done.cache_hit_kind,
        cache_delta=done.cache_delta,
        stats=done.stats,
        seed=done.seed,
    )
