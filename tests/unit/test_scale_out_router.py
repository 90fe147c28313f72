"""kvllama's Ray Serve router (kvllama.ray.router) driven as Ray's routing loop drives it, no cluster.

Ray calls ``choose_replicas`` for a pending request (again on every retry),
probes the first tier's replicas and falls to the next tier when none
answers in time; ``on_request_routed`` reports where a request went.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from types import SimpleNamespace

from ray.serve.request_router import PendingRequest

from kvllama.ray.policy import RouteInfo, RouteKind
from kvllama.ray.router import CacheAffinityRouter

SYSTEM = tuple(range(1000, 1000 + 320))
_ids = itertools.count()


def replica(name: str) -> SimpleNamespace:
    return SimpleNamespace(replica_id=SimpleNamespace(unique_id=name), routing_stats=None)


def router(**options: object) -> CacheAffinityRouter:
    """The router's own state only (Ray's base class wires queues and probes we do not need here)."""
    r = object.__new__(CacheAffinityRouter)
    r.initialize_state(**options)
    return r


def pending(tokens: tuple[int, ...], *, age: float = 0.0, request_id: str = "") -> PendingRequest:
    info = RouteInfo(model_id="m", tokens=tokens)
    metadata = SimpleNamespace(internal_request_id=request_id or f"req-{next(_ids)}")
    return PendingRequest(args=[info], kwargs={}, metadata=metadata,  # type: ignore[arg-type]
                          created_at=time.time() - age)


def names(tiers: list[list[SimpleNamespace]]) -> list[list[str]]:
    return [[r.replica_id.unique_id for r in tier] for tier in tiers]


async def _route(r: CacheAffinityRouter, request: PendingRequest, replicas: list[SimpleNamespace],
                 to: str | None = None) -> list[list[str]]:
    tiers = names(await r.choose_replicas(replicas, request))
    chosen = to or tiers[0][0]
    request.future.set_result(chosen)
    r.on_request_routed(request, SimpleNamespace(unique_id=chosen), None)
    return tiers


def test_a_conversation_waits_for_its_home_replica_before_any_other_is_offered():
    async def scenario() -> None:
        r = router(fallback_after_seconds=5.0)
        replicas = [replica("a"), replica("b")]
        first = pending((*SYSTEM, 1), request_id="turn-1")
        home = (await _route(r, first, replicas))[0][0]
        r.on_request_completed(SimpleNamespace(unique_id=home), "turn-1")  # the next turn follows the reply
        later = pending((*SYSTEM, 1, 2, 3), request_id="turn-2")
        # Ray asks again after every probe that went unanswered: still only the home.
        for _ in range(3):
            assert names(await r.choose_replicas(replicas, later)) == [[home]]
        assert later.routing_context.should_backoff  # Ray sleeps between those retries
        await _route(r, later, replicas, to=home)
        r.on_request_completed(SimpleNamespace(unique_id=home), "turn-2")
        assert r.counts[RouteKind.AFFINITY] == 1
        # Time in Ray's queue before the router first ranks a request does not count.
        queued = pending((*SYSTEM, 1, 2, 3, 4), age=60.0)
        assert names(await r.choose_replicas(replicas, queued)) == [[home]]
        # Long past the window, the other replica is the fallback behind the home.
        start = r.clock()
        r.clock = lambda: start + 6.0
        other = "b" if home == "a" else "a"
        assert names(await r.choose_replicas(replicas, queued)) == [[home], [other]]

    asyncio.run(scenario())


def test_a_burst_of_cold_prompts_ranked_before_any_is_routed_spreads_over_the_replicas():
    async def scenario() -> None:
        r = router()
        replicas = [replica("a"), replica("b")]
        burst = [pending((i,) * 100) for i in range(4)]
        firsts = [names(await r.choose_replicas(replicas, p))[0][0] for p in burst]
        assert sorted(firsts) == ["a", "a", "b", "b"]
        # Asking again for the same request does not count it twice.
        assert names(await r.choose_replicas(replicas, burst[0]))[0][0] == firsts[0]
        # Cancelled before routing: no longer load.
        for p in burst[1:]:
            p.future.cancel()
        assert names(await r.choose_replicas(replicas, pending((9,) * 100)))[0][0] != firsts[0]

    asyncio.run(scenario())


def test_a_request_reported_elsewhere_than_planned_counts_as_load():
    async def scenario() -> None:
        r = router()
        replicas = [replica("a"), replica("b")]
        await _route(r, pending((*SYSTEM, 1)), replicas)
        request = pending((*SYSTEM, 1, 2))
        tiers = names(await r.choose_replicas(replicas, request))
        other = "b" if tiers[0][0] == "a" else "a"
        request.future.set_result(other)
        r.on_request_routed(request, SimpleNamespace(unique_id=other), None)
        assert r.counts[RouteKind.LOAD] == 2  # the cold first one and this fallback

    asyncio.run(scenario())
