"""Probes and operator views over the stub engine: tokenize, detokenize, cache lookup, sessions, status.

The stub tokenizes text as its UTF-8 bytes (BOS = 256), so every expected
token list here can be written down.
"""

from __future__ import annotations

import re

import pytest

from kvllama.errors import SessionBusyError
from kvllama.events import CacheDelta, Stats
from kvllama.kvcache import CacheConfig
from kvllama.results import CompletionResult
from kvllama.server import ServerConfig
from kvllama.server.admin.status import cache_status, meminfo, process_rss, slots
from kvllama.server.metrics import RECENT_REQUESTS, RecentRequests
from kvllama.server.runner import client_url, listening_banner

BOS = 256


def error_of(r, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    return r.json()["error"]


# --- /tokenize, /detokenize -------------------------------------------------------


def test_tokenize_text_in_llama_server_and_vllm_shape(client):
    assert client.post("/tokenize", json={"content": "hi"}).json() == {
        "tokens": [BOS, 104, 105], "count": 3, "max_model_len": 256}
    no_bos = client.post("/tokenize", json={"content": "hi", "add_special": False}).json()
    assert no_bos["tokens"] == [104, 105]


def test_tokenize_with_pieces(client):
    body = client.post("/tokenize", json={"model": "s", "content": "hé", "with_pieces": True}).json()
    # é is two bytes, neither valid UTF-8 alone: llama-server sends such pieces as byte lists.
    assert body["tokens"] == [{"id": BOS, "piece": ""}, {"id": 104, "piece": "h"},
                              {"id": 0xC3, "piece": [0xC3]}, {"id": 0xA9, "piece": [0xA9]}]
    assert body["count"] == 4


def test_tokenize_messages_counts_what_a_chat_completion_queues(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    tokens = client.post("/tokenize", json={"messages": messages}).json()["tokens"]
    usage = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 1}).json()["usage"]
    assert len(tokens) == usage["prompt_tokens"]
    assert tokens[0] == BOS
    text = client.post("/detokenize", json={"tokens": tokens}).json()["content"]
    assert "Be brief." in text and "Hello there" in text
    no_bos = client.post("/tokenize", json={"messages": messages, "add_special": False}).json()["tokens"]
    assert no_bos == tokens[1:]


@pytest.mark.parametrize("body", [
    {}, {"content": "a", "messages": [{"role": "user", "content": "b"}]}, {"messages": []},
    {"content": 5}, {"content": "a", "with_pieces": "maybe"}, {"messages": [{"content": "no role"}]},
])
def test_tokenize_refuses_bad_bodies(client, body):
    error_of(client.post("/tokenize", json=body), 400)


def test_tokenize_unknown_model_is_404(client):
    assert error_of(client.post("/tokenize", json={"model": "nope", "content": "a"}), 404)["code"] == (
        "model_not_found")


def test_detokenize_round_trip_and_bad_ids(client):
    tokens = client.post("/tokenize", json={"content": "Paris, ça va", "add_special": False}).json()["tokens"]
    assert client.post("/detokenize", json={"tokens": tokens}).json() == {"content": "Paris, ça va"}
    assert client.post("/detokenize", json={"tokens": []}).json() == {"content": ""}
    for bad in ([-1], [10**9], [1, 2, 99999]):
        err = error_of(client.post("/detokenize", json={"tokens": bad}), 400)
        assert err["param"] == "tokens" and "not a token id" in err["message"]
    for bad in (["a"], [1.5], [True], "12", None):
        error_of(client.post("/detokenize", json={"tokens": bad}), 400)
    error_of(client.post("/detokenize", json={}), 400)


# --- /cache/lookup ----------------------------------------------------------------


def test_cache_lookup_without_a_cache_counts_tokens(client):
    assert client.post("/cache/lookup", json={"prompt": "hello"}).json() == {
        "model": "s", "tokens": 6, "cached_tokens": 0}
    assert client.post("/cache/lookup", json={"tokens": [BOS, 1, 2]}).json()["tokens"] == 3
    chat = client.post("/cache/lookup", json={"messages": [{"role": "user", "content": "hi"}]}).json()
    assert chat["tokens"] == client.post("/tokenize", json={"messages": [{"role": "user", "content": "hi"}]}
                                         ).json()["count"]


@pytest.mark.parametrize("body", [
    {}, {"prompt": "a", "tokens": [1]}, {"prompt": ""}, {"tokens": []}, {"tokens": [10**9]},
    {"prompt": "a", "cache_salt": "bad salt!"}, {"messages": []},
])
def test_cache_lookup_refuses_bad_bodies(client, body):
    error_of(client.post("/cache/lookup", json=body), 400)


