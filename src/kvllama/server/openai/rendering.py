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

from kvllama.events import Event, TextEvent, TokenEvent, TokenLogprob
from kvllama.replies import BlockStart, Delta, Reply, TextDelta, ThinkingDelta, ToolInputDelta
from kvllama.replies.tool_calls import ToolCall
from kvllama.results import CompletionResult
from kvllama.server import sse
from kvllama.server.errors import error_body, from_exception
from kvllama.server.openai.logprobs import chat_logprobs, completion_logprobs

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


def _id_of(call: ToolCall | None) -> str:
    """The engine's id for a sampled call (replayed exactly when sent back), else a fresh one."""
    return call.id if call is not None and call.id else call_id()


def message(reply: Reply) -> dict[str, Any]:
    """The chat message a stream of ``reply``'s deltas adds up to (as the SDKs accumulate it)."""
    calls = [{"id": _id_of(b.call), "type": "function",
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


def response(kind: Kind, rid: str, model: str, choices: Sequence[tuple[CompletionResult, Reply]],
             *, logprobs: bool = False, echo: str = "") -> dict[str, Any]:
    """The whole non-streamed body: one choice per (result, reply); a chat message from the
    reply, a completion's text as generated (after the prompt with ``echo``)."""
    out = []
    for index, (result, reply) in enumerate(choices):
        lp = None
        if kind == "chat":
            lp = chat_logprobs(result.logprobs) if logprobs else None
            out.append({"index": index, "message": message(reply), "logprobs": lp,
                        "finish_reason": finish_reason(result, len(reply.calls))})
        else:
            lp = completion_logprobs(result.logprobs, len(echo)) if logprobs else None
            out.append({"index": index, "text": echo + result.reply, "logprobs": lp,
                        "finish_reason": FINISH[result.finish_reason]})
    return {
        "id": rid, "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": int(time.time()), "model": model, "system_fingerprint": FINGERPRINT,
        "choices": out, "usage": usage_of([result for result, _ in choices]),
    }


def usage_of(results: Sequence[CompletionResult]) -> dict[str, Any]:
    """Usage over several choices of one prompt: the prompt once, every choice's tokens."""
    first = usage(results[0])
    generated = sum(r.stats.generated_tokens for r in results)
    return {**first, "completion_tokens": generated, "total_tokens": first["prompt_tokens"] + generated}


class OpenAIStreamWriter:
    """Content deltas -> ``chat.completion.chunk`` / ``text_completion`` SSE frames.

    Role chunk first (chat), then one chunk per delta that shows on the wire
    (content, reasoning_content, a tool call's head then its arguments; text
    completions get each event's text as is), then the finish chunk, the
    usage chunk when asked for, and ``[DONE]``.
    """

    def __init__(self, kind: Kind, rid: str, model: str, include_usage: bool, *, index: int = 0,
                 closes: bool = True, logprobs: bool = False, echo: str = "") -> None:
        self.kind = kind
        # Several choices share one stream: each writer renders its own ``index``, and only
        # the stream (server/openai/choices.py) sends the usage chunk and [DONE].
        self._index, self._closes = index, closes
        self._logprobs, self._echo, self._sent = logprobs, echo, len(echo)
        self._pending: list[TokenLogprob] = []
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
        return [self._chunk(self._echo, None, echo=True)] if self._echo else []

    def on_event(self, event: Event, deltas: Sequence[Delta]) -> list[str]:
        if self._logprobs and isinstance(event, TokenEvent) and event.logprob is not None:
            self._pending.append(event.logprob)
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
        if self._closes:
            frames.extend(self.closing([result]))
        return frames

    def closing(self, results: Sequence[CompletionResult]) -> list[str]:
        """The usage chunk (when asked for) and ``[DONE]``."""
        frames = []
        if self._include_usage:
            frames.append(sse.data_frame({**self._envelope, "choices": [], "usage": usage_of(results)}))
        frames.append(sse.DONE)
        return frames

    def _take_logprobs(self) -> dict[str, Any] | None:
        """The tokens sampled since the last chunk, on this chunk."""
        if not self._logprobs:
            return None
        entries, self._pending = self._pending, []
        if self.kind == "chat":
            return chat_logprobs(entries)
        out = completion_logprobs(entries, self._sent)
        self._sent += sum(len(t) for t in out["tokens"])
        return out

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
                return {"tool_calls": [{"index": self._calls - 1, "id": _id_of(call), "type": "function",
                                        "function": {"name": call.name, "arguments": ""}}]}
            case ToolInputDelta(arguments_json=arguments):
                return {"tool_calls": [{"index": self._calls - 1, "function": {"arguments": arguments}}]}
        return None

    def _chunk(self, delta: dict[str, Any] | str, finish: str | None, *, echo: bool = False) -> str:
        lp = None if echo else self._take_logprobs()
        if self.kind == "chat":
            choice: dict[str, Any] = {"index": self._index, "delta": delta, "logprobs": lp,
                                      "finish_reason": finish}
        else:
            choice = {"index": self._index, "text": delta, "logprobs": lp, "finish_reason": finish}
        body: dict[str, Any] = {**self._envelope, "choices": [choice]}
        if self._include_usage:
            body["usage"] = None
        return sse.data_frame(body)
