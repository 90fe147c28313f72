"""OpenAI response bodies and stream chunks, built from kvllama results and events.

Non-streamed bodies come from a :class:`CompletionResult`; streamed chunks
from the events, with the final chunk's ``finish_reason`` and ``usage``
taken from the same result (folded by the same reducer while streaming), so
the two can never disagree. Finish reasons are mapped here, at the edge.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from kvllama.events import DoneEvent, Event, TextEvent
from kvllama.results import CompletionResult
from kvllama.server import sse
from kvllama.server.errors import error_body, from_exception

Kind = Literal["chat", "completion"]
FINISH = {"stop": "stop", "length": "length", "cancelled": "stop"}
FINGERPRINT = "kvllama"


def new_id(kind: Kind) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"


def usage(result: CompletionResult) -> dict[str, Any]:
    prompt, generated = result.stats.prompt_tokens, result.stats.generated_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": generated,
        "total_tokens": prompt + generated,
        "prompt_tokens_details": {"cached_tokens": result.cache_delta.read},
    }


def response(kind: Kind, rid: str, model: str, result: CompletionResult) -> dict[str, Any]:
    """The whole non-streamed body."""
    finish = FINISH[result.finish_reason]
    if kind == "chat":
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": result.reply, "refusal": None},
            "logprobs": None, "finish_reason": finish,
        }
    else:
        choice = {"index": 0, "text": result.reply, "logprobs": None, "finish_reason": finish}
    return {
        "id": rid, "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": int(time.time()), "model": model, "system_fingerprint": FINGERPRINT,
        "choices": [choice], "usage": usage(result),
    }


class OpenAIStreamWriter:
    """kvllama events -> ``chat.completion.chunk`` / ``text_completion`` SSE frames.

    A small state machine: role chunk first (chat), one chunk per text event,
    then the finish chunk, the usage chunk when asked for, and ``[DONE]``.
    Tool-call deltas will be one more event case here.
    """

    def __init__(self, kind: Kind, rid: str, model: str, include_usage: bool) -> None:
        self.kind = kind
        self._envelope = {
            "id": rid,
            "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": int(time.time()), "model": model, "system_fingerprint": FINGERPRINT,
        }
        self._include_usage = include_usage

    def start(self) -> list[str]:
        if self.kind == "chat":
            return [self._chunk({"role": "assistant", "content": ""}, None)]
        return []

    def on_event(self, event: Event) -> list[str]:
        if isinstance(event, TextEvent) and event.text:
            return [self._chunk({"content": event.text} if self.kind == "chat" else event.text, None)]
        return []

    def finish(self, done: DoneEvent, result: CompletionResult) -> list[str]:
        frames = [self._chunk({} if self.kind == "chat" else "", FINISH[result.finish_reason])]
        if self._include_usage:
            frames.append(sse.data_frame({**self._envelope, "choices": [], "usage": usage(result)}))
        frames.append(sse.DONE)
        return frames

    def error(self, exc: BaseException) -> list[str]:
        return [sse.data_frame(error_body(from_exception(exc), "openai"))]

    def _chunk(self, delta: dict[str, Any] | str, finish: str | None) -> str:
        if self.kind == "chat":
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": delta, "logprobs": None, "finish_reason": finish}
        body: dict[str, Any] = {**self._envelope, "choices": [choice]}
        if self._include_usage:
            body["usage"] = None
        return sse.data_frame(body)
