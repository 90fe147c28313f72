"""``kvllama bench serve``: a multi-turn chat workload against a running server.

Models the traffic the KV cache is for: ``users`` concurrent conversations
that share one long system prompt (≈ ``system_tokens`` tokens) and grow turn
by turn. Every request is a streamed chat completion; time to first token is
measured on the client from sending the request to the first content chunk.
Per round (turn number) it reports mean and p90 TTFT, mean prompt and cached
prompt tokens (``usage.prompt_tokens_details.cached_tokens``), and overall the
aggregate generated tokens per second of wall time. Later rounds should show
a lower TTFT than the first once prefixes are served from the cache.

The shared-prefix shape: user ``u`` (0-based) starts ``u * stagger`` seconds
after the conversations begin, and with ``question_words`` > 0 each question
carries that many user-specific words, so users share only the system prompt.
Before the conversations one request alone measures a cold prefill of the same
first-turn shape (the system prompt behind a unique nonce word, so no cache
can hold it). The report then gives each user's first-turn TTFT and two
ratios: ``staggered_ratio`` (slowest of users 2..n / user 1, the first-turn
cost of a prompt whose prefix an earlier user already sent) and
``at_once_ratio`` (slowest first turn / the lone cold prefill).

With ``raw`` the conversations go to ``/v1/completions`` as plain transcripts
(``<system>\nUser: <question>\nAssistant:``, each later turn appending the
answer and the next question), what many agent frameworks and benchmark
harnesses send: the server sees no message boundaries. The end-of-generation
tokens of Gemma 3 (ids 1 and 106) are banned with ``logit_bias`` so every answer
has exactly ``max_tokens`` tokens on every server.

Plain httpx (a kvllama dependency) rather than the openai SDK, so the bench
runs without the test extras; only standard OpenAI fields are sent or read,
so it runs against llama-server or any OpenAI-compatible server.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import secrets
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
# Common words (about one token each) for the user-specific part of a question.
_VOCAB = (
    "apple window river stone green quiet market summer letter bridge candle forest silver "
    "morning island garden pocket yellow engine harbor winter number paper valley orange "
    "thunder ladder mirror basket cotton desert feather kettle meadow needle pepper rabbit "
    "saddle tunnel violin wagon anchor blanket camera dollar eagle fabric ginger hammer "
    "jacket lemon marble napkin oyster pillow quilt ribbon shadow timber umbrella velvet "
    "walnut zebra copper planet signal cabin"
).split()
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


def nonce_word() -> str:
    """A word no earlier request has started with, so no server cache holds what follows it."""
    return f"run{secrets.token_hex(4)}"


def question_text(user: int, round_index: int, extra_words: int = 0) -> str:
    """User ``user``'s question in round ``round_index`` (both 0-based).

    With ``extra_words`` > 0 every user's question has the same shape and word
    count: a fixed frame around ``extra_words`` words drawn deterministically
    per (user, round), so different users' prompts differ right after the
    system prompt.
    """
    if extra_words <= 0:
        question = _QUESTIONS[(user + round_index) % len(_QUESTIONS)]
        return f"{question} (conversation {user + 1}, turn {round_index + 1})"
    rng = random.Random(f"kvllama-bench-serve:{user}:{round_index}")
    words = " ".join(rng.choice(_VOCAB) for _ in range(extra_words))
    return (f"Conversation {user + 1}, turn {round_index + 1}. Read these words: {words}. "
            "Which of them do you like best?")


def stagger_schedule(users: int, stagger: float) -> list[float]:
    """Seconds after the conversations begin at which each user (0-based) starts."""
    return [u * stagger for u in range(users)]


def run_bench_serve(
    base_url: str,
    model: str,
    users: int = 4,
    rounds: int = 4,
    system_tokens: int = 1000,
    max_tokens: int = 32,
    api_key: str | None = None,
    timeout: float = 600.0,
    stagger: float = 0.0,
    question_words: int = 0,
    raw: bool = False,
) -> dict[str, Any]:
    """Run the workload and return the report (see :func:`print_report`)."""
    if users < 1 or rounds < 1 or max_tokens < 1:
        raise ValueError("users, rounds and max_tokens must be at least 1")
    if stagger < 0 or question_words < 0:
        raise ValueError("stagger and question_words must not be negative")
    settings = {"base_url": base_url, "model": model, "users": users, "rounds": rounds,
                "system_tokens": system_tokens, "max_tokens": max_tokens, "stagger": stagger,
                "question_words": question_words, "raw": raw}
    return asyncio.run(_bench(settings, api_key, timeout))


async def _bench(settings: dict[str, Any], api_key: str | None, timeout: float) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    # A fresh nonce per run: a server that kept an earlier run's system prompt starts cold too.
    system = f"{nonce_word()} {system_prompt(settings['system_tokens'])}"
    model, max_tokens, words = settings["model"], settings["max_tokens"], settings["question_words"]
    records: list[dict[str, Any]] = []
    base_url = settings["base_url"].rstrip("/")
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout) as client:
        cold_messages = [{"role": "system", "content": f"{nonce_word()} {system}"},
                         {"role": "user", "content": question_text(0, 0, words)}]
        if settings.get("raw"):
            cold = await stream_request(client, "/v1/completions",
                                        _raw_body(model, _transcript(cold_messages), max_tokens))
        else:
            cold = await stream_request(client, "/v1/chat/completions",
                                        _chat_body(model, cold_messages, max_tokens))
        if "error" in cold:  # a lone request failed: the workload would measure nothing
            return build_report(settings, [{"error": f"cold single: {cold['error']}"}], 0.0, None)
        started = time.perf_counter()
        starts = stagger_schedule(settings["users"], settings["stagger"])
        await asyncio.gather(*(
            _conversation(client, settings, u, started + starts[u], system, records)
            for u in range(settings["users"])
        ))
    wall = time.perf_counter() - started
    return build_report(settings, records, wall, cold["ttft"])


async def _conversation(
    client: httpx.AsyncClient, settings: dict[str, Any], user: int, start_at: float, system: str,
    records: list[dict[str, Any]],
) -> None:
    await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
    messages: list[dict[str, str]] = [{"role": "system", "content": system}]
    for r in range(settings["rounds"]):
        messages.append({"role": "user", "content": question_text(user, r, settings["question_words"])})
        if settings.get("raw"):
            body = _raw_body(settings["model"], _transcript(messages), settings["max_tokens"])
            record = await stream_request(client, "/v1/completions", body)
        else:
            body = _chat_body(settings["model"], messages, settings["max_tokens"])
            record = await stream_request(client, "/v1/chat/completions", body)
        record.update(user=user, round=r + 1)
        records.append(record)
        if "error" in record:
            return  # a broken conversation cannot continue meaningfully
        messages.append({"role": "assistant", "content": record["text"]})


def _transcript(messages: list[dict[str, str]]) -> str:
    """A raw-completion prompt: the system text, then User/Assistant turns, open for the answer."""
    lines = []
    for m in messages:
        if m["role"] == "system":
            lines.append(m["content"])
        elif m["role"] == "user":
            lines.append(f"User: {m['content']}\nAssistant:")
        else:
            lines[-1] += m["content"]
    return "\n".join(lines)


# Gemma 3's end-of-generation tokens (<eos>, <end_of_turn>): banned so answers have max_tokens tokens.
_EOG_BIAS = {"1": -100, "106": -100}


def _raw_body(model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    return {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "seed": 1,
            "stream": True, "stream_options": {"include_usage": True}, "logit_bias": dict(_EOG_BIAS)}


def _chat_body(model: str, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    return {"model": model, "messages": list(messages), "max_tokens": max_tokens, "temperature": 0,
            "seed": 1, "stream": True, "stream_options": {"include_usage": True}}


async def stream_request(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST a streamed chat or text completion; TTFT is send -> first content chunk (or the end)."""
    sent = time.perf_counter()
    ttft: float | None = None
    text: list[str] = []
    usage: dict[str, Any] = {}
    async with client.stream("POST", path, json=body) as resp:
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
                piece = (choice.get("delta") or {}).get("content") or choice.get("text")
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
        # Behind `kvllama serve --replicas N`: the replica that served it.
        "replica": resp.headers.get("x-kvllama-replica"),
    }


