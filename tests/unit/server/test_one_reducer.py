"""One event sequence through every consumer of the one reducer: they agree on the content.

The Python result, the OpenAI chat reply and the Anthropic message, each
streamed and not (over HTTP, from a scripted engine), must show the same
text, thinking, tool calls, finish and usage; and each stream's deltas,
accumulated as the SDKs do, must equal the non-streamed body.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from kvllama.events import (
    CacheDelta,
    DoneEvent,
    Event,
    Stats,
    TextEvent,
    ThinkingEndEvent,
    ThinkingEvent,
    TokenEvent,
    ToolCallEndEvent,
    ToolCallEvent,
)
from kvllama.replies import parse_tool_calls
from kvllama.results import collect
from kvllama.server.sse import decode_frames
from kvllama.signing import sign_thinking

THOUGHT = "Let me think."
SIG = sign_thinking(b"key", THOUGHT)
CALL = '{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}'
ARGS = {"city": "Paris", "days": 2}


def done() -> DoneEvent:
    stats = Stats(prompt_tokens=10, generated_tokens=9, queue_seconds=0.0, prefill_seconds=0.1,
                  decode_seconds=0.1, time_to_first_token=0.1, tokens_per_second=20.0)
    return DoneEvent(finish_reason="stop", stats=stats, prompt_tokens=tuple(range(10)),
                     cache_delta=CacheDelta(read=4, created=6))


SCRIPT: list[Event] = [
    TokenEvent(1), ThinkingEvent("Let me "), ThinkingEvent("think."), ThinkingEndEvent(THOUGHT, SIG),
    TokenEvent(2), TextEvent("It is"), TextEvent(" "), TextEvent("sunny."),
    ToolCallEvent(CALL[:10]), ToolCallEvent(CALL[10:]), ToolCallEndEvent(CALL, CALL.encode()), done(),
]


def openai_body(**extra: Any) -> dict[str, Any]:
    return {"model": "s", "messages": [{"role": "user", "content": "Weather?"}], **extra}


def anthropic_body(**extra: Any) -> dict[str, Any]:
    return {"model": "s", "max_tokens": 64, "messages": [{"role": "user", "content": "Weather?"}], **extra}


def openai_stream(text: str) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """(message, finish_reason, usage) that a stream's chunks add up to, as the openai SDK accumulates."""
    chunks = [data for _, data in decode_frames(text) if data != "[DONE]"]
    message: dict[str, Any] = {"role": "assistant", "content": "", "refusal": None}
    calls: list[dict[str, Any]] = []
    finish = ""
    for chunk in chunks:
        for choice in chunk["choices"]:
            delta, finish = choice["delta"], choice["finish_reason"] or finish
            message["content"] += delta.get("content", "")
            if reasoning := delta.get("reasoning_content"):
                message["reasoning_content"] = message.get("reasoning_content", "") + reasoning
            for call in delta.get("tool_calls", ()):
                if call["index"] == len(calls):
                    calls.append({"id": call["id"], "type": call["type"],
                                  "function": {"name": call["function"]["name"], "arguments": ""}})
                calls[call["index"]]["function"]["arguments"] += call["function"]["arguments"]
    if calls:
        message["tool_calls"] = calls
        message["content"] = message["content"] or None
    return message, finish, chunks[-1]["usage"]


def anthropic_stream(text: str) -> dict[str, Any]:
    """The message a stream's events add up to, as the anthropic SDK accumulates it."""
    frames = [data for _, data in decode_frames(text)]
    message = dict(frames[0]["message"])
    partial: dict[int, str] = {}
    for ev in frames[1:]:
        if ev["type"] == "content_block_start":
            message["content"].append(dict(ev["content_block"]))
        elif ev["type"] == "content_block_delta":
            block, delta = message["content"][ev["index"]], ev["delta"]
            if delta["type"] == "input_json_delta":
                partial[ev["index"]] = partial.get(ev["index"], "") + delta["partial_json"]
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
            else:
                key = "text" if delta["type"] == "text_delta" else "thinking"
                block[key] += delta[key]
        elif ev["type"] == "content_block_stop" and ev["index"] in partial:
            message["content"][ev["index"]]["input"] = json.loads(partial.pop(ev["index"]))
        elif ev["type"] == "message_delta":
            message.update(ev["delta"], usage=ev["usage"])
    return message


def without_ids(value: Any) -> Any:
    """Call ids are minted per reply; everything else must match exactly."""
    if isinstance(value, dict):
        return {k: without_ids(v) for k, v in value.items() if k not in ("id", "created")}
    if isinstance(value, list):
        return [without_ids(v) for v in value]
    return value


