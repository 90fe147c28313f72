"""Model management over HTTP on the stub backend: router endpoints, listings, Ollama's load/unload."""

from __future__ import annotations

import time

import pytest
from starlette.testclient import TestClient

import kvllama
from kvllama.backend.stub import StubBackend, StubConfig
from kvllama.server import ServerConfig, create_app


@pytest.fixture
def two(tmp_path):
    engine = kvllama.Engine(cache=None, backend_factory=lambda _p, _o: StubBackend(StubConfig()),
                            keep_alive=-1)
    for name in ("a", "b"):
        (tmp_path / f"{name}.gguf").write_bytes(b"x" * 100)
        engine.register_model(name, str(tmp_path / f"{name}.gguf"))
    with TestClient(create_app(engine, ServerConfig())) as client:
        yield client, engine
    engine.close()


def status_of(client: TestClient) -> dict[str, str]:
    return {m["id"]: m["status"]["value"] for m in client.get("/models").json()["data"]}


def test_router_endpoints_list_load_and_unload(two):
    client, engine = two
    assert status_of(client) == {"a": "unloaded", "b": "unloaded"}
    assert client.post("/models/load", json={"model": "a"}).json()["success"] is True
    assert status_of(client) == {"a": "loaded", "b": "unloaded"}
    assert client.post("/models/unload", json={"model": "a"}).status_code == 200
    assert status_of(client) == {"a": "unloaded", "b": "unloaded"}
    assert client.post("/models/load", json={"model": "zzz"}).status_code == 404
    engine.touch_model("b")
    engine.models.acquire("b")  # a request of "b" in flight
    r = client.post("/models/unload", json={"model": "b"})
    assert r.status_code == 409 and "in flight" in r.text
    engine.models.release("b")


def test_listings_never_load_a_model_and_requests_load_on_demand(two):
    client, engine = two
    assert {m["id"] for m in client.get("/v1/models").json()["data"]} == {"a", "b"}
    assert [m["name"] for m in client.get("/api/tags").json()["models"]] == ["a:latest", "b:latest"]
    assert client.get("/api/ps").json()["models"] == [] and client.get("/health").status_code == 200
    assert {m["loaded"] for m in client.get("/status").json()["models"]} == {False}
    assert engine.list_models() == []
    body = {"model": "b", "prompt": "hi", "max_tokens": 2, "keep_alive": "1h"}
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200
    (ps,) = client.get("/api/ps").json()["models"]
    assert ps["name"] == "b:latest" and not ps["expires_at"].startswith("2318")


def test_ollama_empty_prompt_loads_and_keep_alive_zero_unloads(two):
    client, engine = two
    r = client.post("/api/generate", json={"model": "a", "keep_alive": "10m"})
    assert r.json()["done_reason"] == "load" and [i.id for i in engine.list_models()] == ["a"]
    r = client.post("/api/chat", json={"model": "a", "messages": [], "keep_alive": 0})
    assert r.json()["done_reason"] == "unload" and engine.list_models() == []
    client.post("/api/chat", json={"model": "b", "messages": [{"role": "user", "content": "hi"}],
                                   "stream": False, "keep_alive": 0, "options": {"num_predict": 2}})
    deadline = time.monotonic() + 10
    while engine.list_models():  # unloaded by the keep-alive thread right after the request
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert client.post("/api/generate", json={"model": "a", "keep_alive": "soon"}).status_code == 400