def build_report(
    settings: dict[str, Any], records: list[dict[str, Any]], wall: float, cold_single_ttft: float | None,
) -> dict[str, Any]:
    """The report from the run's settings, its request records and the lone cold prefill's TTFT."""
    ok = [r for r in records if "error" not in r]
    per_round = []
    for n in range(1, settings["rounds"] + 1):
        these = [r for r in ok if r["round"] == n]
        per_round.append({"round": n, "requests": len(these), **_ttft_stats(these),
                          "prompt_tokens_mean": _mean([r["prompt_tokens"] for r in these]),
                          "cached_tokens_mean": _mean([r["cached_tokens"] for r in these])})
    generated = sum(r["completion_tokens"] for r in ok)
    first = [r["prompt_tokens"] for r in ok if r["round"] == 1]
    return {
        **{k: settings[k] for k in ("base_url", "model", "users", "rounds", "max_tokens")},
        "stagger": settings.get("stagger", 0.0), "question_words": settings.get("question_words", 0),
        "system_prompt_tokens": min(first) if first else None,
        "per_round": per_round,
        "overall": {"requests": len(ok), **_ttft_stats(ok)},
        **first_turn_figures(ok, settings["users"], cold_single_ttft),
        "generated_tokens": generated,
        "wall_seconds": wall,
        "generated_tokens_per_second": generated / wall if wall > 0 else 0.0,
        "errors": [r["error"] for r in records if "error" in r],
    }


