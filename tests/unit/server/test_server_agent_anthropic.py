"""Thinking and tool_use on /v1/messages from scripted engine events: frame by frame, and via the SDK."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import anthropic
import pytest

from kvllama.events import (
    CacheDelta,
    DoneEvent,
    Stats,
    TextEvent,
    ThinkingEndEvent,
    ThinkingEvent,
    TokenEvent,
    ToolCallEndEvent,
    ToolCallEvent,
)
from kvllama.replies import Reducer
from kvllama.server import ServerConfig
from kvllama.server.agent_params import thinking_key
from kvllama.server.anthropic.rendering import content
from kvllama.server.sse import decode_frames
from kvllama.signing import sign_thinking

KEY = b"thinking-key"
THOUGHT = "Let me think."
SIG = sign_thinking(KEY, THOUGHT)
CALL = '\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n'


def done(reason: str = "stop", generated: int = 7) -> DoneEvent:
    stats = Stats(prompt_tokens=10, generated_tokens=generated, queue_seconds=0.0, prefill_seconds=0.1,
                  decode_seconds=0.1, time_to_first_token=0.1, tokens_per_second=20.0)
    return DoneEvent(finish_reason=reason, stats=stats, prompt_tokens=tuple(range(10)),  # type: ignore[arg-type]
                     cache_delta=CacheDelta())


def agent_script(signature: str = SIG, reason: str = "stop") -> list[Any]:
    return [TokenEvent(1), ThinkingEvent("Let me "), ThinkingEvent("think."),
            ThinkingEndEvent(THOUGHT, signature), TextEvent("\n\n"), TextEvent("Checking."), TextEvent("\n"),
            ToolCallEvent(CALL[:20]), ToolCallEvent(CALL[20:]), ToolCallEndEvent(CALL, CALL.encode()),
            TextEvent("\n"), done(reason)]


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "s", "max_tokens": 64, "messages": [{"role": "user", "content": "Weather?"}], **extra}


def test_stream_has_thinking_text_and_tool_use_blocks_in_anthropic_order(scripted):
    s = scripted(agent_script())
    frames = decode_frames(s.client.post("/v1/messages", json=body(stream=True)).text)
    assert all(name == data["type"] for name, data in frames)
    assert [name for name, _ in frames] == [
        "message_start",
        "content_block_start", "ping", "content_block_delta", "content_block_delta", "content_block_delta",
        "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]
    data = [d for _, d in frames]
    assert data[1] == {"type": "content_block_start", "index": 0,
                       "content_block": {"type": "thinking", "thinking": "", "signature": ""}}
    assert [d["delta"] for d in data[3:6]] == [
        {"type": "thinking_delta", "thinking": "Let me "}, {"type": "thinking_delta", "thinking": "think."},
        {"type": "signature_delta", "signature": SIG}]
    assert data[6] == {"type": "content_block_stop", "index": 0}
    assert data[7]["content_block"] == {"type": "text", "text": ""} and data[7]["index"] == 1
    # The "\n\n" after thinking and the "\n" before the call open no block and start no text.
    assert data[8]["delta"] == {"type": "text_delta", "text": "Checking."}
    tool = data[10]["content_block"]
    assert data[10]["index"] == 2 and tool["type"] == "tool_use" and tool["id"].startswith("toolu_")
    assert tool["name"] == "get_weather" and tool["input"] == {}
    assert data[11]["delta"]["type"] == "input_json_delta"
    assert json.loads(data[11]["delta"]["partial_json"]) == {"city": "Paris", "days": 2}
    assert data[13]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}


def test_whole_message_has_the_same_blocks_and_parses_as_an_sdk_message(scripted):
    s = scripted(agent_script())
    whole = s.client.post("/v1/messages", json=body()).json()
    message = anthropic.types.Message.model_validate(whole)
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use"]
    thinking, text, tool = message.content
    assert thinking.thinking == THOUGHT and thinking.signature == SIG  # type: ignore[union-attr]
    assert text.text == "Checking."  # type: ignore[union-attr]
    assert tool.name == "get_weather" and tool.input == {"city": "Paris", "days": 2}  # type: ignore[union-attr]
    assert tool.id.startswith("toolu_") and message.stop_reason == "tool_use"  # type: ignore[union-attr]


def test_the_sdk_reads_the_stream_and_the_whole_message_alike(scripted):
    s = scripted(agent_script())
    claude = anthropic.Anthropic(base_url=str(s.client.base_url), api_key="x", http_client=s.client)
    whole = claude.messages.create(model="s", max_tokens=64, messages=body()["messages"])
    with claude.messages.stream(model="s", max_tokens=64, messages=body()["messages"]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert "signature" in kinds and "thinking" in kinds and "input_json" in kinds

    def plain(m: anthropic.types.Message) -> list[dict[str, Any]]:
        return [{k: v for k, v in b.model_dump().items() if k != "id"} for b in m.content]

    assert plain(final) == plain(whole)
    assert final.stop_reason == whole.stop_reason == "tool_use"


def test_no_signature_delta_without_a_key_and_an_unparseable_call_becomes_text(scripted):
    events = [ThinkingEvent("hm"), ThinkingEndEvent("hm", ""), TextEvent("Answer"),
              ToolCallEndEvent("not a call", b"not a call"), done()]
    s = scripted(events)
    frames = decode_frames(s.client.post("/v1/messages", json=body(stream=True)).text)
    deltas = [d["delta"] for n, d in frames if n == "content_block_delta"]
    assert deltas == [{"type": "thinking_delta", "thinking": "hm"}, {"type": "text_delta", "text": "Answer"},
                      {"type": "text_delta", "text": "not a call"}]
    assert frames[-2][1]["delta"]["stop_reason"] == "end_turn"
    whole = s.client.post("/v1/messages", json=body()).json()
    assert whole["content"] == [{"type": "thinking", "thinking": "hm", "signature": ""},
                                {"type": "text", "text": "Answernot a call"}]


def test_several_calls_in_one_span_and_max_tokens_wins_over_tool_use(scripted):
    calls = json.dumps([{"name": "a", "arguments": {}}, {"name": "b", "parameters": {"x": 1}}])
    s = scripted([ToolCallEndEvent(calls, calls.encode()), done("length", generated=64)])
    whole = s.client.post("/v1/messages", json=body()).json()
    assert [(b["type"], b["name"], b["input"]) for b in whole["content"]] == [
        ("tool_use", "a", {}), ("tool_use", "b", {"x": 1})]
    assert whole["content"][0]["id"] != whole["content"][1]["id"]
    assert whole["stop_reason"] == "max_tokens"


def test_thinking_parameter_becomes_engine_params_only_when_given(scripted):
    s = scripted([TextEvent("ok"), done()])
    post = s.client.post
    enabled = {"type": "enabled", "budget_tokens": 2048}
    assert post("/v1/messages", json=body(thinking=enabled)).status_code == 200
    assert s.calls[-1].sampling.thinking is True and s.calls[-1].sampling.thinking_budget_tokens == 2048
    assert post("/v1/messages", json=body(thinking={"type": "enabled"})).status_code == 200
    assert s.calls[-1].sampling.thinking is True and s.calls[-1].sampling.thinking_budget_tokens is None
    assert post("/v1/messages", json=body(thinking={"type": "disabled"})).status_code == 200
    assert s.calls[-1].sampling.thinking is False and s.calls[-1].sampling.thinking_budget_tokens is None
    assert post("/v1/messages", json=body()).status_code == 200
    assert s.calls[-1].sampling.thinking is None and s.calls[-1].options.session_id is None
    for bad in ({"type": "on"}, {"type": "enabled", "budget_tokens": 0}, "yes"):
        r = post("/v1/messages", json=body(thinking=bad))
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", bad


def test_session_id_from_body_or_header(scripted):
    s = scripted([TextEvent("ok"), done()])
    assert s.client.post("/v1/messages", json=body(session_id="conv-1")).status_code == 200
    assert s.calls[-1].options.session_id == "conv-1"
    assert s.client.post("/v1/messages", json=body(), headers={"x-session-id": "conv-2"}).status_code == 200
    assert s.calls[-1].options.session_id == "conv-2"
    r = s.client.post("/v1/messages", json=body(session_id="a"), headers={"x-session-id": "b"})
    assert r.status_code == 400 and "differ" in r.json()["error"]["message"]
    assert s.client.post("/v1/messages", json=body(session_id="")).status_code == 400


def history(signature: Any, thought: str = THOUGHT) -> list[dict[str, Any]]:
    block: dict[str, Any] = {"type": "thinking", "thinking": thought}
    if signature is not None:
        block["signature"] = signature
    return [{"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": [block, {"type": "text", "text": "Checking."}]},
            {"role": "user", "content": "And tomorrow?"}]


@pytest.mark.parametrize("stream", [False, True])
def test_thinking_blocks_sent_back_must_carry_a_valid_signature(scripted, stream):
    s = scripted([TextEvent("ok"), done()], ServerConfig(thinking_key=KEY))
    assert s.client.post("/v1/messages", json=body(messages=history(SIG), stream=stream)).status_code == 200
    for bad in (history(SIG, THOUGHT + " (edited)"), history("AAAA" + SIG[4:]), history(None), history(7)):
        r = s.client.post("/v1/messages", json=body(messages=bad, stream=stream))
        assert r.status_code == 400
        assert r.json()["error"]["type"] == "invalid_request_error"
        assert "signature" in r.json()["error"]["message"]
    assert len(s.calls) == 1  # refused before anything was queued


def test_without_a_key_signatures_are_not_checked_and_the_engine_key_is_the_fallback(scripted):
    s = scripted([TextEvent("ok"), done()])
    assert s.client.post("/v1/messages", json=body(messages=history("forged"))).status_code == 200
    # The engine's own key (an Engine attribute `thinking_key`, when it has one) is the fallback.
    engine_keyed = SimpleNamespace(config=ServerConfig(), engine=SimpleNamespace(thinking_key=KEY))
    assert thinking_key(engine_keyed) == KEY  # type: ignore[arg-type]
    both = SimpleNamespace(config=ServerConfig(thinking_key=b"mine"), engine=engine_keyed.engine)
    assert thinking_key(both) == b"mine"  # type: ignore[arg-type]
    assert thinking_key(SimpleNamespace(config=ServerConfig(), engine=object())) is None  # type: ignore[arg-type]


def blocks_of(events: list[Any]) -> list[dict[str, Any]]:
    reducer = Reducer()
    for event in events:
        reducer.add(event)
    reducer.finish()
    return content(reducer.reply)


def test_block_rules_for_whitespace_open_thinking_and_text_after_a_call():
    # Whitespace alone is still a reply when nothing else came.
    assert blocks_of([TextEvent(" \n")]) == [{"type": "text", "text": " \n"}]
    assert blocks_of([]) == [{"type": "text", "text": ""}]
    # Trailing whitespace of the last text block stays; text after a call is its own block, left-trimmed.
    call = '{"name": "f", "arguments": {}}'
    blocks = blocks_of([TextEvent("a"), TextEvent("\n"), ToolCallEndEvent(call, b""), TextEvent("\n\n"),
                        TextEvent(" b"), TextEvent("\n")])
    assert [(b["type"], b.get("text")) for b in blocks] == [("text", "a"), ("tool_use", None),
                                                            ("text", "b\n")]
    # A thinking block cut short (cancelled before its end event) still closes, unsigned.
    assert blocks_of([ThinkingEvent("hm")]) == [{"type": "thinking", "thinking": "hm", "signature": ""}]
