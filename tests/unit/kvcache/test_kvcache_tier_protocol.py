"""The stack asks tiers what they can do (``persistent``, ``stores_packed``, ``scan``), never their class."""

from __future__ import annotations

from typing import Any

import kvllama
import kvllama.kvcache.cache as cache_module
from kvllama.kvcache.tiers import FileTier, RamTier


class Proxy:
    """A tier of no known class: it forwards everything to the tier it wraps."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_cache_config_is_exported_from_the_package():
    assert kvllama.CacheConfig is cache_module.CacheConfig
    assert {"CacheConfig", "KvCache"} <= set(kvllama.__all__)


def test_tiers_declare_their_capabilities(tmp_path):
    ram = RamTier(1 << 20)
    assert (ram.persistent, ram.stores_packed, ram.memory_backed) == (False, False, True)
    assert ram.scan().metas == []
    disk = FileTier("disk", tmp_path, 1 << 20, 16, memory_backed=False)
    assert (disk.persistent, disk.stores_packed) == (True, True)


def test_stack_adopts_packs_and_persists_through_any_tier(monkeypatch, make_cache, root, blob):
    built = cache_module.build_tiers
    monkeypatch.setattr(cache_module, "build_tiers", lambda config: [Proxy(t) for t in built(config)])
    first = make_cache(disk=True)
    assert first.save(root, list(range(64)), blob(1), "cold", sync=True) is not None
    first.close(timeout=5)  # persist_ram_on_close: the RAM row goes down to the disk proxy
    assert first.metrics()["seconds"]["pack"] > 0  # packed by the stack before the file write
    second = make_cache(disk=True, ram_bytes=0)
    assert [r.tier for r in second.rows()] == ["disk"]  # adopted by scan() through the proxy