def first_turn_figures(
    records: list[dict[str, Any]], users: int, cold_single_ttft: float | None,
) -> dict[str, Any]:
    """Per-user first-turn TTFT (index = user - 1) and the staggered and at-once ratios.

    ``staggered_ratio``: slowest first turn of users 2..n / user 1's first turn;
    ``staggered_mean_ratio``: their mean / user 1's.
    ``at_once_ratio``: slowest first turn of any user / the lone cold prefill.
    Either is None when a figure it needs is missing or zero.
    """
    first_turn: list[float | None] = [None] * users
    for r in records:
        if "error" not in r and r["round"] == 1 and 0 <= r["user"] < users:
            first_turn[r["user"]] = r["ttft"]
    later = [t for t in first_turn[1:] if t is not None]
    user1 = first_turn[0] if first_turn else None
    seen = [t for t in first_turn if t is not None]
    return {
        "cold_single_ttft": cold_single_ttft,
        "first_turn_ttft": first_turn,
        "staggered_ratio": max(later) / user1 if later and user1 else None,
        "staggered_mean_ratio": sum(later) / len(later) / user1 if later and user1 else None,
        "at_once_ratio": max(seen) / cold_single_ttft if seen and cold_single_ttft else None,
    }


def _ttft_stats(records: list[dict[str, Any]]) -> dict[str, float | None]:
    values = sorted(r["ttft"] for r in records)
    if not values:
        return {"ttft_mean": None, "ttft_p90": None}
    p90 = values[max(0, math.ceil(0.9 * len(values)) - 1)]  # nearest rank
    return {"ttft_mean": sum(values) / len(values), "ttft_p90": p90}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f}"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def _ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def print_report(report: dict[str, Any], file: TextIO | None = None) -> None:
    """A plain-text table of :func:`run_bench_serve`'s report."""
    out = file or sys.stdout
    print(f"kvllama bench serve  {report['base_url']}  model={report['model']}  users={report['users']}  "
          f"rounds={report['rounds']}  max_tokens={report['max_tokens']}  "
          f"system prompt≈{_num(report['system_prompt_tokens'])} tok  "
          f"stagger={report.get('stagger', 0)}s  question words={report.get('question_words', 0)}", file=out)
    print(f"{'round':>6} {'reqs':>5} {'ttft mean ms':>13} {'ttft p90 ms':>12} {'prompt tok':>11} "
          f"{'cached tok':>11}", file=out)
    for row in report["per_round"]:
        print(f"{row['round']:>6} {row['requests']:>5} {_ms(row['ttft_mean']):>13} "
              f"{_ms(row['ttft_p90']):>12} {_num(row['prompt_tokens_mean']):>11} "
              f"{_num(row['cached_tokens_mean']):>11}", file=out)
    overall = report["overall"]
    print(f"{'all':>6} {overall['requests']:>5} {_ms(overall['ttft_mean']):>13} "
          f"{_ms(overall['ttft_p90']):>12}", file=out)
    print(f"generated {report['generated_tokens']} tokens in {report['wall_seconds']:.2f}s: "
          f"{report['generated_tokens_per_second']:.1f} tok/s aggregate", file=out)
    _print_first_turns(report, out)
    for err in report["errors"]:
        print(f"error: {err}", file=out)


def _print_first_turns(report: dict[str, Any], out: TextIO) -> None:
    if "first_turn_ttft" not in report:
        return
    per_user = "  ".join(f"u{i + 1}={_ms(t)}" for i, t in enumerate(report["first_turn_ttft"]))
    print(f"cold single prefill (first-turn prompt alone, uncached) ttft ms: "
          f"{_ms(report['cold_single_ttft'])}", file=out)
    print(f"first-turn ttft ms per user: {per_user}", file=out)
    note = "" if report.get("stagger") else "  (users start together: use --stagger)"
    print(f"staggered ratio (slowest first turn of users 2..n / user 1's): "
          f"{_ratio(report['staggered_ratio'])}, their mean / user 1's: "
          f"{_ratio(report.get('staggered_mean_ratio'))}{note}", file=out)
    print(f"at-once ratio (slowest first turn / cold single prefill): {_ratio(report['at_once_ratio'])}",
          file=out)
