"""``kvllama bench serve --throughput 1,4,8``: the throughput workload over HTTP, beside the floor.

``kvllama bench throughput`` measures the engine through its Python API; this
measures the whole server the way a client sees it. Per concurrency ``N``:
``N`` ``/v1/completions`` requests sent at once, each a ``prompt_tokens``-token
prompt sent as token ids (the same prompts the floor decodes), ``max_tokens``
tokens, temperature 0 and ``ignore_eos`` (every request generates all of
them; a server that ends one early fails the bench rather than flattering
itself). Aggregate completion tokens per second from the first request sent
to the last answer, prefill included, against the floor
(:mod:`kvllama.bench.floor`: bare llama.cpp through the same wheel, the same
GGUF and options, in a child process); runs alternate and medians are
compared, as in ``bench throughput``.

The server under test is ``--url`` when given (anything OpenAI-compatible
that takes token-id prompts and ``ignore_eos``: kvllama, llama-server), else a
``kvllama serve`` the bench starts with the same model flags, with no KV
cache and no finished prompts kept in their slots: the floor reuses nothing
between runs, so neither may the server.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from kvllama.bench.floor_process import FloorProcess
from kvllama.bench.throughput import prompt_text
from kvllama.options import ModelOptions

STARTUP_SECONDS = 180.0


@dataclass(frozen=True)
class HttpThroughputRow:
    streams: int
    server_tokens_per_second: float
    floor_tokens_per_second: float
    ratio: float
    generated_tokens: int


def server_argv(path: str, options: dict[str, Any], port: int) -> list[str]:
    """``kvllama serve`` with these model options, on loopback, without any KV reuse."""
    exe = os.path.join(os.path.dirname(sys.executable), "kvllama")
    argv = [exe] if os.path.exists(exe) else [sys.executable, "-m", "kvllama.cli"]
    argv += ["serve", "--host", "127.0.0.1", "--port", str(port), "--model", path,
             "--no-cache", "--no-keep-finished", "--log-level", "warning"]
    for name, value in options.items():
        if name == "keep_finished":
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + name.replace("_", "-"))
        else:
            argv += [flag, str(value)]
    return argv


@contextmanager
def spawned_server(path: str, options: dict[str, Any]) -> Iterator[str]:
    """A ``kvllama serve`` child for the bench; yields its URL once ``/health`` answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(server_argv(path, options, port), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(proc, url, log)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Any) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"kvllama serve exited with {proc.returncode}:\n"
                               f"{log.read().decode(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"kvllama serve did not answer /health within {STARTUP_SECONDS:.0f} s")


async def _one(client: httpx.AsyncClient, model: str, prompt: list[int], max_tokens: int) -> int:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": False}
    response = await client.post("/v1/completions", json=body)
    response.raise_for_status()
    got = int(response.json()["usage"]["completion_tokens"])
    if got != max_tokens:
        raise RuntimeError(f"the server generated {got} tokens, not {max_tokens}: it ignored ignore_eos")
    return got


async def _http_run(url: str, model: str, prompts: Sequence[list[int]], max_tokens: int,
                    api_key: str | None) -> tuple[float, int]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=len(prompts) + 1)
    async with httpx.AsyncClient(base_url=url, timeout=600.0, headers=headers, limits=limits) as client:
        await _one(client, model, prompts[0][:8], 2)  # connections and the server's first pass
        started = time.perf_counter()
        counts = await asyncio.gather(*(_one(client, model, p, max_tokens) for p in prompts))
        return time.perf_counter() - started, sum(counts)


def run_http_throughput(
    url: str | None, model_name: str, path: str, options: dict[str, Any],
    streams: Sequence[int] = (1, 4, 8), prompt_tokens: int = 200, max_tokens: int = 64,
    repeat: int = 3, api_key: str | None = None,
) -> list[HttpThroughputRow]:
    """Server and floor side by side per concurrency; ``url`` None: start a ``kvllama serve``."""
    options = {**options, "n_seq_max": options.get("n_seq_max") or max(streams)}
    with FloorProcess(path, ModelOptions.from_kwargs(**options)) as floor:
        texts = [prompt_text(i, prompt_tokens) for i in range(max(streams))]
        prompts = [t[:prompt_tokens] for t in floor.tokenize(texts)]
        floor.run(prompts[:1], 4)  # warm-up, as the server's first request
        server = spawned_server(path, options) if url is None else _given(url)
        with server as base:
            rows = []
            for n in streams:
                server_runs, floor_runs = [], []
                for _ in range(repeat):
                    run = _http_run(base, model_name, prompts[:n], max_tokens, api_key)
                    seconds, tokens = asyncio.run(run)
                    server_runs.append(tokens / seconds)
                    floor_seconds, floor_tokens, _ = floor.run(prompts[:n], max_tokens)
                    floor_runs.append(floor_tokens / floor_seconds)
                server_tps, floor_tps = statistics.median(server_runs), statistics.median(floor_runs)
                rows.append(HttpThroughputRow(n, round(server_tps, 2), round(floor_tps, 2),
                                              round(server_tps / floor_tps, 3), n * max_tokens))
    return rows


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url.rstrip("/")


def format_rows(rows: Sequence[HttpThroughputRow]) -> str:
    lines = ["streams  server tok/s  floor tok/s  server/floor", "-" * 45]
    lines += [f"{r.streams:>7} {r.server_tokens_per_second:>13.1f} {r.floor_tokens_per_second:>12.1f} "
              f"{r.ratio:>13.3f}" for r in rows]
    return "\n".join(lines)
