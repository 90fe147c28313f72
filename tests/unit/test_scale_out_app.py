"""The scale-out application's pieces that need no Ray cluster: the builder and the replica header."""

from __future__ import annotations

import asyncio

import pytest
from ray.serve import Application

from kvllama.api.engine_spec import EngineSpec, parse_lora
from kvllama.kvcache import CacheConfig
from kvllama.ray.deployment import ReplicaHeader, app_builder, build_app
from kvllama.ray.remote_engine import served_by
from kvllama.server.config import ServerConfig


def test_the_app_builds_for_both_routers_and_refuses_others():
    spec = EngineSpec(model_id="default", options={"n_threads": 1})
    for router in ("affinity", "pow2"):
        assert isinstance(build_app(spec, ServerConfig(), replicas=2, router=router), Application)
    with pytest.raises(ValueError, match="router"):
        build_app(spec, ServerConfig(), router="random")
    assert isinstance(app_builder({"replicas": "3", "n_threads": "1", "router": "pow2"}), Application)


def test_replicas_get_their_own_tier_directories(tmp_path):
    cache = CacheConfig(shm_dir=str(tmp_path / "shm"), disk_dir=str(tmp_path / "d"))
    spec = EngineSpec(model_id="m", cache=cache)
    one, two = spec.with_cache_dirs("replica-0"), spec.with_cache_dirs("replica-1")
    assert one.cache is not None and two.cache is not None
    assert one.cache.shm_dir == str(tmp_path / "shm/replica-0")
    assert two.cache.shm_dir == str(tmp_path / "shm/replica-1")
    assert one.cache.disk_dir == str(tmp_path / "d/replica-0")
    assert EngineSpec(model_id="m", cache=None).with_cache_dirs("x").cache is None


def test_lora_specs_split_on_the_last_colon_unless_the_path_exists(tmp_path):
    assert parse_lora("a.gguf:0.5") == ("a.gguf", 0.5)
    assert parse_lora("a.gguf") == ("a.gguf", 1.0)
    odd = tmp_path / "x:2"
    odd.write_bytes(b"")
    assert parse_lora(str(odd)) == (str(odd), 1.0)


def _run(served: str | None) -> list[dict]:
    sent: list[dict] = []

    async def inner(scope, receive, send):
        holder = served_by.get()
        if served is not None and holder is not None:
            holder.append(served)
        headers = [(b"content-type", b"text/plain")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    asyncio.run(ReplicaHeader(inner)({"type": "http"}, receive, send))
    return sent


def test_the_replica_that_served_a_request_is_named_in_a_header():
    start = _run("replica-abc")[0]
    assert (b"x-kvllama-replica", b"replica-abc") in start["headers"]
    assert all(name != b"x-kvllama-replica" for name, _ in _run(None)[0]["headers"])
    assert served_by.get() is None  # reset after the request


def test_the_route_bench_summarizes_later_turns_hit_rates_and_homes():
    import io

    from kvllama.bench.route import print_route, summarize

    def rec(user, rnd, ttft, replica, cached, prompt):
        return {"user": user, "round": rnd, "ttft": ttft, "replica": replica, "cached_tokens": cached,
                "prompt_tokens": prompt}

    records = [rec(0, 1, 2.0, "a", 0, 500), rec(0, 2, 0.5, "a", 450, 600), rec(1, 1, 2.0, "b", 0, 500),
               rec(1, 2, 1.5, "a", 0, 600), {"user": 2, "round": 1, "error": "HTTP 500"}]
    s = summarize(records, rounds=2)
    assert s["requests"] == 4 and s["errors"] == ["HTTP 500"]
    assert s["later"]["ttft_mean"] == pytest.approx(1.0) and s["later"]["ttft_p90"] == 1.5
    assert s["later_cache_hit_rate"] == pytest.approx(450 / 1200)
    assert (s["users_on_one_replica"], s["users"]) == (1, 2)
    settings = {"replicas": 2, "groups": 1, "users_per_group": 2, "rounds": 2, "system_tokens": 400,
                "first_words": 250, "question_words": 15, "max_tokens": 32, "think": 2.0}
    report = {"settings": settings,
              "routers": {"affinity": {**s, "routed": {"affinity": 3}}}}
    out = io.StringIO()
    print_route(report, out)
    assert "affinity" in out.getvalue() and "1000" in out.getvalue()  # later mean in ms
