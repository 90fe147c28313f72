"""A client that leaves cancels its request and frees the slot (stub engine behind real uvicorn).

With n_seq_max=1 a request that kept running after its client left would
hold the only slot for its whole max_tokens; each test then shows that a
second request is admitted and finishes promptly.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from kvllama.server import ServerThread, create_app

LONG = 3000  # tokens; at 5 ms per decode a request that is not cancelled runs 15 s


def chat(max_tokens: int, stream: bool) -> dict[str, Any]:
    return {"model": "s", "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens,
            "temperature": 0, "stream": stream}


@pytest.fixture
def served(stub_engine):
    engine, backend = stub_engine(n_seq_max=1, n_ctx_seq=8192, decode_delay=0.005)
    with ServerThread(create_app(engine)) as url:
        yield url, engine, backend


def wait_idle(engine, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while engine.in_flight() or engine.pending():
        assert time.monotonic() < deadline, "the abandoned request still holds the model"
        time.sleep(0.01)


def assert_next_request_is_served(url: str, backend) -> None:
    r = httpx.post(f"{url}/v1/chat/completions", json=chat(4, stream=False), timeout=10)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
    # Counted, not timed: the abandoned request decoded far fewer rows than it asked for.
    assert sum(len(rows) for rows in backend.decode_log) < LONG // 2


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_disconnect_mid_stream_cancels(served, path):
    url, engine, backend = served
    with httpx.Client(base_url=url, timeout=10) as client,\
            client.stream("POST", path, json=chat(LONG, stream=True)) as resp:
        assert resp.status_code == 200
        seen = 0
        for line in resp.iter_lines():
            seen += line.startswith("data:")
            if seen >= 5:
                break
    # Leaving the block closed the connection mid-body.
    wait_idle(engine)
    assert_next_request_is_served(url, backend)


def test_disconnect_during_a_non_streamed_request_cancels(served):
    url, engine, backend = served
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/chat/completions", json=chat(LONG, stream=False), timeout=0.5)
    wait_idle(engine)
    assert_next_request_is_served(url, backend)


def test_disconnect_while_queued_cancels_before_admission(served):
    url, engine, backend = served
    holder = engine.infer("s", "hold", max_tokens=LONG)
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/messages", json=chat(LONG, stream=True), timeout=0.5)
        deadline = time.monotonic() + 5
        while engine.pending():
            assert time.monotonic() < deadline, "the queued request was not cancelled"
            time.sleep(0.01)
    finally:
        holder.cancel()
        holder.result()
    wait_idle(engine)
    assert_next_request_is_served(url, backend)
