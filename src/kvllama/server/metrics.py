"""Prometheus metrics, one registry per app.

A per-app :class:`CollectorRegistry` (not the process-global default) lets
several apps live in one process (tests, a router in front of replicas)
without "duplicated timeseries" errors. Queue depth and in-flight counts are
read from the engine when scraped instead of being tracked by the HTTP layer,
so they count Python API callers too and can never drift.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kvllama.api.engine import Engine
from kvllama.results import CompletionResult
from kvllama.server.config import CacheMetricsProvider

log = logging.getLogger("kvllama.server")

_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# Finished generation requests the status page lists (GET /status/requests).
RECENT_REQUESTS = 50


class RecentRequests:
    """A bounded ring of the last finished generation requests, newest last; thread-safe."""

    def __init__(self, size: int = RECENT_REQUESTS) -> None:
        self._ring: deque[dict[str, Any]] = deque(maxlen=size)
        self._lock = threading.Lock()
        self._count = 0

    def add(self, model: str, result: CompletionResult, ttft: float | None, seconds: float) -> None:
        s = result.stats
        with self._lock:
            self._count += 1
            self._ring.append({
                "n": self._count, "finished_at": time.time(), "model": model,
                "prompt_tokens": s.prompt_tokens, "cached_tokens": result.cache_delta.read,
                "generated_tokens": s.generated_tokens, "finish_reason": result.finish_reason,
                "cache_hit_kind": str(result.cache_hit_kind),
                "ttft_ms": None if ttft is None else round(ttft * 1000, 1),
                "tokens_per_second": round(s.tokens_per_second, 1), "seconds": round(seconds, 3),
            })

    def snapshot(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Newest first, at most ``limit``."""
        with self._lock:
            items = list(self._ring)
        items.reverse()
        return items if limit is None else items[:limit]

    @property
    def count(self) -> int:
        """Requests recorded since the server started (also those the ring has dropped)."""
        return self._count


class ServerMetrics:
    """Everything /metrics exports for one app."""

    def __init__(
        self,
        engine: Engine,
        served: Callable[[], Mapping[str, str]],
        cache_provider: CacheMetricsProvider | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("kvllama_http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.prompt_tokens = Counter("kvllama_prompt_tokens", "Prompt tokens of finished requests",
                                     ["model"], registry=r)
        self.cached_prompt_tokens = Counter(
            "kvllama_cached_prompt_tokens", "Prompt tokens restored from the KV cache", ["model"], registry=r)
        self.generated_tokens = Counter("kvllama_generated_tokens", "Generated tokens", ["model"], registry=r)
        self.finished = Counter("kvllama_requests_finished", "Generation requests by finish reason",
                                ["model", "reason"], registry=r)
        self.drafted = Counter("kvllama_speculative_drafted_tokens", "Draft tokens verified (speculation)",
                               ["model"], registry=r)
        self.accepted = Counter("kvllama_speculative_accepted_tokens", "Draft tokens accepted (speculation)",
                                ["model"], registry=r)
        self.ttft = Histogram("kvllama_time_to_first_token_seconds",
                              "From request arrival to the first generated token", ["model"],
                              buckets=_TTFT_BUCKETS, registry=r)
        self.itl = Histogram("kvllama_inter_token_latency_seconds", "Between consecutive generated tokens",
                             ["model"], buckets=_ITL_BUCKETS, registry=r)
        self.recent = RecentRequests()
        r.register(_EngineCollector(engine, served))
        if cache_provider is not None:
            r.register(_CacheCollector(cache_provider))

    def observe_result(
        self, model: str, result: CompletionResult, ttft: float | None = None, seconds: float = 0.0
    ) -> None:
        """Count a finished request; ``ttft`` and ``seconds`` (from arrival) go to the recent ring."""
        self.recent.add(model, result, ttft, seconds)
        self.prompt_tokens.labels(model).inc(result.stats.prompt_tokens)
        self.cached_prompt_tokens.labels(model).inc(result.cache_delta.read)
        self.generated_tokens.labels(model).inc(result.stats.generated_tokens)
        self.finished.labels(model, result.finish_reason).inc()
        self.drafted.labels(model).inc(result.stats.drafted_tokens)
        self.accepted.labels(model).inc(result.stats.accepted_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector(Collector):
    """Queue depth and in-flight requests per served model, read at scrape time."""

    def __init__(self, engine: Engine, served: Callable[[], Mapping[str, str]]) -> None:
        self._engine = engine
        self._served = served

    def collect(self) -> Iterator[Metric]:
        queue = GaugeMetricFamily("kvllama_queue_depth", "Requests waiting for a sequence slot",
                                  labels=["model"])
        in_flight = GaugeMetricFamily("kvllama_in_flight", "Requests holding a sequence slot",
                                      labels=["model"])
        infos = {info.id: info for info in self._engine.list_models()}
        for name, model_id in self._served().items():
            info = infos.get(model_id)
            if info is not None:
                queue.add_metric([name], info.pending)
                in_flight.add_metric([name], info.in_flight)
        yield queue
        yield in_flight


class _CacheCollector(Collector):
    """Exports whatever the cache-metrics hook returns, as kvllama_cache_<name>."""

    def __init__(self, provider: CacheMetricsProvider) -> None:
        self._provider = provider

    def collect(self) -> Iterator[Metric]:
        try:
            values = dict(self._provider())
        except Exception:  # a broken hook must not break /metrics
            log.exception("cache_metrics_provider failed")
            return
        for name, value in sorted(values.items()):
            yield from _families(f"kvllama_cache_{name}", value)


def _families(name: str, value: Any) -> Iterator[Metric]:
    """A nested mapping ({tier: {bytes, rows}}) becomes one labelled family per inner field."""
    if isinstance(value, Mapping) and value and all(isinstance(v, Mapping) for v in value.values()):
        fields = sorted({f for inner in value.values() for f in inner})
        for f in fields:
            yield _family(f"{name}_{f}", {k: inner.get(f, 0) for k, inner in value.items()})
    else:
        yield _family(name, value)


def _family(name: str, value: Any) -> Metric:
    is_counter = name.endswith("_total")
    base = name[: -len("_total")] if is_counter else name
    cls = CounterMetricFamily if is_counter else GaugeMetricFamily
    if isinstance(value, Mapping):
        family = cls(base, f"KV cache metric {base}", labels=["key"])
        for key, v in sorted(value.items()):
            family.add_metric([str(key)], float(v))
        return family
    return cls(base, f"KV cache metric {base}", value=float(value))