def test_cache_lookup_finds_a_saved_prompt_per_salt(make_client):
    cache = CacheConfig(shm_dir=None, disk_dir=None)
    client, engine, _ = make_client(cache=cache, n_ctx_seq=512, n_batch=256)
    prompt = "x" * 200
    assert client.post("/cache/lookup", json={"prompt": prompt}).json()["cached_tokens"] == 0
    r = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 2, "cache_salt": "tenant-a"})
    assert r.status_code == 200, r.text
    assert engine.cache.flush(10)
    salted = client.post("/cache/lookup", json={"prompt": prompt, "cache_salt": "tenant-a"}).json()
    assert salted["tokens"] == 201 and 0 < salted["cached_tokens"] <= 201
    assert client.post("/cache/lookup", json={"prompt": prompt}).json()["cached_tokens"] == 0
    other = client.post("/cache/lookup", json={"prompt": prompt, "cache_salt": "tenant-b"}).json()
    assert other["cached_tokens"] == 0
    # The cache shows on /status too.
    cache = client.get("/status").json()["cache"]
    assert cache["enabled"] and cache["tiers"]["ram"]["rows"] >= 1 and cache["bytes"] > 0


# --- DELETE /sessions ---------------------------------------------------------------


def park(client, session: str, salt: str | None = None) -> None:
    body = {"prompt": "one and more words", "max_tokens": 2, "session_id": session}
    if salt:
        body["cache_salt"] = salt
    assert client.post("/v1/completions", json=body).status_code == 200


def test_end_session(client):
    park(client, "conv-1")
    model = client.get("/status").json()["models"][0]
    assert model["slots"]["sessions"] == 1 and model["slots"]["free"] == 3
    r = client.delete("/sessions/conv-1")
    assert r.status_code == 200 and r.json() == {"id": "conv-1", "object": "session.deleted", "deleted": True}
    assert client.get("/status").json()["models"][0]["slots"]["sessions"] == 0
    err = error_of(client.delete("/sessions/conv-1"), 404)
    assert err["code"] == "session_not_found" and err["param"] == "session_id"


