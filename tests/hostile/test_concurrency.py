"""Issue #9, cases 5 and 7: load that blocked streams, and bursts of cancelled streams.

5. /v1/embeddings with thousands of inputs used to block every stream for
   over a minute: now either a 400 (too many inputs) or an answer while a
   concurrent /v1/completions stream keeps getting tokens with bounded gaps.
7. 30 streaming requests, half closed by the client after the first chunk
   (and a few closed while still queued): afterwards /health is ok, the
   reference answer is unchanged, and both sequence slots are free again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from typing import Any

import httpx
import pytest
from hostile_support import Hostile, assert_json_answer

from kvllama.api.embedding import MAX_EMBED_INPUTS, MAX_EMBED_TOKENS

# Longest pause between two tokens of a stream while an embeddings call runs beside it.
MAX_TOKEN_GAP = 3.0
# The most seconds one /v1/embeddings request of the largest accepted batch may take.
EMBED_BATCH_LIMIT = 60.0
STREAM_BODY = {"prompt": "Once upon a time, in a land far away,", "max_tokens": 96, "temperature": 0,
               "stream": True}


async def _stream_times(
    client: httpx.AsyncClient, body: dict[str, Any], started: asyncio.Event
) -> list[float]:
    """Arrival times of the content chunks of one OpenAI stream."""
    times: list[float] = []
    async with client.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200, (await r.aread())[:500]
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[len("data: "):])
                assert "error" not in chunk, chunk
                times.append(time.monotonic())
                started.set()
    return times


@pytest.mark.parametrize("n_inputs", [3000, 64])
def test_embeddings_batch_beside_a_stream(hostile: Hostile, n_inputs: int) -> None:
    """Many embedding inputs: a 400, or an answer while a concurrent stream keeps flowing."""
    inputs = [f"input number {i} of a large batch" for i in range(n_inputs)]

    async def main() -> tuple[list[float], httpx.Response, float, float]:
        async with httpx.AsyncClient(base_url=hostile.url, timeout=120) as client:
            started = asyncio.Event()
            stream = asyncio.create_task(_stream_times(client, STREAM_BODY, started))
            await asyncio.wait_for(started.wait(), 30)
            t0 = time.monotonic()
            r = await client.post("/v1/embeddings", json={"input": inputs})
            t1 = time.monotonic()
            return await asyncio.wait_for(stream, 60), r, t0, t1

    times, r, t0, t1 = asyncio.run(main())
    body = assert_json_answer(r)
    if r.status_code == 200:
        assert len(body["data"]) == n_inputs
    else:
        assert r.status_code == 400, r.text
    # Gaps between tokens that arrived while the embeddings request was running.
    overlapping = [b - a for a, b in itertools.pairwise(times) if b > t0 and a < t1]
    assert len(times) > 1
    worst = max(overlapping, default=0.0)
    assert worst < MAX_TOKEN_GAP, (
        f"a stream token waited {worst:.1f}s while /v1/embeddings ({n_inputs} inputs, "
        f"{t1 - t0:.1f}s) ran; gaps: {[round(g, 2) for g in overlapping]}")
    hostile.assert_survived()


def test_embeddings_largest_batch_in_time(hostile: Hostile) -> None:
    """The largest batch /v1/embeddings accepts must answer within EMBED_BATCH_LIMIT seconds.

    Measured on 16 inputs and extrapolated to MAX_EMBED_INPUTS texts and to
    MAX_EMBED_TOKENS tokens (sending the whole batch would hold the server for
    minutes when it is too slow).
    """
    n = 16
    inputs = [f"input number {i} of a large batch" for i in range(n)]
    r = hostile.post("/v1/embeddings", {"input": inputs})
    assert_json_answer(r)
    assert r.status_code == 200, r.text
    per_text = r.elapsed.total_seconds() / n
    long_texts = [" ".join(f"word{j}" for j in range(120)) + f" {i}" for i in range(2)]
    r = hostile.post("/v1/embeddings", {"input": long_texts})
    assert r.status_code == 200, r.text
    per_token = r.elapsed.total_seconds() / r.json()["usage"]["prompt_tokens"]
    projected = max(per_text * MAX_EMBED_INPUTS, per_token * MAX_EMBED_TOKENS)
    hostile.assert_survived()
    assert projected < EMBED_BATCH_LIMIT, (
        f"{per_text * 1000:.0f} ms per short text, {per_token * 1000:.1f} ms per token: the largest "
        f"batch the server accepts ({MAX_EMBED_INPUTS} texts or {MAX_EMBED_TOKENS} tokens) would "
        f"take ~{projected:.0f}s")


def test_burst_with_cancels(hostile: Hostile) -> None:
    """30 streams at once: even ones read to the end, odd ones closed after their first chunk."""

    async def one(client: httpx.AsyncClient, i: int) -> tuple[int, str]:
        body = {"prompt": f"Story number {i}:", "max_tokens": 12, "temperature": 0.8, "seed": i,
                "stream": True}
        async with client.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                return r.status_code, (await r.aread()).decode(errors="replace")[:300]
            async for line in r.aiter_lines():
                if line.startswith("data: ") and i % 2:
                    return 200, "closed"  # leaving the block closes the connection mid-stream
                if line == "data: [DONE]":
                    return 200, "done"
        return 200, "ended without [DONE]"

    async def queued_and_dropped(i: int) -> None:
        """A client that gives up while its request is still waiting for a slot."""
        body = {"prompt": f"Dropped {i}:", "max_tokens": 12, "stream": i % 2 == 0}
        async with httpx.AsyncClient(base_url=hostile.url, timeout=0.2) as client:
            with contextlib.suppress(httpx.TimeoutException):
                await client.post("/v1/completions", json=body)

    async def main() -> list[tuple[int, str]]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=hostile.url, timeout=60, limits=limits) as client:
            results = asyncio.gather(*(one(client, i) for i in range(30)))
            await asyncio.gather(*(queued_and_dropped(i) for i in range(6)))
            return await asyncio.wait_for(results, 120)

    results = asyncio.run(main())
    bad = [(i, r) for i, r in enumerate(results) if r[0] != 200 or r[1] not in ("closed", "done")]
    assert not bad, bad
    assert sum(r[1] == "done" for r in results) == 15
    # Both sequence slots are free again: two requests at once both finish promptly.

    async def pair() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=hostile.url, timeout=30) as client:
            return list(await asyncio.gather(*(client.post("/v1/completions", json={
                "prompt": f"After the burst {i}", "max_tokens": 4}) for i in range(2))))

    for r in asyncio.run(pair()):
        assert_json_answer(r)
        assert r.status_code == 200, r.text
    hostile.assert_survived()


def test_same_session_at_once(hostile: Hostile) -> None:
    """Four requests of one session_id at once: each a 200 or a 409, never a hang or a 500."""

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=hostile.url, timeout=30) as client:
            return list(await asyncio.gather(*(client.post("/v1/chat/completions", json={
                "messages": [{"role": "user", "content": f"turn {i}"}], "max_tokens": 6,
                "session_id": "hostile-shared"}) for i in range(4))))

    for r in asyncio.run(main()):
        assert_json_answer(r)
        assert r.status_code in (200, 409), r.text
    hostile.assert_survived()


def test_many_sessions(hostile: Hostile) -> None:
    """More distinct sessions than slots, one after another: none may pin a slot for good."""
    for i in range(8):
        body = {"prompt": f"session {i}", "max_tokens": 2, "session_id": f"hs-{i}"}
        r = hostile.post("/v1/completions", body)
        assert_json_answer(r)
        assert r.status_code == 200, r.text
    hostile.assert_survived()
