"""Ollama routes over the stub engine: shapes, NDJSON streams, options, errors, disconnects."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import httpx
import ollama
import pytest

from kvllama.errors import DecodeTimeoutError
from kvllama.events import (
    DoneEvent,
    ErrorEvent,
    Stats,
    TextEvent,
    ThinkingEndEvent,
    ThinkingEvent,
    ToolCallEndEvent,
    ToolCallEvent,
)
from kvllama.request import GenerationRequest
from kvllama.server import ServerConfig, ServerThread, create_app
from kvllama.server.grammar import JSON_OBJECT_GRAMMAR
from kvllama.server.ollama.rendering import human_number

TIMINGS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
           "eval_duration")


def gen(prompt: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": "s", "prompt": prompt, "stream": False, "options": {"num_predict": 8, "temperature": 0},
            **extra}


def chat(content: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": "s", "messages": [{"role": "user", "content": content}], "stream": False,
            "options": {"num_predict": 8, "temperature": 0}, **extra}


def lines(r: httpx.Response) -> list[dict[str, Any]]:
    assert r.headers["content-type"].startswith("application/x-ndjson"), r.headers["content-type"]
    assert r.text.endswith("\n")
    return [json.loads(line) for line in r.text.splitlines()]


def test_generate_body_has_ollama_shape(client):
    r = client.post("/api/generate", json=gen())
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["model"] == "s" and body["done"] is True and body["done_reason"] == "length"
    assert len(body["response"]) == 8 and body["eval_count"] == 8
    assert body["created_at"].endswith("Z") and "T" in body["created_at"]
    assert all(isinstance(body[k], int) and body[k] >= 0 for k in TIMINGS)
    assert body["total_duration"] >= body["eval_duration"] and body["prompt_eval_count"] > 0
    # context: the prompt tokens then the reply's, ready to be sent back
    assert len(body["context"]) == body["prompt_eval_count"] + 8


def test_generate_streams_by_default_and_adds_up_to_the_whole_reply(client):
    whole = client.post("/api/generate", json=gen())
    r = client.post("/api/generate", json={k: v for k, v in gen().items() if k != "stream"})
    assert r.status_code == 200
    chunks = lines(r)
    assert all(c["done"] is False and c["model"] == "s" for c in chunks[:-1]) and len(chunks) > 2
    assert all(set(c) == {"model", "created_at", "response", "done"} for c in chunks[:-1])
    last = chunks[-1]
    assert last["done"] is True and last["response"] == "" and last["done_reason"] == "length"
    assert all(k in last for k in TIMINGS)
    assert "".join(c["response"] for c in chunks) == whole.json()["response"]
    assert last["context"] == whole.json()["context"]


def test_generate_templates_the_prompt_unless_raw(scripted):
    s = scripted([TextEvent("ok"), done()])
    assert s.client.post("/api/generate", json=gen("Hi", system="Be terse.")).status_code == 200
    prompt = s.prompt_text()
    assert "Be terse." in prompt and "User: Hi" in prompt and prompt.endswith("Assistant:")
    # The plain template's turn boundary, added when the engine renders the conversation.
    assert "\nUser:" in s.engine.resolve_request("s", s.calls[-1]).sampling.stop
    assert s.client.post("/api/generate", json=gen("Hi", system="Be terse.", raw=True)).status_code == 200
    assert s.calls[-1].prompt == "Hi" and s.calls[-1].sampling.stop == ()
    assert s.engine.resolve_request("s", s.calls[-1]).sampling.stop == ()


def test_generate_continues_a_context(client):
    first = client.post("/api/generate", json=gen("one")).json()
    second = client.post("/api/generate", json=gen("two", context=first["context"])).json()
    assert second["context"][: len(first["context"])] == first["context"]
    assert second["prompt_eval_count"] > len(first["context"])
    r = client.post("/api/generate", json=gen("two", context=[10**6]))
    assert r.status_code == 400 and "token" in r.json()["error"]


def test_options_become_engine_params(scripted):
    s = scripted([TextEvent("ok"), done()])
    options = {"temperature": 0.3, "top_k": 7, "top_p": 0.5, "min_p": 0.1, "seed": 42, "num_predict": 5,
               "stop": ["END"], "repeat_penalty": 1.2, "repeat_last_n": 32, "presence_penalty": 0.5,
               "frequency_penalty": 0.25, "num_ctx": 99999, "mirostat": 2, "num_gpu": 1}
    assert s.client.post("/api/generate", json=gen(options=options, raw=True)).status_code == 200
    assert s.calls[-1] == GenerationRequest.build(
        "hello", max_tokens=5, stop=["END"], seed=42, temperature=0.3, top_p=0.5, top_k=7, min_p=0.1,
        repetition_penalty=1.2, penalty_last_n=32, frequency_penalty=0.25, presence_penalty=0.5)


@pytest.mark.parametrize(("num_predict", "expected"), [(None, 4096), (-1, 4096), (-2, 4096), (0, 4096),
                                                       (10**9, 4096), (12, 12)])
def test_num_predict_is_capped_by_the_server_limit(scripted, num_predict, expected):
    s = scripted([TextEvent("ok"), done()])
    options = {} if num_predict is None else {"num_predict": num_predict}
    assert s.client.post("/api/chat", json=chat(options=options)).status_code == 200
    assert s.calls[-1].sampling.max_tokens == expected


def test_negative_seed_is_random_and_think_becomes_thinking(scripted):
    s = scripted([TextEvent("ok"), done()])
    s.client.post("/api/chat", json=chat(options={"seed": -1}, think="high"))
    assert s.calls[-1].sampling.seed is None and s.calls[-1].sampling.thinking is True
    s.client.post("/api/chat", json=chat(think=False))
    assert s.calls[-1].sampling.thinking is False
    s.client.post("/api/chat", json=chat())
    assert s.calls[-1].sampling.thinking is None


def test_format_json_and_schema_become_grammars(scripted):
    s = scripted([TextEvent("{}"), done()])
    s.client.post("/api/chat", json=chat(format="json"))
    assert s.calls[-1].sampling.grammar == JSON_OBJECT_GRAMMAR
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    s.client.post("/api/generate", json=gen(format=schema))
    grammar = s.calls[-1].sampling.grammar
    assert grammar != JSON_OBJECT_GRAMMAR and '"age"' in grammar.replace('\\"', '"')
    s.client.post("/api/generate", json=gen(format=""))
    assert s.calls[-1].sampling.grammar is None
    r = s.client.post("/api/chat", json=chat(format="yaml"))
    assert r.status_code == 400 and 'format must be "json"' in r.json()["error"]


def test_chat_body_and_stream_agree(client):
    whole = client.post("/api/chat", json=chat()).json()
    assert whole["message"]["role"] == "assistant" and len(whole["message"]["content"]) == 8
    assert whole["done"] is True and whole["eval_count"] == 8 and "context" not in whole
    chunks = lines(client.post("/api/chat", json=chat(stream=True)))
    assert all(c["message"]["role"] == "assistant" and c["done"] is False for c in chunks[:-1])
    assert "".join(c["message"]["content"] for c in chunks) == whole["message"]["content"]
    assert chunks[-1]["done"] is True and chunks[-1]["done_reason"] == whole["done_reason"]


def test_chat_renders_system_tools_and_tool_turns(scripted):
    s = scripted([TextEvent("ok"), done()])
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                {"role": "tool", "content": "sunny", "tool_name": "get_weather"}]
    tool = {"type": "function", "function": {"name": "get_weather", "description": "", "parameters": {}}}
    r = s.client.post("/api/chat", json=chat(messages=messages, tools=[tool]))
    assert r.status_code == 200
    prompt = s.prompt_text()
    assert "Be terse." in prompt and "Weather?" in prompt and "sunny" in prompt
    assert prompt.endswith("Assistant:")


CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
SCRIPT = [ThinkingEvent("Let me "), ThinkingEvent("think."), ThinkingEndEvent("Let me think.", ""),
          TextEvent("Checking."), ToolCallEvent(CALL), ToolCallEndEvent(CALL, CALL.encode())]


def done(reason: str = "stop") -> DoneEvent:
    stats = Stats(prompt_tokens=10, generated_tokens=7, queue_seconds=0.0, prefill_seconds=0.1,
                  decode_seconds=0.2, time_to_first_token=0.1, tokens_per_second=20.0)
    return DoneEvent(finish_reason=reason, stats=stats, prompt_tokens=tuple(range(10)))  # type: ignore[arg-type]


def test_chat_carries_thinking_and_tool_calls_streamed_or_not(scripted):
    s = scripted([*SCRIPT, done()])
    message = s.client.post("/api/chat", json=chat()).json()["message"]
    assert message == {"role": "assistant", "content": "Checking.", "thinking": "Let me think.",
                       "tool_calls": [{"function": {"index": 0, "name": "get_weather",
                                                    "arguments": {"city": "Paris"}}}]}
    chunks = lines(s.client.post("/api/chat", json=chat(stream=True)))
    msgs = [c["message"] for c in chunks[:-1]]
    assert "".join(m.get("thinking", "") for m in msgs) == "Let me think."
    assert "".join(m["content"] for m in msgs) == "Checking."
    assert [m["tool_calls"] for m in msgs if "tool_calls" in m] == [message["tool_calls"]]
    assert chunks[-1]["eval_duration"] == 200_000_000 and chunks[-1]["prompt_eval_duration"] == 100_000_000


def test_generate_carries_thinking_and_text(scripted):
    s = scripted([*SCRIPT, TextEvent(" Done."), done()])
    body = s.client.post("/api/generate", json=gen()).json()
    assert body["thinking"] == "Let me think." and body["response"] == "Checking. Done."
    chunks = lines(s.client.post("/api/generate", json=gen(stream=True)))
    assert "".join(c.get("thinking", "") for c in chunks) == "Let me think."
    assert "".join(c["response"] for c in chunks) == "Checking. Done."


def test_the_ollama_client_reads_streams_and_bodies(scripted):
    s = scripted([*SCRIPT, done()])
    with ServerThread(s.client.app) as url, ollama.Client(host=url) as client:
        whole = client.chat(model="s", messages=chat()["messages"])
        parts = list(client.chat(model="s", messages=chat()["messages"], stream=True))
    assert whole.message.content == "Checking." and whole.message.thinking == "Let me think."
    (call,) = whole.message.tool_calls or []
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris"}
    assert "".join(p.message.content or "" for p in parts) == "Checking." and parts[-1].done


def test_empty_prompt_or_messages_only_load_the_model(scripted):
    s = scripted([TextEvent("ok"), done()])
    body = s.client.post("/api/generate", json={"model": "s"}).json()
    assert body["done"] is True and body["done_reason"] == "load" and body["response"] == ""
    body = s.client.post("/api/chat", json={"model": "s", "messages": []}).json()
    assert body["done_reason"] == "load" and body["message"] == {"role": "assistant", "content": ""}
    assert s.calls == []


def test_latest_tag_names_the_served_model_and_replies_echo_the_name(client):
    assert client.post("/api/generate", json=gen(model="s:latest")).json()["model"] == "s:latest"
    assert client.post("/api/chat", json=chat(model="s")).json()["model"] == "s"
    r = client.post("/api/chat", json=chat(model="s:7b"))
    assert r.status_code == 404 and r.json() == {"error": "model 's:7b' not found; this server serves s"}


def test_tags_ps_show_version(client):
    (tag,) = client.get("/api/tags").json()["models"]
    assert tag["name"] == tag["model"] == "s:latest" and len(tag["digest"]) == 64
    assert tag["details"]["format"] == "gguf" and tag["details"]["family"] == "stub"
    assert {"parameter_size", "quantization_level"} <= set(tag["details"]) and "modified_at" in tag
    (running,) = client.get("/api/ps").json()["models"]
    assert running["name"] == "s:latest" and running["context_length"] == 256 and running["size_vram"] == 0
    for body in ({"model": "s"}, {"model": "s:latest"}, {"name": "s"}):
        show = client.post("/api/show", json=body).json()
        assert show["details"] == tag["details"] and show["model_info"]["stub.context_length"] == 256
        assert show["model_info"]["general.architecture"] == "stub" and "completion" in show["capabilities"]
    assert client.post("/api/show", json={"model": "x"}).status_code == 404
    assert client.get("/api/version").json()["version"].count(".") == 2


def test_parameter_size_reads_like_ollamas():
    assert [human_number(n) for n in (268_098_176, 7_615_616_512, 8_000_000_000, 500_000, 12)] == [
        "268.10M", "7.6B", "8B", "500K", "12"]


def test_embed_normalises_and_truncates(client):
    body = client.post("/api/embed", json={"model": "s", "input": ["a", "b"]}).json()
    assert body["model"] == "s" and len(body["embeddings"]) == 2 and body["prompt_eval_count"] > 0
    for vector in body["embeddings"]:
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-9)
    raw = client.post("/v1/embeddings", json={"model": "s", "input": ["a", "b"]}).json()["data"]
    assert body["embeddings"][0] != raw[0]["embedding"]  # normalised, unlike OpenAI's
    one = client.post("/api/embed", json={"model": "s", "input": "a", "dimensions": 3}).json()
    assert len(one["embeddings"][0]) == 3
    assert math.isclose(sum(x * x for x in one["embeddings"][0]), 1.0, rel_tol=1e-9)
    assert client.post("/api/embed", json={"model": "s", "input": []}).json()["embeddings"] == []
    legacy = client.post("/api/embeddings", json={"model": "s", "prompt": "a"}).json()
    assert legacy["embedding"] == raw[0]["embedding"]


@pytest.mark.parametrize(("path", "body", "needle"), [
    ("/api/generate", None, "empty"),
    ("/api/generate", {"prompt": 3}, "prompt"),
    ("/api/generate", {"prompt": "x", "suffix": "y"}, "suffix"),
    ("/api/generate", {"prompt": "x", "images": ["aGk="]}, "images"),
    ("/api/chat", {"messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}, "images"),
    ("/api/chat", {"messages": [{"role": "wizard", "content": "x"}]}, "role"),
    ("/api/chat", {"messages": "hi"}, "messages"),
    ("/api/generate", {"prompt": "x", "options": {"temperature": 500}}, "temperature"),
    ("/api/generate", {"prompt": "x", "options": "hot"}, "options"),
    ("/api/embed", {"input": [1, 2]}, "input"),
    ("/api/embed", {"input": ["a", ""]}, "texts"),
    ("/api/show", [1], "object"),
])
def test_bad_requests_are_400_in_ollamas_shape(client, path, body, needle):
    r = client.post(path, json=body) if body is not None else client.post(path, content=b"")
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error"} and needle in r.json()["error"], r.json()


def test_auth_unknown_route_and_overload_use_ollamas_shape(make_client):
    client, _, _ = make_client(ServerConfig(api_key="k", max_queue=0))
    r = client.post("/api/chat", json=chat())
    assert r.status_code == 401 and set(r.json()) == {"error"}
    auth = {"Authorization": "Bearer k"}
    r = client.get("/api/nope", headers=auth)
    assert r.status_code == 404 and r.json() == {"error": "no route GET /api/nope"}
    r = client.post("/api/chat", json=chat(), headers=auth)  # max_queue=0: always overloaded
    assert r.status_code == 503 and "overloaded" in r.json()["error"]
    # the other families keep their shapes
    assert "message" in client.post("/v1/chat/completions", json={}, headers=auth).json()["error"]


STALLED = DecodeTimeoutError("decode stalled")


def test_an_error_after_the_stream_started_is_an_error_line(scripted):
    s = scripted([TextEvent("partial"), ErrorEvent(STALLED)])
    chunks = lines(s.client.post("/api/chat", json=chat(stream=True)))
    assert chunks[0]["message"]["content"] == "partial"
    assert chunks[-1] == {"error": str(STALLED)}
    with ServerThread(s.client.app) as url, ollama.Client(host=url) as client,\
            pytest.raises(ollama.ResponseError, match="decode stalled"):
        list(client.chat(model="s", messages=chat()["messages"], stream=True))


def test_an_error_before_the_first_chunk_is_a_status(scripted):
    s = scripted([ErrorEvent(STALLED)])
    r = s.client.post("/api/generate", json=gen(stream=True))
    assert r.status_code == 503 and r.json() == {"error": str(STALLED)}


LONG = 3000  # tokens; at 5 ms per decode a request that is not cancelled runs 15 s


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_leaves_cancels_its_request(stub_engine, stream):
    engine, backend = stub_engine(n_seq_max=1, n_ctx_seq=8192, decode_delay=0.005)
    body = chat(stream=stream, options={"num_predict": LONG, "temperature": 0})
    with ServerThread(create_app(engine)) as url, httpx.Client(base_url=url, timeout=10) as http:
        if stream:
            with http.stream("POST", "/api/chat", json=body) as r:
                assert r.status_code == 200
                for n, _ in enumerate(r.iter_lines()):
                    if n >= 5:
                        break
        else:
            with pytest.raises(httpx.ReadTimeout):
                http.post("/api/chat", json=body, timeout=0.5)
        deadline = time.monotonic() + 5
        while engine.in_flight() or engine.pending():
            assert time.monotonic() < deadline, "the abandoned request still holds the model"
            time.sleep(0.01)
        r = http.post("/api/chat", json=chat(options={"num_predict": 4}))
        assert r.status_code == 200 and r.json()["eval_count"] == 4
    assert sum(len(rows) for rows in backend.decode_log) < LONG // 2
