"""/metrics exports the engine's real cache metrics (nested per-tier figures included)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from kvllama.kvcache import CacheConfig
from kvllama.server import ServerConfig, create_app


def test_cache_metrics_from_the_engine_are_exported(stub_engine):
    engine, _ = stub_engine(cache=CacheConfig(shm_dir=None, disk_dir=None), n_ctx_seq=512, n_batch=256)
    engine.complete("s", "x" * 200, max_tokens=2, temperature=0)
    config = ServerConfig(models={"s": "s"}, default_model="s", cache_metrics_provider=engine.cache_metrics)
    body = TestClient(create_app(engine, config)).get("/metrics").text
    assert 'kvllama_cache_saves{key="cold"} 1.0' in body
    assert 'kvllama_cache_tiers_rows{key="ram"}' in body
    assert "kvllama_cache_misses 1.0" in body
