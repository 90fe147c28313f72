"""OpenAI routes over the stub engine: bodies, streaming chunks, parameters, errors."""

from __future__ import annotations

import base64
import struct
from typing import Any

import pytest

from kvllama.server import ServerConfig
from kvllama.server.sse import decode_frames as sse_events


def chat(content: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": "s", "messages": [{"role": "user", "content": content}], "temperature": 0,
            "max_tokens": 8, **extra}


def test_chat_completion_body_has_openai_shape(client):
    r = client.post("/v1/chat/completions", json=chat())
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "s"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and len(choice["message"]["content"]) == 8
    assert choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + 8
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}


def test_streamed_chat_equals_non_streamed_and_ends_with_usage_and_done(client):
    plain = client.post("/v1/chat/completions", json=chat()).json()
    r = client.post("/v1/chat/completions",
                    json=chat(stream=True, stream_options={"include_usage": True}))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    frames = sse_events(r.text)
    assert all(name is None for name, _ in frames)
    assert frames[-1][1] == "[DONE]"
    chunks = [data for _, data in frames[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == plain["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]
    assert all(c["usage"] is None for c in chunks[:-1])


def test_stream_without_include_usage_has_no_usage_field(client):
    frames = sse_events(client.post("/v1/chat/completions", json=chat(stream=True)).text)
    assert all("usage" not in data for _, data in frames[:-1])


def test_stop_sequence_truncates_and_reports_stop(client):
    full = client.post("/v1/completions", json={"model": "s", "prompt": "abc", "max_tokens": 12,
                                                "temperature": 0}).json()
    text = full["choices"][0]["text"]
    stop = text[5:7]
    expected = text[: text.index(stop)]
    for stream in (False, True):
        r = client.post("/v1/completions", json={"model": "s", "prompt": "abc", "max_tokens": 12,
                                                 "temperature": 0, "stop": [stop], "stream": stream})
        if stream:
            chunks = [d for _, d in sse_events(r.text)[:-1]]
            got = "".join(c["choices"][0]["text"] for c in chunks)
            finish = chunks[-1]["choices"][0]["finish_reason"]
        else:
            got, finish = r.json()["choices"][0]["text"], r.json()["choices"][0]["finish_reason"]
        assert got == expected and finish == "stop"


def test_completion_accepts_token_ids_and_a_one_item_batch(client):
    a = client.post("/v1/completions", json={"model": "s", "prompt": [97, 98], "temperature": 0})
    b = client.post("/v1/completions", json={"model": "s", "prompt": [[97, 98]], "temperature": 0})
    assert a.status_code == b.status_code == 200
    assert a.json()["object"] == "text_completion"
    assert a.json()["choices"][0]["text"] == b.json()["choices"][0]["text"]
    assert a.json()["usage"]["completion_tokens"] == 16  # OpenAI's default max_tokens


def test_extensions_seed_and_penalties_are_accepted(client):
    body = chat(temperature=0.9, seed=42, top_k=5, top_p=0.9, min_p=0.1, frequency_penalty=0.5,
                presence_penalty=0.2, repetition_penalty=1.1, max_completion_tokens=6)
    a = client.post("/v1/chat/completions", json=body).json()
    b = client.post("/v1/chat/completions", json=body).json()
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]
    assert a["usage"]["completion_tokens"] == 6


def test_response_formats_are_accepted(client):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    json_schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    for fmt in ({"type": "json_object"}, json_schema, {"type": "text"}):
        assert client.post("/v1/chat/completions", json=chat(response_format=fmt)).status_code == 200


def test_bad_response_format_is_400(client):
    r = client.post("/v1/chat/completions", json=chat(response_format={"type": "json_schema"}))
    assert r.status_code == 400 and "json_schema" in r.json()["error"]["message"]
    bad = {"type": "json_schema", "json_schema": {"schema": {"type": "object", "properties": {
        "x": {"type": "date"}}}}}
    r = client.post("/v1/chat/completions", json=chat(response_format=bad))
    assert r.status_code == 400 and "properties.x" in r.json()["error"]["message"]


def test_cache_salt_is_validated(client):
    assert client.post("/v1/chat/completions", json=chat(cache_salt="tenant-1:a.b_c")).status_code == 200
    for salt in ("bad salt!", "", "x" * 257, 12):
        r = client.post("/v1/chat/completions", json=chat(cache_salt=salt))
        assert r.status_code == 400, salt
        assert r.json()["error"]["param"] == "cache_salt"


def test_bad_choice_fields_are_400_naming_the_field(client):
    cases = [({"n": 0}, "n"), ({"n": 17}, "n"), ({"top_logprobs": 2}, "top_logprobs"),
             ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"), ({"min_tokens": -1}, "min_tokens")]
    for extra, param in cases:
        r = client.post("/v1/chat/completions", json=chat(**extra))
        assert r.status_code == 400, extra
        assert param in (r.json()["error"]["param"] or r.json()["error"]["message"])
        assert r.json()["error"]["type"] == "invalid_request_error"
    for bias in ({"x": 1.0}, {"1": 101.0}, {"99999999": 1.0}):
        r = client.post("/v1/chat/completions", json=chat(logit_bias=bias))
        assert r.status_code == 400 and "logit_bias" in r.json()["error"]["message"], bias
    r = client.post("/v1/completions", json={"model": "s", "prompt": ["a", "b"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = client.post("/v1/completions", json={"model": "s", "prompt": "a", "echo": True, "logprobs": 1})
    assert r.status_code == 400 and "echo" in r.json()["error"]["message"]


def test_n_choices_each_with_its_index_and_seed(client):
    body = client.post("/v1/chat/completions", json=chat(n=3, temperature=1.0, seed=5)).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    texts = [c["message"]["content"] for c in body["choices"]]
    assert len(set(texts)) == 3  # seeds 5, 6, 7
    alone = client.post("/v1/chat/completions", json=chat(temperature=1.0, seed=6)).json()
    assert alone["choices"][0]["message"]["content"] == texts[1]
    assert body["usage"]["completion_tokens"] == 3 * 8
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 24


def test_n_choices_stream_interleaved_with_one_usage_and_done(client):
    r = client.post("/v1/completions", json={"model": "s", "prompt": "hey", "max_tokens": 4, "n": 2,
                                             "temperature": 0, "stream": True,
                                             "stream_options": {"include_usage": True}})
    frames = [data for _, data in sse_events(r.text)]
    assert frames[-1] == "[DONE]" and frames.count("[DONE]") == 1
    chunks = frames[:-1]
    texts = {0: "", 1: ""}
    for c in chunks[:-1]:
        for choice in c["choices"]:
            texts[choice["index"]] += choice["text"]
    assert texts[0] == texts[1] and len(texts[0]) == 4  # greedy: both choices alike
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 8


def test_logprobs_on_chat_and_completions(client):
    body = client.post("/v1/chat/completions", json=chat(logprobs=True, top_logprobs=2)).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == 8 and all(e["logprob"] <= 0 and len(e["top_logprobs"]) == 2 for e in content)
    assert "".join(e["token"] for e in content) == body["choices"][0]["message"]["content"]
    body = client.post("/v1/completions", json={"model": "s", "prompt": "hey", "max_tokens": 3,
                                                "temperature": 0, "logprobs": 1}).json()
    lp = body["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == 3 and lp["text_offset"] == [0, 1, 2]
    assert all(len(top) == 1 for top in lp["top_logprobs"])
    assert body["choices"][0]["text"] == "".join(lp["tokens"])
    stream = client.post("/v1/chat/completions", json=chat(logprobs=True, stream=True))
    chunks = [d for _, d in sse_events(stream.text)[:-1]]
    streamed = [e for c in chunks for e in ((c["choices"][0]["logprobs"] or {}).get("content") or [])]
    assert [e["token"] for e in streamed] == [e["token"] for e in content]


def test_echo_prepends_the_prompt(client):
    body = client.post("/v1/completions", json={"model": "s", "prompt": "hey", "max_tokens": 3,
                                                "temperature": 0, "echo": True}).json()
    assert body["choices"][0]["text"].startswith("hey") and len(body["choices"][0]["text"]) == 6
    r = client.post("/v1/completions", json={"model": "s", "prompt": "hey", "max_tokens": 3,
                                             "temperature": 0, "echo": True, "stream": True})
    texts = [d["choices"][0]["text"] for _, d in sse_events(r.text)[:-1]]
    assert texts[0] == "hey" and "".join(texts) == body["choices"][0]["text"]


def test_ignore_eos_and_min_tokens_keep_generating(make_client):
    client = make_client(eos_after=2)[0]
    short = client.post("/v1/chat/completions", json=chat()).json()
    assert short["usage"]["completion_tokens"] == 2 and short["choices"][0]["finish_reason"] == "stop"
    for extra in ({"ignore_eos": True}, {"min_tokens": 8}):
        body = client.post("/v1/chat/completions", json=chat(**extra)).json()
        assert body["usage"]["completion_tokens"] == 8, extra
    body = client.post("/v1/chat/completions", json=chat(min_tokens=4)).json()
    assert body["usage"]["completion_tokens"] == 4  # the end token comes as soon as it may


def test_max_tokens_above_the_limit_names_the_limit(make_client):
    client = make_client(ServerConfig(max_tokens_limit=100))[0]
    r = client.post("/v1/chat/completions", json=chat(max_tokens=101))
    assert r.status_code == 400
    assert "100" in r.json()["error"]["message"] and r.json()["error"]["param"] == "max_tokens"
    assert client.post("/v1/chat/completions", json=chat(max_tokens=0)).status_code == 400


def test_embeddings_float_base64_and_tokens(client):
    r = client.post("/v1/embeddings", json={"model": "s", "input": ["one", "two"]})
    assert r.status_code == 200
    body = r.json()
    assert [d["index"] for d in body["data"]] == [0, 1]
    vec = body["data"][0]["embedding"]
    assert len(vec) == 8 and body["usage"]["prompt_tokens"] == len("one") + len("two") + 2
    b64 = client.post("/v1/embeddings", json={"model": "s", "input": "one", "encoding_format": "base64"})
    raw = base64.b64decode(b64.json()["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == pytest.approx(vec, rel=1e-6)
    tokens = client.post("/v1/embeddings", json={"model": "s", "input": [111, 110, 101]})
    assert tokens.json()["data"][0]["embedding"] == vec


def test_embeddings_reject_empty_input(client):
    for given in ([], "", [""]):
        assert client.post("/v1/embeddings", json={"model": "s", "input": given}).status_code == 400


def test_models_list_and_retrieve(client):
    body = client.get("/v1/models").json()
    assert body["object"] == "list" and [m["id"] for m in body["data"]] == ["s"]
    assert body["data"][0]["object"] == "model" and body["data"][0]["owned_by"] == "kvllama"
    assert client.get("/v1/models/s").json()["id"] == "s"
    assert client.get("/v1/models/nope").status_code == 404


def test_served_names_map_to_engine_ids_and_the_default_applies(make_client):
    client = make_client(ServerConfig(models={"tiny": "s"}, default_model="tiny"))[0]
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["tiny"]
    assert client.post("/v1/chat/completions", json=chat(model="tiny")).json()["model"] == "tiny"
    no_model = chat()
    del no_model["model"]
    assert client.post("/v1/chat/completions", json=no_model).json()["model"] == "tiny"
    r = client.post("/v1/chat/completions", json=chat(model="s"))
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_speculation_counters_in_metrics(make_client):
    client = make_client(canonical_decode=True, n_ctx_seq=512,
                         load={"canonical_decode": True, "speculative_draft": 4})[0]
    r = client.post("/v1/completions", json={"model": "s", "prompt": "abcabcabcabc" * 6, "max_tokens": 40,
                                             "temperature": 0})
    assert r.status_code == 200
    text = client.get("/metrics").text
    drafted = [line for line in text.splitlines()
               if line.startswith('kvllama_speculative_drafted_tokens_total{model="s"}')]
    assert drafted and float(drafted[0].split()[-1]) > 0
    assert 'kvllama_speculative_accepted_tokens_total{model="s"}' in text
