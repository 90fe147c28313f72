"""``kvllama bench serve``: a multi-turn chat workload against a running server.

Models the traffic the KV cache is for: ``users`` concurrent conversations
that share one long system prompt (≈ ``system_tokens`` tokens) and grow turn
by turn. Every request is a streamed chat completion; time to first token is
measured on the client from sending the request to the first content chunk.
Per round (turn number) it reports mean and p90 TTFT, mean prompt and cached
prompt tokens (``usage.prompt_tokens_details.cached_tokens``), and overall the
aggregate generated tokens per second of wall time. Later rounds should show
a lower TTFT than the first once prefixes are served from the cache.

Plain httpx (a kvllama dependency) rather than the openai SDK, so the bench
runs without the test extras.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from typing import Any, TextIO

import httpx

_NOTES = (
    "the system keeps a careful record of every request and answers with short clear sentences "
    "about rivers mountains cities books music weather gardens trains and the history of ideas "
    "while it stays polite patient and precise in each reply it gives to the people it helps"
)
_WORDS = _NOTES.split(" ")
_QUESTIONS = (
    "What is a good name for a small boat?",
    "Tell me one fact about rivers.",
    "Suggest a title for a short story.",
    "What should I plant in a shady garden?",
    "Describe the weather in one sentence.",
    "Name a book worth reading twice.",
)


def system_prompt(n_tokens: int) -> str:
    """About ``n_tokens`` tokens of instructions (common words are roughly one token each)."""
    head = "You are a helpful assistant. Follow these notes: "
    words = [_WORDS[i % len(_WORDS)] for i in range(max(0, n_tokens - 12))]
    return head + " ".join(words) + "."


def run_bench_serve(
    base_url: str,
    model: str,
    users: int = 4,
    rounds: int = 4,
    system_tokens: int = 1000,
    max_tokens: int = 32,
    api_key: str | None = None,
    timeout: float = 600.0,
) -> dict[str, Any]:
    """Run the workload and return the report (see :func:`print_report`)."""
    if users < 1 or rounds < 1 or max_tokens < 1:
        raise ValueError("users, rounds and max_tokens must be at least 1")
    return asyncio.run(_bench(base_url, model, users, rounds, system_tokens, max_tokens, api_key, timeout))


async def _bench(
    base_url: str, model: str, users: int, rounds: int, system_tokens: int, max_tokens: int,
    api_key: str | None, timeout: float,
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    system = system_prompt(system_tokens)
    records: list[dict[str, Any]] = []
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout) as client:
        await asyncio.gather(*(
            _conversation(client, model, u, rounds, system, max_tokens, records) for u in range(users)
        ))
    wall = time.perf_counter() - started
    return _report(base_url, model, users, rounds, max_tokens, records, wall)


async def _conversation(
    client: httpx.AsyncClient, model: str, user: int, rounds: int, system: str, max_tokens: int,
    records: list[dict[str, Any]],
) -> None:
    messages: list[dict[str, str]] = [{"role": "system", "content": system}]
    for r in range(rounds):
        question = _QUESTIONS[(user + r) % len(_QUESTIONS)]
        messages.append({"role": "user", "content": f"{question} (conversation {user + 1}, turn {r + 1})"})
        record = await _one_request(client, model, messages, max_tokens)
        record.update(user=user, round=r + 1)
        records.append(record)
        if "error" in record:
            return  # a broken conversation cannot continue meaningfully
        messages.append({"role": "assistant", "content": record["text"]})


async def _one_request(
    client: httpx.AsyncClient, model: str, messages: list[dict[str, str]], max_tokens: int
) -> dict[str, Any]:
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "seed": 1, "stream": True, "stream_options": {"include_usage": True}}
    sent = time.perf_counter()
    ttft: float | None = None
    text: list[str] = []
    usage: dict[str, Any] = {}
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            detail = (await resp.aread()).decode("utf-8", "replace")[:300]
            return {"error": f"HTTP {resp.status_code}: {detail}"}
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[len("data:"):].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                return {"error": str(chunk["error"].get("message"))}
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    ttft = time.perf_counter() - sent if ttft is None else ttft
                    text.append(piece)
            usage = chunk.get("usage") or usage
    total = time.perf_counter() - sent
    return {
        "ttft": ttft if ttft is not None else total, "seconds": total, "text": "".join(text),
        "prompt_tokens": usage.get("prompt_tokens", 0),
        # Servers that send no usage when streaming: count content chunks (about one per token).
        "completion_tokens": usage.get("completion_tokens", len(text)),
        "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
    }


def _report(
    base_url: str, model: str, users: int, rounds: int, max_tokens: int,
    records: list[dict[str, Any]], wall: float,
) -> dict[str, Any]:
    ok = [r for r in records if "error" not in r]
    per_round = []
    for n in range(1, rounds + 1):
        these = [r for r in ok if r["round"] == n]
        per_round.append({"round": n, "requests": len(these), **_ttft_stats(these),
                          "prompt_tokens_mean": _mean([r["prompt_tokens"] for r in these]),
                          "cached_tokens_mean": _mean([r["cached_tokens"] for r in these])})
    generated = sum(r["completion_tokens"] for r in ok)
    first = [r["prompt_tokens"] for r in ok if r["round"] == 1]
    return {
        "base_url": base_url, "model": model, "users": users, "rounds": rounds, "max_tokens": max_tokens,
        "system_prompt_tokens": min(first) if first else None,
        "per_round": per_round,
        "overall": {"requests": len(ok), **_ttft_stats(ok)},
        "generated_tokens": generated,
        "wall_seconds": wall,
        "generated_tokens_per_second": generated / wall if wall > 0 else 0.0,
        "errors": [r["error"] for r in records if "error" in r],
    }


def _ttft_stats(records: list[dict[str, Any]]) -> dict[str, float | None]:
    values = sorted(r["ttft"] for r in records)
    if not values:
        return {"ttft_mean": None, "ttft_p90": None}
    p90 = values[max(0, math.ceil(0.9 * len(values)) - 1)]  # nearest rank
    return {"ttft_mean": sum(values) / len(values), "ttft_p90": p90}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def print_report(report: dict[str, Any], file: TextIO | None = None) -> None:
    """A plain-text table of :func:`run_bench_serve`'s report."""
    out = file or sys.stdout

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1000:.0f}"

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    print(f"kvllama bench serve  {report['base_url']}  model={report['model']}  users={report['users']}  "
          f"rounds={report['rounds']}  max_tokens={report['max_tokens']}  "
          f"system prompt≈{num(report['system_prompt_tokens'])} tok", file=out)
    print(f"{'round':>6} {'reqs':>5} {'ttft mean ms':>13} {'ttft p90 ms':>12} {'prompt tok':>11} "
          f"{'cached tok':>11}", file=out)
    for row in report["per_round"]:
        print(f"{row['round']:>6} {row['requests']:>5} {ms(row['ttft_mean']):>13} {ms(row['ttft_p90']):>12} "
              f"{num(row['prompt_tokens_mean']):>11} {num(row['cached_tokens_mean']):>11}", file=out)
    overall = report["overall"]
    print(f"{'all':>6} {overall['requests']:>5} {ms(overall['ttft_mean']):>13} {ms(overall['ttft_p90']):>12}",
          file=out)
    print(f"generated {report['generated_tokens']} tokens in {report['wall_seconds']:.2f}s: "
          f"{report['generated_tokens_per_second']:.1f} tok/s aggregate", file=out)
    for err in report["errors"]:
        print(f"error: {err}", file=out)
