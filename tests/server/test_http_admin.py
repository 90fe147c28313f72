"""The router probes and operator views on the real model: tokenize, cache lookup, sessions, status."""

from __future__ import annotations

import uuid

import httpx
import pytest

MODEL = "gemma"  # the served name (tests/server/conftest.py)


@pytest.fixture(scope="module")
def http(served):
    with httpx.Client(base_url=served.url, timeout=60) as client:
        yield client


def ok(r: httpx.Response) -> dict:
    assert r.status_code == 200, r.text
    return r.json()


def test_tokenize_detokenize_round_trip(http):
    text = "The capital of France is Paris, and Zürich is in Switzerland."
    with_bos = ok(http.post("/tokenize", json={"model": MODEL, "content": text}))
    plain = ok(http.post("/tokenize", json={"model": MODEL, "content": text, "add_special": False}))
    assert with_bos["tokens"][1:] == plain["tokens"] and len(plain["tokens"]) > 5
    assert with_bos["count"] == len(with_bos["tokens"]) and with_bos["max_model_len"] == 2048
    assert ok(http.post("/detokenize", json={"model": MODEL, "tokens": plain["tokens"]}))["content"] == text
    pieces = ok(http.post("/tokenize", json={"model": MODEL, "content": text, "with_pieces": True}))["tokens"]
    assert [p["id"] for p in pieces] == with_bos["tokens"]
    assert pieces[0]["piece"] == "<bos>"
    joined = b"".join(p["piece"].encode() if isinstance(p["piece"], str) else bytes(p["piece"])
                      for p in pieces[1:])
    assert joined.decode() == text
    err = http.post("/detokenize", json={"model": MODEL, "tokens": [1, 10**7]})
    assert err.status_code == 400 and err.json()["error"]["param"] == "tokens"


def test_tokenize_messages_matches_the_chat_completions_prompt(http):
    messages = [{"role": "user", "content": "Name a colour."}]
    counted = ok(http.post("/tokenize", json={"model": MODEL, "messages": messages}))["count"]
    chat = {"model": MODEL, "messages": messages, "max_tokens": 1}
    reply = ok(http.post("/v1/chat/completions", json=chat))
    assert counted == reply["usage"]["prompt_tokens"]


def test_cache_lookup_after_a_request_per_salt(http):
    # Unique text: no earlier test can have cached it. 200+ tokens, so rows are saved.
    tag = uuid.uuid4().hex
    prompt = f"Report {tag}. " + " ".join(f"Line {i} of the report lists item {i}." for i in range(30))
    look = {"model": MODEL, "prompt": prompt, "cache_salt": "tenant-a"}
    before = ok(http.post("/cache/lookup", json=look))
    assert before["tokens"] > 200 and before["cached_tokens"] == 0
    ok(http.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 1,
                                          "cache_salt": "tenant-a"}))
    after = ok(http.post("/cache/lookup", json=look))
    assert after["tokens"] == before["tokens"] and 64 <= after["cached_tokens"] <= after["tokens"]
    assert ok(http.post("/cache/lookup", json={**look, "cache_salt": "tenant-b"}))["cached_tokens"] == 0
    assert ok(http.post("/cache/lookup", json={"model": MODEL, "prompt": prompt}))["cached_tokens"] == 0
    tokens = ok(http.post("/tokenize", json={"model": MODEL, "content": prompt}))["tokens"]
    by_ids = ok(http.post("/cache/lookup", json={"model": MODEL, "tokens": tokens, "cache_salt": "tenant-a"}))
    assert by_ids == after


def _slots(http) -> dict:
    status = ok(http.get("/status"))
    return next(m for m in status["models"] if m["name"] == MODEL)["slots"]


def test_end_session(http):
    session = f"admin-{uuid.uuid4().hex[:8]}"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say one word."}], "max_tokens": 2,
            "session_id": session, "cache_salt": "t1"}
    ok(http.post("/v1/chat/completions", json=body))
    assert _slots(http)["sessions"] >= 1
    assert http.delete(f"/sessions/{session}").status_code == 404  # another tenant's id
    r = http.delete(f"/sessions/{session}", params={"cache_salt": "t1", "model": MODEL})
    assert ok(r) == {"id": session, "object": "session.deleted", "deleted": True}
    gone = http.delete(f"/sessions/{session}", params={"cache_salt": "t1"})
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "session_not_found"


