"""/metrics exports the engine's real cache metrics (nested per-tier figures included)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from kvllama.kvcache import CacheConfig
from kvllama.server import ServerConfig, create_app


def test_cache_metrics_from_the_engine_are_exported(stub_engine):
    engine, _ = stub_engine(cache=CacheConfig(shm_dir=None, disk_dir=None), n_ctx_seq=512, n_batch=256)
    engine.complete("s", "x" * 200, max_tokens=2, temperature=0)
    # The cold save was handed to the writer pool during prefill and is published
    # asynchronously; wait for the pool itself to report it done, never on the clock.
    assert engine.cache.flush(10)
    config = ServerConfig(models={"s": "s"}, default_model="s", cache_metrics_provider=engine.cache_metrics)
    body = TestClient(create_app(engine, config)).get("/metrics").text
    assert 'kvllama_cache_saves{key="cold"} 1.0' in body
    assert 'kvllama_cache_tiers_rows{key="ram"} 2.0' in body  # the cold row and the finish row
    assert "kvllama_cache_misses 1.0" in body
    assert "kvllama_cache_pending_saves 0.0" in body
