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

import math
import pickle
import time
from collections import Counter, OrderedDict
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from kvllama.ray import registry
from kvllama.ray.policy import AffinityPolicy, Decision, RouteInfo, RouteKind

STATS_KEY = "kvllama"
# Decisions kept for /status (and for tests that check where each turn went).
MAX_RECENT_DECISIONS = 1024
# A plan whose request Ray never reports (rejected, then dropped) stops counting as load after this.
PLAN_TTL_SECONDS = 60.0


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
        self.clock = time.monotonic
        self.counts: Counter[RouteKind] = Counter()
        # route_id -> (replica unique id, kind), for /status and tests.
        self.recent: OrderedDict[str, tuple[str, str]] = OrderedDict()
        # id(pending request) -> the request, the plan for it and when it was first planned,
        # until Ray reports where it went (a request cancelled before that never reports).
        self._pending: OrderedDict[int, tuple[PendingRequest, Decision, float]] = OrderedDict()
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
        ranked = self.policy.rank(info, list(by_id), self._planned(pending_request))
        if not ranked:
            return []
        if pending_request is None:
            return [[by_id[r] for r in tier] for tier in self.policy.tiers(ranked, math.inf)]
        now = self.clock()
        first_planned = self._pending.get(id(pending_request), (None, None, now))[2]
        self._pending[id(pending_request)] = (pending_request, ranked[0], first_planned)
        self._pending.move_to_end(id(pending_request))
        while len(self._pending) > MAX_RECENT_DECISIONS:
            self._pending.popitem(last=False)
        # Ray sleeps between retries instead of asking again at once (the first choice may be
        # busy for a moment: policy.tiers).
        pending_request.routing_context.should_backoff = True
        # Counted from the first time this router ranked it: a request that sat in Ray's queue
        # behind others has not been refused by its first choice yet.
        return [[by_id[r] for r in tier] for tier in self.policy.tiers(ranked, now - first_planned)]

    def _planned(self, current: PendingRequest | None) -> Counter[str]:
        """Requests ranked but not yet routed, per first choice (``current`` left out)."""
        planned: Counter[str] = Counter()
        horizon = self.clock() - PLAN_TTL_SECONDS
        for key, (request, decision, first_planned) in list(self._pending.items()):
            future = request.future
            if first_planned < horizon or (future.done() and (future.cancelled() or future.exception())):
                self._pending.pop(key, None)
            elif request is not current:  # waiting, or sent with Ray's report still to come
                planned[decision.replica] += 1
        return planned

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        chosen = replica_id.unique_id
        entry = self._pending.pop(id(pending_request), None)
        planned = entry[1] if entry is not None else None
        kind = planned.kind if planned is not None and planned.replica == chosen else RouteKind.LOAD
        self.counts[kind] += 1
        info = _route_info(pending_request) or RouteInfo(model_id="")
        self.policy.routed(info, chosen, _request_id(pending_request))
        if info.route_id:
            self.recent[info.route_id] = (chosen, str(kind))
            while len(self.recent) > MAX_RECENT_DECISIONS:
                self.recent.popitem(last=False)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        self.policy.completed(replica_id.unique_id, internal_request_id)

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


def _request_id(pending: PendingRequest) -> str:
    """Ray's id for the call, as ``on_request_completed`` will name it."""
    metadata = pending.metadata
    return getattr(metadata, "internal_request_id", "") or f"id:{id(pending)}"
