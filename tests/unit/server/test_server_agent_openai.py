"""reasoning_content and tool_calls on /v1/chat/completions from scripted events, raw and via the SDK."""

from __future__ import annotations

import json
from typing import Any

import openai

from kvllama.events import (
    DoneEvent,
    Stats,
    TextEvent,
    ThinkingEndEvent,
    ThinkingEvent,
    ToolCallEndEvent,
    ToolCallEvent,
)
from kvllama.server.sse import decode_frames

CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
ARGS = {"city": "Paris"}


def done(reason: str = "stop") -> DoneEvent:
    stats = Stats(prompt_tokens=10, generated_tokens=7, queue_seconds=0.0, prefill_seconds=0.1,
                  decode_seconds=0.1, time_to_first_token=0.1, tokens_per_second=20.0)
    return DoneEvent(finish_reason=reason, stats=stats, prompt_tokens=tuple(range(10)))  # type: ignore[arg-type]


SCRIPT = [ThinkingEvent("Let me "), ThinkingEvent("think."), ThinkingEndEvent("Let me think.", "sig"),
          TextEvent("\n\n"), TextEvent("Checking."), ToolCallEvent(CALL),
          ToolCallEndEvent(CALL, CALL.encode()), TextEvent("\n"), done()]


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "s", "max_tokens": 64, "messages": [{"role": "user", "content": "Weather?"}], **extra}


def test_whole_reply_has_reasoning_content_and_tool_calls(scripted):
    s = scripted(SCRIPT)
    body = s.client.post("/v1/chat/completions", json=chat()).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["reasoning_content"] == "Let me think." and message["content"] == "Checking."
    (call,) = message["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == ARGS
    parsed = openai.types.chat.ChatCompletion.model_validate(body)
    assert parsed.choices[0].message.tool_calls[0].function.name == "get_weather"  # type: ignore[index]
    assert parsed.choices[0].message.model_extra == {"reasoning_content": "Let me think."}


def test_stream_deltas_add_up_to_the_whole_reply(scripted):
    s = scripted(SCRIPT)
    whole = s.client.post("/v1/chat/completions", json=chat()).json()["choices"][0]["message"]
    frames = decode_frames(s.client.post("/v1/chat/completions", json=chat(stream=True)).text)
    assert frames[-1] == (None, "[DONE]")
    chunks = [d for _, d in frames[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[:4] == [{"role": "assistant", "content": ""}, {"reasoning_content": "Let me "},
                          {"reasoning_content": "think."}, {"content": "Checking."}]
    head, args = deltas[4]["tool_calls"][0], deltas[5]["tool_calls"][0]
    assert head["index"] == 0 and head["id"].startswith("call_") and head["type"] == "function"
    assert head["function"] == {"name": "get_weather", "arguments": ""}
    assert args == {"index": 0, "function": {"arguments": json.dumps(ARGS)}}
    assert deltas[6:] == [{}]
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "tool_calls"
    for c in chunks:
        openai.types.chat.ChatCompletionChunk.model_validate(c)
    assert "".join(d.get("reasoning_content", "") for d in deltas) == whole["reasoning_content"]
    assert "".join(d.get("content", "") for d in deltas) == whole["content"]


def test_the_sdk_accumulates_the_stream_into_the_same_tool_call(scripted):
    s = scripted(SCRIPT)
    client = openai.OpenAI(base_url=f"{s.client.base_url}/v1", api_key="x", http_client=s.client)
    whole = client.chat.completions.create(model="s", messages=chat()["messages"])
    with client.chat.completions.stream(model="s", messages=chat()["messages"]) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    for reply in (whole, final):
        message = reply.choices[0].message
        assert reply.choices[0].finish_reason == "tool_calls" and message.content == "Checking."
        (call,) = message.tool_calls  # type: ignore[misc]
        assert call.function.name == "get_weather" and json.loads(call.function.arguments) == ARGS


def test_a_bare_tool_call_has_null_content_and_several_calls_are_indexed(scripted):
    openai_shape = {"function": {"name": "b", "arguments": "{\"x\": 1}"}}
    calls = json.dumps([{"name": "a", "arguments": {}}, openai_shape])
    s = scripted([TextEvent("\n"), ToolCallEndEvent(calls, calls.encode()), done()])
    message = s.client.post("/v1/chat/completions", json=chat()).json()["choices"][0]["message"]
    assert message["content"] is None and "reasoning_content" not in message
    got = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message["tool_calls"]]
    assert got == [("a", {}), ("b", {"x": 1})]
    frames = decode_frames(s.client.post("/v1/chat/completions", json=chat(stream=True)).text)
    indexes = [d["choices"][0]["delta"]["tool_calls"][0]["index"] for _, d in frames[:-1]
               if "tool_calls" in d["choices"][0]["delta"]]
    assert indexes == [0, 0, 1, 1]


def test_length_beats_tool_calls_and_plain_text_is_unchanged(scripted):
    s = scripted([ToolCallEndEvent(CALL, b""), done("length")])
    choice = s.client.post("/v1/chat/completions", json=chat()).json()["choices"][0]
    assert choice["finish_reason"] == "length"
    s = scripted([TextEvent("  "), TextEvent("hi"), TextEvent(" \n"), done()])
    message = s.client.post("/v1/chat/completions", json=chat()).json()["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "  hi \n", "refusal": None}


def test_thinking_extension_and_session_become_engine_params_only_when_given(scripted):
    s = scripted([TextEvent("ok"), done()])
    post = s.client.post
    r = post("/v1/chat/completions", json=chat(thinking=True, thinking_budget_tokens=100))
    assert r.status_code == 200
    assert s.calls[-1].sampling.thinking is True and s.calls[-1].sampling.thinking_budget_tokens == 100
    assert post("/v1/chat/completions", json=chat(session_id="c1")).status_code == 200
    assert s.calls[-1].options.session_id == "c1" and s.calls[-1].sampling.thinking is None
    completion = {"model": "s", "prompt": "hi", "max_tokens": 4}
    assert post("/v1/completions", json=completion, headers={"x-session-id": "c2"}).status_code == 200
    assert s.calls[-1].options.session_id == "c2"
    assert post("/v1/completions", json=completion).status_code == 200
    assert s.calls[-1].options.session_id is None
    assert post("/v1/chat/completions", json=chat(thinking_budget_tokens=0)).status_code == 400
    r = post("/v1/chat/completions", json=chat(session_id="a"), headers={"x-session-id": "b"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "session_id"


def test_text_completions_carry_text_only(scripted):
    s = scripted(SCRIPT)
    body = s.client.post("/v1/completions", json={"model": "s", "prompt": "hi", "max_tokens": 4}).json()
    assert body["choices"][0]["text"] == "\n\nChecking.\n" and body["choices"][0]["finish_reason"] == "stop"
