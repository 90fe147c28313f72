"""An engine as data: what ``kvllama serve`` loads, in a form that can be sent to another process.

Scale-out (kvllama.ray) starts one engine per replica, in Ray worker
processes: they receive an :class:`EngineSpec` (plain, picklable fields)
and build the same engine ``kvllama serve`` would. The CLI builds its own
engine through the same :meth:`EngineSpec.build`, so the two cannot drift.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kvllama.api.engine import Engine
from kvllama.kvcache import CacheConfig


@dataclass(frozen=True)
class EngineSpec:
    model_id: str
    path: str | None = None  # None: the embedded default model
    options: dict[str, Any] = field(default_factory=dict)
    # LoRA adapters loaded at start: (path, scale); the file name is the id.
    loras: tuple[tuple[str, float], ...] = ()
    cache: CacheConfig | None = field(default_factory=CacheConfig)
    thinking_key: str | None = None
    # Further models, registered (loaded on first use): (engine id, path, their own load options
    # over ``options``: keep_alive and "adapters" ([PATH[:SCALE], ...]) too).
    more_models: tuple[tuple[str, str | None, dict[str, Any]], ...] = ()
    # Engine(...) keywords for the models in memory: max_loaded_models, max_memory, keep_alive.
    budget: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Engine:
        if self.options.get("canonical_decode"):
            # Before llama.cpp's first matmul, when ggml reads it (docs/measured/exactness.md).
            os.environ.setdefault("GGML_CPU_TILED_MM", "0")
        engine = Engine(cache=self.cache, thinking_key=self.thinking_key, **self.budget)
        try:
            engine.load_model(self.model_id, self.path, **self.options)
            for path, scale in self.loras:
                engine.load_adapter(self.model_id, Path(path).stem, path, scale)
            for model_id, path, own in self.more_models:
                own = dict(own)
                adapters = own.pop("adapters", None) or []
                engine.register_model(model_id, path, **{**self.options, **own})
                for spec in adapters:
                    adapter_path, scale = parse_lora(spec)
                    engine.models.remember_adapter(model_id, Path(adapter_path).stem, adapter_path, scale)
        except BaseException:
            engine.close()
            raise
        return engine

    def with_cache_dirs(self, suffix: str) -> EngineSpec:
        """The same engine with its shm and disk tiers in their own subdirectories.

        Two engines must never share a tier directory: each adopts, evicts and
        deletes the files it finds there.
        """
        if self.cache is None:
            return self
        cache = replace(
            self.cache,
            shm_dir=None if self.cache.shm_dir is None else os.path.join(self.cache.shm_dir, suffix),
            disk_dir=None if self.cache.disk_dir is None else os.path.join(self.cache.disk_dir, suffix),
        )
        return replace(self, cache=cache)


def parse_lora(spec: str) -> tuple[str, float]:
    """``PATH[:SCALE]`` (a path that exists as given wins over a trailing ``:x``)."""
    if os.path.exists(spec):
        return spec, 1.0
    path, _, scale = spec.rpartition(":")
    if not path:
        return spec, 1.0
    return path, float(scale)