def test_a_running_session_cannot_be_ended(http):
    session = f"busy-{uuid.uuid4().hex[:8]}"
    body = {"model": MODEL, "prompt": "Count from one to a hundred:", "max_tokens": 400, "stream": True,
            "session_id": session, "temperature": 0, "ignore_eos": True}
    with http.stream("POST", "/v1/completions", json=body) as stream:
        assert stream.status_code == 200
        next(stream.iter_lines())  # generating now
        busy = http.delete(f"/sessions/{session}")
        assert busy.status_code == 409, busy.text
        assert busy.json()["error"]["param"] == "session_id"
    # The stream was closed early (the request is cancelled); a cancelled turn parks nothing
    # or a session that can be ended: either way it is not busy for long.
    for _ in range(50):
        r = http.delete(f"/sessions/{session}")
        if r.status_code != 409:
            break
    assert r.status_code in (200, 404), r.text


def test_status_lists_models_memory_cache_and_requests(http):
    ok(http.post("/v1/completions", json={"model": MODEL, "prompt": "Hello", "max_tokens": 3}))
    status = ok(http.get("/status"))
    names = {m["name"] for m in status["models"]}
    assert {"gemma", "gemma-agent"} <= names
    model = next(m for m in status["models"] if m["name"] == MODEL)
    assert model["healthy"] and model["phase"] in ("idle", "prefilling", "generating")
    assert model["slots"]["total"] == 2 and 0 <= model["slots"]["free"] <= 2
    assert model["architecture"] == "gemma3" and model["memory_estimate_bytes"] > 100 << 20
    assert status["memory"]["process_rss_bytes"] > 100 << 20
    assert status["cache"]["enabled"] and {"ram", "shm"} <= set(status["cache"]["tiers"])
    last = status["recent_requests"][0]
    assert last["model"] == MODEL and last["prompt_tokens"] == 2 and last["generated_tokens"] == 3
    assert last["ttft_ms"] > 0 and last["tokens_per_second"] > 0
    assert ok(http.get("/status/requests", params={"limit": 1}))["data"] == [last]


def test_a_forked_session_and_its_source_continue_alike_and_exactly(http, served):
    sid, fork = f"fk-{uuid.uuid4().hex[:8]}", f"fk-{uuid.uuid4().hex[:8]}"
    prompt = "Notes on the harbour: " + " ".join(f"ship {i} left at dawn." for i in range(30))
    first = ok(http.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 6,
                                                   "temperature": 0, "session_id": sid}))
    forked = ok(http.post("/sessions/fork", json={"model": MODEL, "session_id": sid, "new_session_id": fork}))
    assert forked == {"id": fork, "object": "session.forked", "from": sid}
    assert http.post("/sessions/fork", json={"model": MODEL, "session_id": "nobody",
                                             "new_session_id": "x"}).status_code == 404
    replies = []  # (with 2 slots, the source may go to the KV cache: it continues from there)
    for s in (sid, fork):
        body = {"model": MODEL, "prompt": " And the next ship?", "max_tokens": 8, "temperature": 0,
                "session_id": s, "continue_session": True}
        r = ok(http.post("/v1/completions", json=body))
        assert r["usage"]["prompt_tokens_details"]["cached_tokens"] > first["usage"]["prompt_tokens"] - 64
        replies.append(r["choices"][0]["text"])
    transcript = [*served.engine.prompt_tokens(MODEL, prompt)]
    whole = served.engine.complete(MODEL, prompt + first["choices"][0]["text"] + " And the next ship?",
                                   max_tokens=8, temperature=0)
    assert replies[0] == replies[1] == whole.reply and len(transcript) > 100
    wrong = {"model": MODEL, "prompt": " x", "max_tokens": 2, "session_id": sid, "continue_session": True,
             "expect_session_tokens": 3}
    assert http.post("/v1/completions", json=wrong).status_code == 409
    assert ok(http.delete(f"/sessions/{fork}"))["deleted"] is True  # the last one parked