def test_python_openai_and_anthropic_agree_streamed_and_not(scripted):
    result = collect(SCRIPT)
    s = scripted(SCRIPT)
    whole = s.client.post("/v1/chat/completions", json=openai_body()).json()
    streamed = s.client.post("/v1/chat/completions",
                             json=openai_body(stream=True, stream_options={"include_usage": True})).text
    message, finish, usage = openai_stream(streamed)
    msg = anthropic_body()
    anth_whole = s.client.post("/v1/messages", json=msg).json()
    anth_streamed = anthropic_stream(s.client.post("/v1/messages", json={**msg, "stream": True}).text)

    # Streamed deltas, accumulated, equal the non-streamed body (ids aside).
    assert without_ids(message) == without_ids(whole["choices"][0]["message"])
    assert finish == whole["choices"][0]["finish_reason"] == "tool_calls"
    assert usage == whole["usage"]
    assert without_ids(anth_streamed["content"]) == without_ids(anth_whole["content"])
    assert (anth_streamed["stop_reason"], anth_streamed["usage"]) == (anth_whole["stop_reason"],
                                                                       anth_whole["usage"])

    # The same content in all three shapes.
    assert result.reply == message["content"] == "It is sunny."
    assert result.thinking == message["reasoning_content"] == THOUGHT
    assert [b["type"] for b in anth_whole["content"]] == ["thinking", "text", "tool_use"]
    thinking, text, tool_use = anth_whole["content"]
    assert (thinking["thinking"], thinking["signature"]) == (result.thinking, result.thinking_signature)
    assert text["text"] == result.reply
    (call,) = parse_tool_calls(result.tool_calls[0]) or []
    (oa_call,) = message["tool_calls"]
    assert call.name == oa_call["function"]["name"] == tool_use["name"] == "get_weather"
    assert call.arguments == json.loads(oa_call["function"]["arguments"]) == tool_use["input"] == ARGS
    # Finish: an ordinary stop with a tool call is "tool_calls" / "tool_use".
    assert result.finish_reason == "stop" and anth_whole["stop_reason"] == "tool_use"
    # Usage: the same counts, in each family's convention.
    stats, read = result.stats, result.cache_delta.read
    assert usage == {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.generated_tokens,
                     "total_tokens": stats.prompt_tokens + stats.generated_tokens,
                     "prompt_tokens_details": {"cached_tokens": read}}
    created = result.cache_delta.created
    assert anth_whole["usage"] == {"input_tokens": stats.prompt_tokens - read - created,
                                   "output_tokens": stats.generated_tokens,
                                   "cache_creation_input_tokens": created,
                                   "cache_read_input_tokens": read}


@pytest.mark.parametrize("script", [
    [TextEvent(" \n"), done()],  # whitespace alone is still a reply
    [done()],  # nothing at all: one empty text block
    [TextEvent("a"), TextEvent("\n"), ToolCallEndEvent(CALL, b""), TextEvent("\n\n"), TextEvent(" b"),
     done()],
    [TextEvent("see: "), ToolCallEndEvent("not a call", b""), done()],  # shown as text
    [ThinkingEvent("hm"), TextEvent("\n"), done()],  # thinking cut short, trailing whitespace dropped
    [ToolCallEndEvent(f"[{CALL}, {CALL}]", b""), done()],  # two calls in one span
])
def test_streamed_deltas_join_to_the_non_streamed_body(scripted, script):
    s = scripted(script)
    whole = s.client.post("/v1/chat/completions", json=openai_body()).json()
    streamed = s.client.post("/v1/chat/completions",
                             json=openai_body(stream=True, stream_options={"include_usage": True})).text
    message, finish, usage = openai_stream(streamed)
    assert without_ids(message) == without_ids(whole["choices"][0]["message"])
    assert (finish, usage) == (whole["choices"][0]["finish_reason"], whole["usage"])
    anth_whole = s.client.post("/v1/messages", json=anthropic_body()).json()
    anth_streamed = anthropic_stream(s.client.post("/v1/messages", json=anthropic_body(stream=True)).text)
    assert without_ids(anth_streamed["content"]) == without_ids(anth_whole["content"])
    assert anth_streamed["stop_reason"] == anth_whole["stop_reason"]
    # The same text in both families, up to whitespace: OpenAI's one string keeps what separates
    # text blocks, where Anthropic trims a block that follows another block.
    texts = "".join(b["text"] for b in anth_whole["content"] if b["type"] == "text")
    assert "".join((message["content"] or "").split()) == "".join(texts.split())
