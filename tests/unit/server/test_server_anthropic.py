"""Anthropic Messages routes over the stub engine: bodies, the exact SSE sequence, stops, errors."""

from __future__ import annotations

import re
from typing import Any

from kvllama.server.sse import decode_frames as sse_events


def messages(content: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": "s", "messages": [{"role": "user", "content": content}], "temperature": 0,
            "max_tokens": 8, **extra}

# Anthropic's documented order for a single text block.
TEXT_STREAM = ["message_start", "content_block_start", "ping", "content_block_delta",
               "content_block_stop", "message_delta", "message_stop"]


def collapse(names: list[str | None]) -> list[str | None]:
    """Runs of content_block_delta collapsed to one, to compare against the documented order."""
    out: list[str | None] = []
    for n in names:
        if not (out and n == out[-1] == "content_block_delta"):
            out.append(n)
    return out


def test_message_body_has_anthropic_shape(client):
    r = client.post("/v1/messages", json=messages())
    assert r.status_code == 200
    body = r.json()
    assert body["type"] == "message" and body["role"] == "assistant" and body["id"].startswith("msg_")
    assert body["content"][0]["type"] == "text" and len(body["content"][0]["text"]) == 8
    assert body["stop_reason"] == "max_tokens" and body["stop_sequence"] is None
    assert set(body["usage"]) == {"input_tokens", "output_tokens", "cache_creation_input_tokens",
                                  "cache_read_input_tokens"}
    assert body["usage"]["output_tokens"] == 8


def test_stream_follows_the_documented_event_sequence_frame_by_frame(client):
    plain = client.post("/v1/messages", json=messages()).json()
    r = client.post("/v1/messages", json=messages(stream=True))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    # Every frame is exactly "event: <type>\ndata: <json>\n\n", and the name repeats the JSON type.
    assert re.fullmatch(r"(event: [a-z_]+\ndata: \{[^\n]*\}\n\n)+", r.text)
    events = sse_events(r.text)
    assert all(name == data["type"] for name, data in events)
    assert collapse([name for name, _ in events]) == TEXT_STREAM
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["input_tokens"] == plain["usage"]["input_tokens"]
    block = events[1][1]
    assert block == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    deltas = [d for n, d in events if n == "content_block_delta"]
    assert all(d["index"] == 0 and d["delta"]["type"] == "text_delta" for d in deltas)
    assert "".join(d["delta"]["text"] for d in deltas) == plain["content"][0]["text"]
    final = events[-2][1]
    assert final["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert final["usage"] == plain["usage"]


def test_empty_reply_still_has_one_text_block(make_client):
    client = make_client(eos_after=0)[0]
    events = sse_events(client.post("/v1/messages", json=messages(stream=True)).text)
    assert [n for n, _ in events] == ["message_start", "content_block_start", "ping", "content_block_stop",
                                      "message_delta", "message_stop"]
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"
    body = client.post("/v1/messages", json=messages()).json()
    assert body["content"] == [{"type": "text", "text": ""}] and body["stop_reason"] == "end_turn"


def test_stop_sequences_report_stop_sequence(client):
    text = client.post("/v1/messages", json=messages(max_tokens=12)).json()["content"][0]["text"]
    stop = text[4:6]
    body = client.post("/v1/messages", json=messages(max_tokens=12, stop_sequences=[stop])).json()
    assert body["content"][0]["text"] == text[: text.index(stop)]
    assert body["stop_reason"] == "stop_sequence" and body["stop_sequence"] == stop
    events = sse_events(client.post("/v1/messages", json=messages(max_tokens=12, stop_sequences=[stop],
                                                                  stream=True)).text)
    assert events[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": stop}


def test_system_as_string_or_blocks_and_content_blocks(client):
    as_text = client.post("/v1/messages", json=messages(system="Be brief.")).json()
    as_blocks = client.post("/v1/messages", json=messages(
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}])).json()
    assert as_text["content"] == as_blocks["content"]
    body = messages(metadata={"user_id": "u1"}, top_k=3, top_p=0.5,
                    tools=[{"name": "f", "description": "d", "input_schema": {"type": "object"}}])
    body["messages"] = [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                        {"role": "assistant", "content": "hello"},
                        {"role": "user", "content": "again"}]
    assert client.post("/v1/messages", json=body).status_code == 200


def test_count_tokens_matches_the_prompt_the_model_sees(client):
    body = messages(system="Be brief.")
    counted = client.post("/v1/messages/count_tokens", json=body)
    assert counted.status_code == 200
    usage = client.post("/v1/messages", json=body).json()["usage"]
    assert counted.json() == {"input_tokens": usage["input_tokens"] + usage["cache_read_input_tokens"]}


def test_errors_use_the_anthropic_shape(client):
    no_max = messages()
    del no_max["max_tokens"]
    r = client.post("/v1/messages", json=no_max)
    assert r.status_code == 400
    assert r.json() == {"type": "error", "error": {"type": "invalid_request_error",
                                                   "message": "max_tokens: Field required"}}
    r = client.post("/v1/messages", json=messages(model="nope"))
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = client.post("/v1/messages", json=messages(messages=[{"role": "system", "content": "x"}]))
    assert r.status_code == 400 and "role" in r.json()["error"]["message"]
    image = [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]
    r = client.post("/v1/messages", json=messages(messages=[{"role": "user", "content": image}]))
    assert r.status_code == 400 and "image" in r.json()["error"]["message"]
    r = client.post("/v1/messages/count_tokens", content=b"{nope")
    assert r.status_code == 400 and r.json()["type"] == "error"
    assert client.post("/v1/messages", json=messages()).status_code == 200


def test_anthropic_tools_are_rendered_in_the_openai_function_shape(make_client):
    template = ("{% for t in tools or [] %}[{{ t.function.name }}:{{ t.function.parameters.type }}]"
                "{% endfor %}{% for m in messages %}{{ m.content }}{% endfor %}")
    client = make_client(chat_template=template)[0]
    tools = [{"name": "get_weather", "description": "d", "input_schema": {"type": "object"}},
             {"type": "web_search_20250305", "name": "web_search"}]
    counted = client.post("/v1/messages/count_tokens", json={"model": "s", "tools": tools,
                                                            "messages": [{"role": "user", "content": "hi"}]})
    assert counted.json()["input_tokens"] == 1 + len("[get_weather:object]hi")
