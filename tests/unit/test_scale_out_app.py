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
