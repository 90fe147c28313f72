"""The Ray Serve request router: :class:`~kvllama.ray.policy.AffinityPolicy` inside Ray's routing loop.

Ray Serve calls :meth:`CacheAffinityRouter.choose_replicas` for every call
the ingress makes through its handle to the replicas, with the call's
arguments; the first argument of every kvllama replica call is a
:class:`~kvllama.ray.policy.RouteInfo` (model, prompt tokens, salt,
session). Replicas report their routing snapshot through Ray's
``record_routing_stats`` hook (pickled to bytes, so Ray's controller never
needs kvllama's classes), which reaches each replica wrapper's
``routing_stats``.

Every router in the process registers in :data:`kvllama.ray.registry.ROUTERS`,
so the ingress's /metrics and /status can show what routed where and why.
Ray Serve pickles this module *by value* into the processes that route
(cloudpickle), so module-level state here would be a copy per process: the
registry lives in its own module, referenced as ``registry.ROUTERS``.
"""

from __future__ import annotations

import pickle
from collections import Counter, OrderedDict
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from kvllama.ray import registry
from kvllama.ray.policy import AffinityPolicy, Decision, RouteInfo, RouteKind

STATS_KEY = "kvllama"
# Decisions kept for /status (and for tests that check where each turn went).
MAX_RECENT_DECISIONS = 1024


def encode_stats(report: Any) -> dict[str, Any]:
    """A replica's report (kvllama.ray.replica.ReplicaReport) as Ray routing stats."""
    return {STATS_KEY: pickle.dumps(report)}


def decode_stats(stats: dict[str, Any] | None) -> Any:
    raw = (stats or {}).get(STATS_KEY)
    return pickle.loads(raw) if isinstance(raw, bytes) else None




class CacheAffinityRouter(RequestRouter):
    """Sticky -> longest cached prefix -> least loaded (see kvllama.ray.policy)."""

    def initialize_state(self, **kwargs: Any) -> None:
        self.policy = AffinityPolicy(**kwargs)
        self.counts: Counter[RouteKind] = Counter()
        # route_id -> (replica unique id, kind), for /status and tests.
        self.recent: OrderedDict[str, tuple[str, str]] = OrderedDict()
        # id(pending request) -> the plan for it, until Ray reports where it went (bounded:
        # a request cancelled before it is routed never reports).
        self._pending: OrderedDict[int, Decision] = OrderedDict()
        self._seen_stats: dict[str, int] = {}
        # replica unique id -> its last ReplicaReport (for /metrics and /status).
        self.reports: dict[str, Any] = {}
        registry.ROUTERS.add(self)

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        self._absorb_stats(candidate_replicas)
        info = _route_info(pending_request)
        if info is None:  # not a kvllama call: least loaded first
            info = RouteInfo(model_id="")
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        ranked = self.policy.rank(info, list(by_id))
        if pending_request is not None and ranked:
            self._pending[id(pending_request)] = ranked[0]
            while len(self._pending) > MAX_RECENT_DECISIONS:
                self._pending.popitem(last=False)
        return [[by_id[ranked[0].replica]], [by_id[d.replica] for d in ranked[1:]]] if ranked else []

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        chosen = replica_id.unique_id
        planned = self._pending.pop(id(pending_request), None)
        kind = planned.kind if planned is not None and planned.replica == chosen else RouteKind.LOAD
        self.counts[kind] += 1
        info = _route_info(pending_request)
        if info is None:
            return
        self.policy.routed(info, chosen)
        if info.route_id:
            self.recent[info.route_id] = (chosen, str(kind))
            while len(self.recent) > MAX_RECENT_DECISIONS:
                self.recent.popitem(last=False)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        self.policy.completed(replica_id.unique_id)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.policy.forget(replica_id.unique_id)
        self.reports.pop(replica_id.unique_id, None)

    def refresh(self) -> None:
        """Take in the replicas' latest reports now (routing does it on every request)."""
        self._absorb_stats(list(self.curr_replicas.values()))

    def _absorb_stats(self, replicas: list[RunningReplica]) -> None:
        for replica in replicas:
            stats = replica.routing_stats
            rid = replica.replica_id.unique_id
            if self._seen_stats.get(rid) == id(stats):
                continue
            report = decode_stats(stats)
            if report is not None:
                self.policy.report(rid, report.snapshots)
                self.reports[rid] = report
                self._seen_stats[rid] = id(stats)


def _route_info(pending: PendingRequest | None) -> RouteInfo | None:
    if pending is None or not pending.args:
        return None
    first = pending.args[0]
    return first if isinstance(first, RouteInfo) else None
