"""Prometheus metrics, one registry per app.

A per-app :class:`CollectorRegistry` (not the process-global default) lets
several apps live in one process (tests, a router in front of replicas)
without "duplicated timeseries" errors. Queue depth and in-flight counts are
read from the engine when scraped instead of being tracked by the HTTP layer,
so they count Python API callers too and can never drift.
"""

from __future__ import annotations

import logging
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
        self.ttft = Histogram("kvllama_time_to_first_token_seconds",
                              "From request arrival to the first generated token", ["model"],
                              buckets=_TTFT_BUCKETS, registry=r)
        self.itl = Histogram("kvllama_inter_token_latency_seconds", "Between consecutive generated tokens",
                             ["model"], buckets=_ITL_BUCKETS, registry=r)
        r.register(_EngineCollector(engine, served))
        if cache_provider is not None:
            r.register(_CacheCollector(cache_provider))

    def observe_result(self, model: str, result: CompletionResult) -> None:
        self.prompt_tokens.labels(model).inc(result.stats.prompt_tokens)
        self.cached_prompt_tokens.labels(model).inc(result.cache_delta.read)
        self.generated_tokens.labels(model).inc(result.stats.generated_tokens)
        self.finished.labels(model, result.finish_reason).inc()

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
