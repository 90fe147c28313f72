"""``kvllama bench route``: cache-affinity routing against Ray Serve's default, on one workload.

Per router ("affinity": kvllama's, "pow2": Ray Serve's power of two
choices), a fresh local deployment of N replicas (fresh cache tiers, so
neither run inherits the other's rows) serves the same multi-turn chat
workload: ``groups`` groups of users, each group sharing a system prompt,
every user holding its own conversation for ``rounds`` turns (the first
message carries ``first_words`` words of the user's own material, later
questions ``question_words``: a conversation's own context outweighs each
new question, as in a chat about a document), all users at once, each
pausing a seeded random 0..``think`` seconds before every turn (users of a
real service do not move in lockstep; without the pauses the arrival order
repeats every round and any deterministic router keeps each user on one
replica by accident). Reported per router: TTFT mean and p90 over all turns
and over the later turns (round 2 on, where a conversation's history is
cached on one replica), the share of prompt tokens served from a replica's
cache, and how the router decided. The figures are about routing: on a small machine the
replicas share its cores, so absolute TTFTs are slow, but both routers face
the same machine.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from typing import Any, TextIO

import httpx

from kvllama.api.engine_spec import EngineSpec
from kvllama.bench.serve import nonce_word, question_text, stream_request, system_prompt
from kvllama.server.config import ServerConfig

ROUTERS = ("affinity", "pow2")


def run_bench_route(
    spec: EngineSpec,
    *,
    replicas: int = 2,
    groups: int = 2,
    users_per_group: int = 2,
    rounds: int = 4,
    system_tokens: int = 400,
    first_words: int = 250,
    question_words: int = 15,
    max_tokens: int = 32,
    think: float = 2.0,
    port: int = 8199,
    routers: tuple[str, ...] = ROUTERS,
) -> dict[str, Any]:
    """Run the workload once per router; the report holds both and the ratios."""
    from kvllama.ray import local

    settings = {"replicas": replicas, "groups": groups, "users_per_group": users_per_group, "rounds": rounds,
                "system_tokens": system_tokens, "first_words": first_words, "question_words": question_words,
                "max_tokens": max_tokens,
                "think": think}
    results = {}
    for router in routers:
        shm = tempfile.mkdtemp(prefix=f"kvllama-bench-route-{router}-")
        run_spec = spec
        if spec.cache is not None:
            run_spec = replace(spec, cache=replace(spec.cache, shm_dir=shm, disk_dir=None))
        config = ServerConfig(models={"default": spec.model_id}, default_model="default", max_queue=None)
        try:
            url = local.start(run_spec, config, replicas=replicas, port=port, router=router)
            records = asyncio.run(_workload(url, settings))
            routed = httpx.get(f"{url}/status", timeout=60).json().get("scale_out", {}).get("routed", {})
            results[router] = summarize(records, rounds) | {"routed": routed}
        finally:
            local.stop()
            shutil.rmtree(shm, ignore_errors=True)
    report: dict[str, Any] = {"settings": settings, "routers": results}
    if "affinity" in results and "pow2" in results:
        a, p = results["affinity"]["later"], results["pow2"]["later"]
        report["later_mean_ratio"] = p["ttft_mean"] / a["ttft_mean"] if a["ttft_mean"] else None
        report["later_p90_ratio"] = p["ttft_p90"] / a["ttft_p90"] if a["ttft_p90"] else None
    return report


async def _workload(url: str, settings: dict[str, Any]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    systems = [f"{nonce_word()} {system_prompt(settings['system_tokens'])}"
               for _ in range(settings["groups"])]
    async with httpx.AsyncClient(base_url=url, timeout=1800) as client:
        await asyncio.gather(*(
            _conversation(client, settings, g, g * settings["users_per_group"] + u, systems[g], records)
            for g in range(settings["groups"]) for u in range(settings["users_per_group"])))
    return records


async def _conversation(client: httpx.AsyncClient, settings: dict[str, Any], group: int, user: int,
                        system: str, records: list[dict[str, Any]]) -> None:
    messages = [{"role": "system", "content": system}]
    pauses = random.Random(f"kvllama-bench-route:{user}")
    for r in range(settings["rounds"]):
        await asyncio.sleep(pauses.uniform(0, settings["think"]))
        words = settings["first_words"] if r == 0 else settings["question_words"]
        messages.append({"role": "user", "content": question_text(user, r, words)})
        body = {"model": "default", "messages": list(messages), "max_tokens": settings["max_tokens"],
                "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
        record = await stream_request(client, "/v1/chat/completions", body)
        record.update(group=group, user=user, round=r + 1)
        records.append(record)
        if "error" in record:
            return
        messages.append({"role": "assistant", "content": record["text"]})


def summarize(records: list[dict[str, Any]], rounds: int) -> dict[str, Any]:
    ok = [r for r in records if "error" not in r]
    later = [r for r in ok if r["round"] > 1]
    homes: dict[int, set[str]] = {}
    for r in ok:
        homes.setdefault(r["user"], set()).add(r.get("replica") or "")
    return {
        "requests": len(ok), "errors": [r["error"] for r in records if "error" in r],
        "all": _stats([r["ttft"] for r in ok]), "first": _stats([r["ttft"] for r in ok if r["round"] == 1]),
        "later": _stats([r["ttft"] for r in later]),
        "cache_hit_rate": _hit_rate(ok),
        "later_cache_hit_rate": _hit_rate(later),
        "users_on_one_replica": sum(1 for h in homes.values() if len(h) == 1),
        "users": len(homes),
    }


def _hit_rate(records: list[dict[str, Any]]) -> float:
    prompt = sum(r["prompt_tokens"] for r in records)
    return sum(r["cached_tokens"] for r in records) / prompt if prompt else 0.0


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"ttft_mean": None, "ttft_p90": None}
    ordered = sorted(values)
    p90 = ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]  # nearest rank
    return {"ttft_mean": sum(ordered) / len(ordered), "ttft_p90": p90}


def print_route(report: dict[str, Any], file: TextIO | None = None) -> None:
    out = file or sys.stdout
    s = report["settings"]
    print(f"kvllama bench route  replicas={s['replicas']}  {s['groups']} groups x {s['users_per_group']} "
          f"users  rounds={s['rounds']}  system prompt~{s['system_tokens']} tok  "
          f"words: first {s['first_words']}, then {s['question_words']}  "
          f"max_tokens={s['max_tokens']}  think<={s['think']}s",
          file=out)
    print(f"(all users at once; {os.cpu_count()} cores shared by the replicas: "
          "the figures are about routing)", file=out)
    print(f"{'router':<9} {'ttft mean':>10} {'p90':>8} {'later mean':>11} {'later p90':>10} {'hit rate':>9} "
          f"{'later hit':>10} {'one home':>9}  routed", file=out)
    for name, r in report["routers"].items():
        routed = " ".join(f"{k}={v}" for k, v in sorted(r["routed"].items())) or "-"
        print(f"{name:<9} {_ms(r['all']['ttft_mean']):>10} {_ms(r['all']['ttft_p90']):>8} "
              f"{_ms(r['later']['ttft_mean']):>11} {_ms(r['later']['ttft_p90']):>10} "
              f"{r['cache_hit_rate']:>9.0%} {r['later_cache_hit_rate']:>10.0%} "
              f"{r['users_on_one_replica']:>4}/{r['users']:<4}  {routed}", file=out)
        for err in r["errors"]:
            print(f"  error: {err}", file=out)
    if report.get("later_mean_ratio") is not None:
        print(f"later turns, pow2 / affinity: mean TTFT {report['later_mean_ratio']:.2f}x, "
              f"p90 {report['later_p90_ratio']:.2f}x", file=out)
    print(f"(ms; finished {time.strftime('%H:%M:%S')})", file=out)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f}"
