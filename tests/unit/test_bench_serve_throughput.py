"""The HTTP throughput bench's parts that need no model: the server command and the answer check."""

import asyncio
import json

import httpx
import pytest

from kvllama.bench.serve_throughput import _one, server_argv


def test_the_spawned_server_reuses_nothing_and_gets_the_floors_options():
    argv = server_argv("/m.gguf", {"n_seq_max": 8, "n_threads": 2, "swa_full": False,
                                   "keep_finished": True}, 9000)
    assert argv[argv.index("--model") + 1] == "/m.gguf"
    assert "--no-cache" in argv and "--no-keep-finished" in argv and "--keep-finished" not in argv
    assert argv[argv.index("--n-seq-max") + 1] == "8" and argv[argv.index("--n-threads") + 1] == "2"
    assert "--no-swa-full" in argv
    assert argv[argv.index("--port") + 1] == "9000"


def _client(completion_tokens: int, seen: list[dict]) -> httpx.AsyncClient:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json={"usage": {"completion_tokens": completion_tokens}})

    return httpx.AsyncClient(base_url="http://server", transport=httpx.MockTransport(handler))


def test_a_request_sends_token_ids_greedy_and_ignore_eos():
    seen: list[dict] = []
    assert asyncio.run(_one(_client(5, seen), "default", [2, 10, 11], 5)) == 5
    assert seen == [{"model": "default", "prompt": [2, 10, 11], "max_tokens": 5, "temperature": 0,
                     "ignore_eos": True, "stream": False}]


def test_a_server_that_stops_early_fails_the_bench():
    with pytest.raises(RuntimeError, match="ignore_eos"):
        asyncio.run(_one(_client(3, []), "default", [2, 10], 5))