def test_end_session_honours_the_tenant(client):
    park(client, "conv/2", salt="t1")  # a session id may hold a slash
    error_of(client.delete("/sessions/conv/2"), 404)
    error_of(client.delete("/sessions/conv/2", params={"cache_salt": "t2"}), 404)
    assert client.delete("/sessions/conv/2", params={"cache_salt": "t1", "model": "s"}).status_code == 200
    park(client, "conv-3", salt="t1")
    r = client.request("DELETE", "/sessions/conv-3", json={"cache_salt": "t1"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(("path", "kwargs"), [
    ("/sessions/" + "x" * 300, {}),
    ("/sessions/a", {"params": {"cache_salt": "no spaces"}}),
    ("/sessions/a", {"params": {"cache_salt": "t1"}, "json": {"cache_salt": "t2"}}),
    ("/sessions/a", {"content": b"[1]", "headers": {"content-type": "application/json"}}),
    ("/sessions/a", {"content": b"{nope", "headers": {"content-type": "application/json"}}),
])
def test_end_session_refuses_bad_input(client, path, kwargs):
    error_of(client.request("DELETE", path, **kwargs), 400)


def test_end_session_unknown_model_is_404(client):
    assert error_of(client.delete("/sessions/a", params={"model": "nope"}), 404)["code"] == "model_not_found"


def test_busy_session_is_409(make_client):
    client, engine, _ = make_client()

    def busy(session_id, model_id=None, cache_salt=None):
        raise SessionBusyError(session_id)

    engine.end_session = busy
    err = error_of(client.delete("/sessions/conv-1"), 409)
    assert err["param"] == "session_id"


# --- /status, /status/requests ------------------------------------------------------


def test_status_reports_models_slots_memory_and_cache(client):
    s = client.get("/status").json()
    assert s["object"] == "status" and s["version"] and s["uptime_seconds"] >= 0 and s["auth"] is False
    (model,) = s["models"]
    assert model["name"] == "s" and model["healthy"] is True and model["phase"] == "idle"
    assert model["pending"] == 0 and model["in_flight"] == 0
    assert model["slots"] == {"total": 4, "running": 0, "sessions": 0, "kept": 0, "free": 4}
    assert model["n_ctx_seq"] == 256
    mem = s["memory"]
    assert mem["process_rss_bytes"] > 0 and mem["system_total_bytes"] >= mem["system_available_bytes"] > 0
    assert mem["devices"][0]["type"] == "cpu"
    assert s["cache"]["enabled"] is False
    assert s["recent_requests"] == [] and s["requests_finished"] == 0


def test_finished_requests_are_listed_newest_first(client):
    client.post("/v1/completions", json={"prompt": "one", "max_tokens": 3, "temperature": 0})
    chat = {"messages": [{"role": "user", "content": "two"}], "max_tokens": 2}
    client.post("/v1/chat/completions", json=chat)
    data = client.get("/status/requests").json()
    assert data["total"] == 2
    newest, oldest = data["data"]
    assert newest["n"] == 2 and oldest["n"] == 1
    assert oldest["model"] == "s" and oldest["prompt_tokens"] == 4 and oldest["generated_tokens"] == 3
    assert oldest["finish_reason"] == "length" and oldest["cache_hit_kind"] == "cold"
    assert oldest["ttft_ms"] is not None and oldest["ttft_ms"] >= 0 and oldest["seconds"] >= 0
    assert client.get("/status/requests", params={"limit": 1}).json()["data"] == [newest]
    assert client.get("/status").json()["recent_requests"][0]["n"] == 2


@pytest.mark.parametrize("limit", ["0", str(RECENT_REQUESTS + 1), "x", "-3"])
def test_status_requests_limit_is_checked(client, limit):
    error_of(client.get("/status/requests", params={"limit": limit}), 400)


def _result(n: int) -> CompletionResult:
    return CompletionResult(
        reply="", generated_tokens=(1,) * n, context_tokens=(), committed_tokens=0, finish_reason="stop",
        stop_sequence=None, finish_key=None, cache_hit_kind="cold", cache_delta=CacheDelta(),
        stats=Stats(prompt_tokens=n, generated_tokens=n, queue_seconds=0, prefill_seconds=0, decode_seconds=0,
                    time_to_first_token=None, tokens_per_second=0.0))


def test_recent_requests_ring_is_bounded():
    ring = RecentRequests(size=5)
    for i in range(1, 8):
        ring.add("m", _result(i), ttft=None if i == 1 else 0.25, seconds=1.0)
    items = ring.snapshot()
    assert [r["n"] for r in items] == [7, 6, 5, 4, 3] and ring.count == 7
    assert items[0]["prompt_tokens"] == 7 and items[0]["ttft_ms"] == 250.0
    assert ring.snapshot(2) == items[:2]


def test_slots_and_cache_summary():
    assert slots(4, 1, 2, 1) == {"total": 4, "running": 1, "sessions": 2, "kept": 1, "free": 1}
    assert slots(2, 2, 1, 0)["free"] == 0
    summary = cache_status({"lookups": 4, "hits": {"exact": 1, "partial": 2}, "misses": 1,
                            "tiers": {"ram": {"bytes": 10, "rows": 1, "budget": 100},
                                      "shm": {"bytes": 5, "rows": 2, "budget": 100}}})
    assert summary["hit_rate"] == 0.75 and summary["hits"] == 3
    assert summary["rows"] == 3 and summary["bytes"] == 15
    assert cache_status({})["enabled"] is False


def test_meminfo_and_rss(tmp_path):
    f = tmp_path / "meminfo"
    f.write_text("MemTotal:       16384 kB\nMemAvailable:    8192 kB\nHugePages_Total:       0\n")
    assert meminfo(str(f)) == {"MemTotal": 16384 * 1024, "MemAvailable": 8192 * 1024, "HugePages_Total": 0}
    assert meminfo(str(tmp_path / "missing")) == {}
    rss = process_rss()
    assert rss is not None and rss > 1 << 20
    assert process_rss(str(tmp_path / "missing")) is None


# --- the page and the key ------------------------------------------------------------


def test_status_page_is_self_contained_html(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "<script>" in page and 'fetch("status"' in page
    # Nothing loaded from elsewhere: no external scripts, styles, fonts or images.
    assert not re.search(r"<script[^>]*\ssrc=|<link[^>]*stylesheet|@import|url\(|https?://", page)
    assert "/" not in client.get("/openapi.json").json()["paths"]


def test_with_a_key_only_the_page_and_health_are_public(make_client):
    client, _, _ = make_client(ServerConfig(api_key="sk-admin"))
    assert client.get("/").status_code == 200
    assert client.get("/health").status_code == 200
    for method, path in [("GET", "/status"), ("GET", "/status/requests"), ("POST", "/tokenize"),
                         ("POST", "/detokenize"), ("POST", "/cache/lookup"), ("DELETE", "/sessions/a")]:
        error_of(client.request(method, path), 401)
    r = client.get("/status", headers={"Authorization": "Bearer sk-admin"})
    assert r.status_code == 200 and r.json()["auth"] is True


# --- kvllama serve's banner -------------------------------------------------------------


def test_listening_banner_never_prints_the_key():
    text = listening_banner("http://127.0.0.1:8000", {"default": "gemma (/m.gguf)"}, api_key=True,
                            bind="0.0.0.0")
    assert "http://127.0.0.1:8000 (bound to 0.0.0.0)" in text and "'default': gemma (/m.gguf)" in text
    assert 'Authorization: Bearer $KVLLAMA_API_KEY' in text and "/#key=" in text
    curl = next(line for line in text.splitlines() if "curl " in line)
    assert '"model": "default"' in curl and "/v1/chat/completions" in curl
    plain = listening_banner("http://127.0.0.1:8000", {"it's": "m"}, api_key=False)
    assert "Authorization" not in plain and "'\"'\"'" in plain  # a quote in the name stays shell-safe


def test_client_url():
    assert client_url("0.0.0.0", 80) == "http://127.0.0.1:80"
    assert client_url("::", 80) == "http://[::1]:80"
    assert client_url("fe80::1", 9) == "http://[fe80::1]:9"
    assert client_url("localhost", 8000) == "http://localhost:8000"
