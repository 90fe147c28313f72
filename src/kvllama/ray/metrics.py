"""/metrics of a replicated deployment: each replica's load and digest, and the router's decisions.

Registered on the ingress app's registry beside the usual families
(server/metrics.py); everything is read from the replicas' last reports
and the routers' counters at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_REPLICA_GAUGES = {
    "pending": "Requests queued on the replica",
    "in_flight": "Requests holding a sequence slot on the replica",
    "free_slots": "Free sequence slots on the replica",
    "cached_blocks": "64-token prefix blocks the replica holds (its routing digest)",
    "sessions": "Sticky sessions parked on the replica",
}


class ScaleOutCollector(Collector):
    def __init__(self, status: Any) -> None:
        self._status = status  # ReplicatedEngine.replica_status

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        routed = CounterMetricFamily("kvllama_routed_requests", "Requests the router sent, by reason",
                                     labels=["kind"])
        for kind in ("sticky", "affinity", "load"):
            routed.add_metric([kind], float(status["routed"].get(kind, 0)))
        yield routed
        gauges = {k: GaugeMetricFamily(f"kvllama_replica_{k}", h, labels=["replica", "model"])
                  for k, h in _REPLICA_GAUGES.items()}
        reuse = CounterMetricFamily("kvllama_replica_reused_prompt_tokens",
                                    "Prompt tokens the replica reused, by source",
                                    labels=["replica", "model", "source"])
        for replica, body in sorted(status["replicas"].items()):
            for model, fields in body["models"].items():
                for key, family in gauges.items():
                    family.add_metric([replica, model], float(fields[key]))
            for model, counts in body["prompt_reuse"].items():
                for source, n in counts.get("tokens", {}).items():
                    reuse.add_metric([replica, model, source], float(n))
        yield from gauges.values()
        yield reuse
