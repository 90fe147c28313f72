"""OpenAI response bodies and stream chunks, built from kvllama results and events.

Non-streamed bodies come from a :class:`CompletionResult`; streamed chunks
from the events, with the final chunk's ``finish_reason`` and ``usage``
taken from the same result (folded by the same reducer while streaming), so
the two can never disagree. Finish reasons are mapped here, at the edge.

Chat replies go through :class:`ChatDeltas` either way: the stream sends its
deltas, a non-streamed reply folds them (:class:`ChatCollector`, as the SDKs
accumulate a stream). Thinking becomes ``reasoning_content`` (the field
DeepSeek, vLLM and llama-server use), tool calls ``tool_calls`` with a
``call_`` id and the arguments as a JSON string; a reply with a tool call
finishes with ``tool_calls``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from kvllama.events import DoneEvent, Event, TextEvent, ThinkingEndEvent, ThinkingEvent, ToolCallEndEvent
from kvllama.results import CompletionResult
from kvllama.server import sse
from kvllama.server.errors import error_body, from_exception
from kvllama.server.tool_calls import openai_id, parse_tool_calls

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


class ChatDeltas:
    """kvllama events -> chat ``delta`` dicts (without the role chunk).

    Whitespace-only text is held so it never starts ``content`` on its own:
    it is dropped when reasoning or a tool call comes next, and content that
    starts after reasoning or a tool call starts at its first non-blank
    character (models put "\n\n" after ``</think>``). Reasoning is passed on
    exactly. A tool-call span that does not parse is shown as content.
    """

    def __init__(self) -> None:
        self.tool_calls = 0
        self._pending = ""
        self._last: str | None = None  # "content" | "reasoning" | "tool" | None
        self._started = False  # content has begun

    def on_event(self, event: Event) -> list[dict[str, Any]]:
        if isinstance(event, TextEvent) and event.text:
            return self._content(event.text)
        if isinstance(event, ThinkingEvent) and event.text:
            self._pending, self._last = "", "reasoning"
            return [{"reasoning_content": event.text}]
        if isinstance(event, ThinkingEndEvent):
            self._last = self._last or "reasoning"
            return []
        if isinstance(event, ToolCallEndEvent):
            return self._tool_calls(event.text)
        return []

    def finish(self) -> list[dict[str, Any]]:
        pending, self._pending = self._pending, ""
        return [{"content": pending}] if pending and self._last in (None, "content") else []

    def _content(self, text: str) -> list[dict[str, Any]]:
        if not text.strip():
            self._pending += text
            return []
        text, self._pending = self._pending + text, ""
        if self._last in ("reasoning", "tool") and not self._started:
            text = text.lstrip()
        self._last, self._started = "content", True
        return [{"content": text}]

    def _tool_calls(self, text: str) -> list[dict[str, Any]]:
        calls = parse_tool_calls(text)
        if calls is None:
            return self._content(text) if text else []
        out: list[dict[str, Any]] = []
        for call in calls:
            head = {"index": self.tool_calls, "id": openai_id(), "type": "function",
                    "function": {"name": call.name, "arguments": ""}}
            out.append({"tool_calls": [head]})
            out.append({"tool_calls": [{"index": self.tool_calls,
                                        "function": {"arguments": call.arguments_json}}]})
            self.tool_calls += 1
        self._pending, self._last = "", "tool"
        return out


class ChatCollector:
    """For a non-streamed chat reply: the message the stream's deltas add up to."""

    def __init__(self) -> None:
        self.deltas = ChatDeltas()
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self._calls: list[dict[str, Any]] = []

    def add(self, event: Event) -> None:
        for delta in self.deltas.on_event(event):
            self._fold(delta)

    def message(self) -> dict[str, Any]:
        for delta in self.deltas.finish():
            self._fold(delta)
        content: str | None = "".join(self._content)
        if self._calls and not content:
            content = None
        message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
        if self._reasoning:
            message["reasoning_content"] = "".join(self._reasoning)
        if self._calls:
            message["tool_calls"] = self._calls
        return message

    def _fold(self, delta: dict[str, Any]) -> None:
        if "content" in delta:
            self._content.append(delta["content"])
        if "reasoning_content" in delta:
            self._reasoning.append(delta["reasoning_content"])
        for call in delta.get("tool_calls", ()):
            if call["index"] == len(self._calls):
                self._calls.append({"id": call["id"], "type": call["type"],
                                    "function": {"name": call["function"]["name"], "arguments": ""}})
            self._calls[call["index"]]["function"]["arguments"] += call["function"].get("arguments", "")


def response(
    kind: Kind, rid: str, model: str, result: CompletionResult, collected: ChatCollector | None = None
) -> dict[str, Any]:
    """The whole non-streamed body (a chat message from ``collected`` when given)."""
    if kind == "chat":
        if collected is not None:
            message, calls = collected.message(), collected.deltas.tool_calls
        else:
            message, calls = {"role": "assistant", "content": result.reply, "refusal": None}, 0
        choice: dict[str, Any] = {
            "index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason(result, calls),
        }
    else:
        choice = {"index": 0, "text": result.reply, "logprobs": None,
                  "finish_reason": FINISH[result.finish_reason]}
    return {
        "id": rid, "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": int(time.time()), "model": model, "system_fingerprint": FINGERPRINT,
        "choices": [choice], "usage": usage(result),
    }


class OpenAIStreamWriter:
    """kvllama events -> ``chat.completion.chunk`` / ``text_completion`` SSE frames.

    A small state machine: role chunk first (chat), then one chunk per delta
    (:class:`ChatDeltas`: content, reasoning_content, tool_calls; text
    completions get text only), then the finish chunk, the usage chunk when
    asked for, and ``[DONE]``.
    """

    def __init__(self, kind: Kind, rid: str, model: str, include_usage: bool) -> None:
        self.kind = kind
        self._envelope = {
            "id": rid,
            "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": int(time.time()), "model": model, "system_fingerprint": FINGERPRINT,
        }
        self._include_usage = include_usage
        self._deltas = ChatDeltas()

    def start(self) -> list[str]:
        if self.kind == "chat":
            return [self._chunk({"role": "assistant", "content": ""}, None)]
        return []

    def on_event(self, event: Event) -> list[str]:
        if self.kind == "chat":
            return [self._chunk(delta, None) for delta in self._deltas.on_event(event)]
        if isinstance(event, TextEvent) and event.text:
            return [self._chunk(event.text, None)]
        return []

    def finish(self, done: DoneEvent, result: CompletionResult) -> list[str]:
        if self.kind == "chat":
            frames = [self._chunk(delta, None) for delta in self._deltas.finish()]
            frames.append(self._chunk({}, finish_reason(result, self._deltas.tool_calls)))
        else:
            frames = [self._chunk("", FINISH[result.finish_reason])]
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
