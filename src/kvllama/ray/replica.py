"""One replica: a whole kvllama Engine (its own decode loop and cache tiers) in a Ray Serve replica.

The ingress calls these methods through a deployment handle; the first
argument of each is the :class:`~kvllama.ray.policy.RouteInfo` the router
reads (the replica itself ignores it). Ray Serve calls
:meth:`KvllamaReplica.record_routing_stats` every
``request_routing_stats_period_s``: that is how the router learns what each
replica holds (api/probes.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ray import serve

from kvllama.api.engine_spec import EngineSpec
from kvllama.api.probes import RoutingSnapshot
from kvllama.errors import KvllamaError
from kvllama.events import Event
from kvllama.ray.policy import RouteInfo
from kvllama.ray.router import encode_stats
from kvllama.request import GenerationRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Admitted:
    """The first item of a generation stream: the request was queued on ``replica``."""

    request_id: str
    replica: str


@dataclass(frozen=True)
class Refused:
    """The first and only item when the replica refused the request (the typed error)."""

    error: KvllamaError


@dataclass(frozen=True)
class ReplicaReport:
    """What a replica reports to the router: per-model snapshots and its cache counters."""

    replica: str
    snapshots: tuple[RoutingSnapshot, ...]
    cache: dict[str, Any]
    prompt_reuse: dict[str, dict[str, Any]]


class KvllamaReplica:
    def __init__(self, spec: EngineSpec) -> None:
        context = serve.get_replica_context()
        self.replica_id = context.replica_id.unique_id
        rank = getattr(context.rank, "rank", None)
        # Each replica gets its own shm and disk tier directories (a rank survives restarts).
        self.spec = spec.with_cache_dirs(f"replica-{rank if rank is not None else self.replica_id}")
        self.engine = self.spec.build()

    async def generate(
        self, route: RouteInfo, model_id: str, request: GenerationRequest
    ) -> AsyncIterator[Admitted | Refused | Event]:
        try:
            stream = await self.engine.asubmit(model_id, request)
        except KvllamaError as exc:
            yield Refused(exc)
            return
        yield Admitted(stream.id, self.replica_id)
        # Leaving this loop early (the ingress cancelled: the client went away)
        # closes the stream, which cancels the request and frees its slot.
        async for event in stream:
            yield event

    async def ping(self, route: RouteInfo) -> str:
        """The ingress calls it once at start, so its router exists (and gathers reports) before traffic."""
        return self.replica_id

    async def embed(self, route: RouteInfo, model_id: str, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.engine.embed, model_id, texts)

    async def end_session(self, route: RouteInfo, session_id: str, model_id: str | None,
                          cache_salt: str | None) -> bool:
        return await asyncio.to_thread(self.engine.end_session, session_id, model_id, cache_salt)

    async def fork_session(self, route: RouteInfo, model_id: str, session_id: str, new_id: str,
                           cache_salt: str | None) -> None:
        await asyncio.to_thread(self.engine.fork_session, model_id, session_id, new_id, cache_salt)

    async def record_routing_stats(self) -> dict[str, Any]:
        report = await asyncio.to_thread(self._report)
        return encode_stats(report)

    def _report(self) -> ReplicaReport:
        snapshots, reuse = [], {}
        for info in self.engine.list_models():
            try:
                snapshots.append(self.engine.routing_snapshot(info.id))
                reuse[info.id] = info.prompt_reuse
            except KvllamaError:  # unloaded meanwhile
                log.debug("model %s vanished while reporting", info.id)
        return ReplicaReport(self.replica_id, tuple(snapshots), self.engine.cache_metrics(), reuse)

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()
