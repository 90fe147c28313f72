"""The official anthropic SDK (and raw SSE) against a real server on 127.0.0.1 with the real model.

Recent SDKs dropped temperature from ``messages.create``; it still goes in the
body through ``extra_body``, as older SDKs and raw clients send it.
"""

from __future__ import annotations

import anthropic
import httpx
import pytest

from kvllama.server.sse import decode_frames

MODEL = "gemma"  # the served name (tests/server/conftest.py)

QUESTION = [{"role": "user", "content": "Name three colours."}]
GREEDY = {"temperature": 0}


def test_streamed_message_equals_non_streamed(claude):
    whole = claude.messages.create(model=MODEL, max_tokens=10, messages=QUESTION, extra_body=GREEDY)
    assert whole.content[0].type == "text" and whole.stop_reason in ("end_turn", "max_tokens")
    with claude.messages.stream(model=MODEL, max_tokens=10, messages=QUESTION, extra_body=GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole.content[0].text == final.content[0].text
    assert final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.usage.input_tokens == whole.usage.input_tokens
    assert final.usage.cache_read_input_tokens == 0


def test_stop_sequences_and_count_tokens(claude):
    system = "You answer briefly."
    whole = claude.messages.create(model=MODEL, max_tokens=10, system=system, messages=QUESTION,
                                   extra_body=GREEDY)
    text = whole.content[0].text
    stop = text.strip()[:3]
    cut = claude.messages.create(model=MODEL, max_tokens=10, system=system, messages=QUESTION,
                                 stop_sequences=[stop], extra_body=GREEDY)
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == stop
    assert cut.content[0].text == text[: text.index(stop)]
    counted = claude.messages.count_tokens(model=MODEL, system=system, messages=QUESTION)
    usage = whole.usage
    # Anthropic's identity: every prompt token is input, a cache read or a cache write.
    assert counted.input_tokens == (usage.input_tokens + usage.cache_read_input_tokens
                                    + usage.cache_creation_input_tokens)


def test_raw_sse_follows_the_documented_sequence(served):
    body = {"model": MODEL, "max_tokens": 6, "stream": True, "temperature": 0,
            "system": [{"type": "text", "text": "Be brief."}], "messages": QUESTION}
    r = httpx.post(f"{served.url}/v1/messages", json=body, timeout=120)
    assert r.status_code == 200
    names = [name for name, _ in decode_frames(r.text)]
    n = names.count("content_block_delta")
    assert n >= 1
    assert names == ["message_start", "content_block_start", "ping", *["content_block_delta"] * n,
                     "content_block_stop", "message_delta", "message_stop"]


def test_errors_map_to_sdk_exceptions_and_the_server_keeps_serving(claude, served):
    r = httpx.post(f"{served.url}/v1/messages", json={"model": MODEL, "messages": QUESTION}, timeout=30)
    assert r.status_code == 400 and r.json()["error"] == {"type": "invalid_request_error",
                                                          "message": "max_tokens: Field required"}
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="claude-none", max_tokens=4, messages=QUESTION)
    with pytest.raises(anthropic.BadRequestError, match="2048"):
        claude.messages.create(model=MODEL, max_tokens=4,
                               messages=[{"role": "user", "content": "word " * 2500}])
    ok = claude.messages.create(model=MODEL, max_tokens=2, messages=QUESTION, extra_body=GREEDY)
    assert ok.usage.output_tokens >= 1
