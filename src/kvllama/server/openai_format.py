"""OpenAI response bodies and stream chunks: a renderer of the one reply reducer.

Events are folded by :class:`~kvllama.results.ResultBuilder`; this module
only renders what it yields. A streamed chat reply renders each content
delta as a ``delta`` chunk, a non-streamed one renders :class:`Reply`, the
fold of the same deltas, and both take ``finish_reason`` and ``usage`` from
the same result, so the two can never disagree. Finish reasons are mapped
here, at the edge.

Thinking becomes ``reasoning_content`` (the field DeepSeek, vLLM and
llama-server use), tool calls ``tool_calls`` with a ``call_`` id and the
arguments as a JSON string; a reply with a tool call finishes with
``tool_calls``. Text completions carry the generated text as is.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any, Literal

from kvllama.events import Event, TextEvent
from kvllama.replies import BlockStart, Delta, Reply, TextDelta, ThinkingDelta, ToolInputDelta
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


def finish_reason(result: CompletionResult, tool_calls: int) -> str:
    if result.finish_reason == "stop" and tool_calls:
        return "tool_calls"
    return FINISH[result.finish_reason]


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def message(reply: Reply) -> dict[str, Any]:
    """The chat message a stream of ``reply``'s deltas adds up to (as the SDKs accumulate it)."""
    calls = [{"id": call_id(), "type": "function",
              "function": {"name": b.name, "arguments": b.arguments_json}}
             for b in reply.calls]
    content: str | None = reply.text
    if calls and not content:
        content = None
    out: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if thinking := reply.thinking:
        out["reasoning_content"] = thinking
    if calls:
        out["tool_calls"] = calls
    return out


def response(kind: Kind, rid: str, model: str, result: CompletionResult, reply: Reply) -> dict[str, Any]:
    """The whole non-streamed body: a chat message from ``reply``, a completion's text as generated."""
    if kind == "chat":
        choice: dict[str, Any] = {"index": 0, "message": message(reply), "logprobs": None,
                                  "finish_reason": finish_reason(result, len(reply.calls))}
    else:
        choice = {"index": 0, "text": result.reply, "logprobs": None,
                  "finish_reason": FINISH[result.finish_reason]}
    return {
        "id": rid, "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": int(time.time()), "model": model, "system_fingerprint": FINGERPRINT,
        "choices": [choice], "usage": usage(result),
    }


class OpenAIStreamWriter:
    """Content deltas -> ``chat.completion.chunk`` / ``text_completion`` SSE frames.

    Role chunk first (chat), then one chunk per delta that shows on the wire
    (content, reasoning_content, a tool call's head then its arguments; text
    completions get each event's text as is), then the finish chunk, the
    usage chunk when asked for, and ``[DONE]``.
    """

    def __init__(self, kind: Kind, rid: str, model: str, include_usage: bool) -> None:
        self.kind = kind
        self._envelope = {
            "id": rid,
            "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": int(time.time()), "model": model, "system_fingerprint": FINGERPRINT,
        }
        self._include_usage = include_usage
        self._calls = 0  # tool calls sent so far: the next call's index

    def start(self) -> list[str]:
        if self.kind == "chat":
            return [self._chunk({"role": "assistant", "content": ""}, None)]
        return []

    def on_event(self, event: Event, deltas: Sequence[Delta]) -> list[str]:
        if self.kind == "chat":
            return [self._chunk(d, None) for delta in deltas if (d := self._delta(delta)) is not None]
        if isinstance(event, TextEvent) and event.text:
            return [self._chunk(event.text, None)]
        return []

    def finish(self, result: CompletionResult, reply: Reply) -> list[str]:
        if self.kind == "chat":
            frames = [self._chunk({}, finish_reason(result, len(reply.calls)))]
        else:
            frames = [self._chunk("", FINISH[result.finish_reason])]
        if self._include_usage:
            frames.append(sse.data_frame({**self._envelope, "choices": [], "usage": usage(result)}))
        frames.append(sse.DONE)
        return frames

    def error(self, exc: BaseException) -> list[str]:
        return [sse.data_frame(error_body(from_exception(exc), "openai"))]

    def _delta(self, delta: Delta) -> dict[str, Any] | None:
        """The chat ``delta`` for one content delta (None: block bounds and signatures do not show)."""
        match delta:
            case TextDelta(flat=flat):
                return {"content": flat}
            case ThinkingDelta(text=text):
                return {"reasoning_content": text}
            case BlockStart(kind="tool_use", call=call) if call is not None:
                self._calls += 1
                return {"tool_calls": [{"index": self._calls - 1, "id": call_id(), "type": "function",
                                        "function": {"name": call.name, "arguments": ""}}]}
            case ToolInputDelta(arguments_json=arguments):
                return {"tool_calls": [{"index": self._calls - 1, "function": {"arguments": arguments}}]}
        return None

    def _chunk(self, delta: dict[str, Any] | str, finish: str | None) -> str:
        if self.kind == "chat":
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": delta, "logprobs": None, "finish_reason": finish}
        body: dict[str, Any] = {**self._envelope, "choices": [choice]}
        if self._include_usage:
            body["usage"] = None
        return sse.data_frame(body)
