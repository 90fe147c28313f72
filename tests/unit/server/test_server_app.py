"""App-wide behaviour over the stub engine: auth, body limit, error shapes, capacity, health, metrics."""

from __future__ import annotations

from typing import Any

import pytest

from kvllama.server import ServerConfig

JSON = {"content-type": "application/json"}
ROUTES = [("/v1/chat/completions", "openai"), ("/v1/messages", "anthropic")]


def body(content: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": "s", "messages": [{"role": "user", "content": content}], "temperature": 0,
            "max_tokens": 4, **extra}


def error_type(response: Any, family: str) -> str:
    data = response.json()
    if family == "anthropic":
        assert data["type"] == "error" and set(data["error"]) == {"type", "message"}
    else:
        assert set(data["error"]) == {"message", "type", "param", "code"}
    return data["error"]["type"]


def test_api_key_is_required_everywhere_but_health(make_client):
    client = make_client(ServerConfig(api_key="sekret"))[0]
    for path, family in ROUTES:
        r = client.post(path, json=body())
        assert r.status_code == 401 and error_type(r, family) == "authentication_error"
        assert client.post(path, json=body(), headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.post(path, json=body(), headers={"Authorization": "Bearer sekret"}).status_code == 200
        assert client.post(path, json=body(), headers={"x-api-key": "sekret"}).status_code == 200
    assert client.get("/v1/models").status_code == 401
    assert client.get("/metrics").status_code == 401
    assert client.get("/health").json() == {"status": "ok", "models": ["s"], "unhealthy": []}
    text = client.get("/metrics", headers={"x-api-key": "sekret"}).text
    assert 'kvllama_http_requests_total{method="GET",route="/v1/models",status="401"} 1.0' in text


@pytest.mark.parametrize(("path", "family"), ROUTES)
def test_oversized_bodies_are_413_declared_or_chunked(make_client, path, family):
    client = make_client(ServerConfig(max_body_bytes=2000))[0]
    r = client.post(path, json=body("x" * 3000))
    assert r.status_code == 413
    expected = "request_too_large" if family == "anthropic" else "invalid_request_error"
    assert error_type(r, family) == expected
    assert "2000" in r.json()["error"]["message"]
    chunked = client.post(path, content=iter([b'{"model": "s", "x": "', b"y" * 3000, b'"}']))
    assert chunked.status_code == 413
    assert client.post(path, json=body()).status_code == 200


@pytest.mark.parametrize(("path", "family"), ROUTES)
def test_bad_input_is_a_4xx_json_error_and_the_server_keeps_serving(make_client, path, family):
    client = make_client(n_ctx_seq=256)[0]
    cases = [
        (client.post(path, content=b'{"model": "s", "messages": [', headers=JSON), 400, "not valid JSON"),
        (client.post(path, content=b""), 400, "empty"),
        (client.post(path, json=[1, 2]), 400, "JSON object"),
        (client.post(path, json=body(temperature="hot")), 400, "temperature"),
        (client.post(path, json=body(messages="hi")), 400, "messages"),
        (client.post(path, json=body(model="nope")), 404, "nope"),
        (client.post(path, json=body(temperature=7.5 if family == "openai" else -1)), 400, "temperature"),
    ]
    for response, status, needle in cases:
        assert response.status_code == status, response.text
        error_type(response, family)
        assert needle in response.json()["error"]["message"]
    assert client.post(path, json=body()).status_code == 200


@pytest.mark.parametrize(("path", "family"), ROUTES)
def test_prompt_over_the_context_names_both_lengths(make_client, path, family):
    client = make_client(n_ctx_seq=256)[0]
    r = client.post(path, json=body("w" * 400))
    assert r.status_code == 400 and error_type(r, family) == "invalid_request_error"
    message = r.json()["error"]["message"]
    assert "256" in message and "prompt is 4" in message
    if family == "openai":
        assert r.json()["error"]["code"] == "context_length_exceeded"
    assert client.post(path, json=body()).status_code == 200


@pytest.mark.parametrize(("path", "family", "status"), [(*ROUTES[0], 429), (*ROUTES[1], 529)])
def test_full_queue_is_refused_with_the_familys_overload_status(make_client, path, family, status):
    client, engine, _ = make_client(ServerConfig(max_queue=1), n_seq_max=1, n_ctx_seq=4096,
                                    decode_delay=0.005)
    busy = [engine.infer("s", "long", max_tokens=3000) for _ in range(2)]
    try:
        r = client.post(path, json=body())
        assert r.status_code == status
        assert error_type(r, family) == ("overloaded_error" if family == "anthropic" else "rate_limit_error")
        assert "queued" in r.json()["error"]["message"]
    finally:
        for stream in busy:
            stream.cancel()
            stream.result()
    assert client.post(path, json=body()).status_code == 200


def test_errors_during_admission_keep_their_status_when_streaming(make_client):
    client = make_client(poison_token=ord("Z"))[0]
    for stream in (False, True):
        r = client.post("/v1/completions", json={"model": "s", "prompt": "a", "grammar": "no rules",
                                                 "stream": stream})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_grammar"
        r = client.post("/v1/messages", json=body("ZZZ", stream=stream))
        assert r.status_code == 500 and r.json()["error"]["type"] == "api_error"


def test_unknown_routes_and_methods_answer_in_the_familys_shape(client):
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and "no route" in r.json()["error"]["message"]
    r = client.get("/v1/messages")
    assert r.status_code == 405 and r.json()["type"] == "error"


def test_metrics_count_requests_tokens_and_latency(make_client):
    client = make_client()[0]
    client.post("/v1/chat/completions", json=body())
    client.post("/v1/chat/completions", json=body(stream=True))
    client.post("/v1/messages", json=body(model="nope"))
    text = client.get("/metrics").text
    assert 'kvllama_http_requests_total{method="POST",route="/v1/chat/completions",status="200"} 2.0' in text
    assert 'kvllama_http_requests_total{method="POST",route="/v1/messages",status="404"} 1.0' in text
    assert 'kvllama_generated_tokens_total{model="s"} 8.0' in text
    assert 'kvllama_requests_finished_total{model="s",reason="length"} 2.0' in text
    assert 'kvllama_time_to_first_token_seconds_count{model="s"} 2.0' in text
    assert 'kvllama_inter_token_latency_seconds_count{model="s"} 6.0' in text
    assert 'kvllama_queue_depth{model="s"} 0.0' in text and 'kvllama_in_flight{model="s"} 0.0' in text


def test_cache_metrics_hook_is_exported_and_cannot_break_metrics(make_client):
    values = {"hits_total": 3, "bytes": {"ram": 10, "disk": 20}}
    client = make_client(ServerConfig(cache_metrics_provider=lambda: values))[0]
    text = client.get("/metrics").text
    assert "kvllama_cache_hits_total 3.0" in text
    assert 'kvllama_cache_bytes{key="disk"} 20.0' in text and "# TYPE kvllama_cache_bytes gauge" in text

    def broken() -> dict[str, int]:
        raise RuntimeError("cache gone")

    client = make_client(ServerConfig(cache_metrics_provider=broken))[0]
    r = client.get("/metrics")
    assert r.status_code == 200 and "kvllama_http_requests_total" in r.text


def test_server_config_rejects_nonsense():
    with pytest.raises(ValueError, match="default_model"):
        ServerConfig(models={"a": "b"}, default_model="c")
    with pytest.raises(ValueError, match="max_queue"):
        ServerConfig(max_queue=-1)


@pytest.mark.parametrize(("path", "family"), ROUTES)
def test_an_unexpected_exception_is_a_logged_500_in_the_familys_shape(make_client, monkeypatch, path, family,
                                                                      caplog):
    client, engine, _ = make_client()

    def broken(*_args: Any, **_kwargs: Any) -> str:
        raise RuntimeError("template bug")

    monkeypatch.setattr(engine.text, "render_chat", broken)
    r = client.post(path, json=body())
    assert r.status_code == 500
    assert error_type(r, family) == ("api_error" if family == "anthropic" else "server_error")
    assert "template bug" not in r.text  # internals stay in the log
    assert "template bug" in caplog.text
    monkeypatch.undo()
    assert client.post(path, json=body()).status_code == 200
