"""The Ray Serve application: an ingress (kvllama's HTTP app) in front of N engine replicas.

``build_app`` returns a Serve application to run locally (``kvllama serve
--replicas N`` does, see :func:`kvllama.ray.local.run`) or anywhere Ray
Serve runs; :func:`app_builder` is the same for ``serve run`` and Serve
config files (``import_path: kvllama.ray.deployment:app_builder``).

Both deployments ask Ray for no CPUs: the engines set their own llama.cpp
thread counts (``n_threads``), and Ray's CPU accounting would otherwise
refuse to place N replicas plus the ingress on a small machine.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import replace
from typing import Any

from ray import serve
from ray.serve.config import RequestRouterConfig

from kvllama.api.engine_spec import EngineSpec
from kvllama.ray.metrics import ScaleOutCollector
from kvllama.ray.policy import RouteInfo
from kvllama.ray.remote_engine import ReplicatedEngine, served_by
from kvllama.ray.replica import KvllamaReplica
from kvllama.ray.router import CacheAffinityRouter
from kvllama.server.app import create_app
from kvllama.server.config import ServerConfig

MODEL_ID = "default"  # as `kvllama serve` names its one model
REPLICA_HEADER = b"x-kvllama-replica"
# Seconds between each replica's reports to the router (its digest and load).
DEFAULT_STATS_PERIOD = 1.0
# Requests Ray lets one replica hold (its engine queues beyond its sequence slots).
MAX_ONGOING_PER_REPLICA = 256

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ReplicaHeader:
    """ASGI middleware: names the replica that served a generation in ``x-kvllama-replica``.

    The header is written when the response starts, which for a stream is
    after its first event: by then the request has been admitted on a replica.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        holder: list[str] = []
        token = served_by.set(holder)

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start" and holder:
                message["headers"] = [*message.get("headers", []), (REPLICA_HEADER, holder[-1].encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_header)
        finally:
            served_by.reset(token)


@serve.ingress()
class KvllamaIngress:
    async def __init__(self, spec: EngineSpec, config: ServerConfig, replicas: Any) -> None:
        self.engine = await asyncio.to_thread(ReplicatedEngine, spec, replicas)
        self.config = replace(config, cache_metrics_provider=self.engine.cache_metrics)
        await replicas.ping.remote(RouteInfo(spec.model_id))

    def __serve_build_asgi_app__(self) -> Any:
        app = create_app(self.engine, self.config)
        app.state.kvllama.metrics.registry.register(ScaleOutCollector(self.engine.replica_status))
        return ReplicaHeader(app)


def build_app(
    spec: EngineSpec,
    config: ServerConfig,
    *,
    replicas: int = 2,
    router: str = "affinity",
    stats_period: float = DEFAULT_STATS_PERIOD,
    router_options: dict[str, Any] | None = None,
) -> Any:
    """The Serve application. ``router``: "affinity" (kvllama's) or "pow2" (Ray Serve's default)."""
    if router not in ("affinity", "pow2"):
        raise ValueError(f"router must be 'affinity' or 'pow2', got {router!r}")
    routing = RequestRouterConfig(request_routing_stats_period_s=stats_period)
    if router == "affinity":
        routing = RequestRouterConfig(
            request_router_class=f"{CacheAffinityRouter.__module__}.{CacheAffinityRouter.__qualname__}",
            request_router_kwargs=router_options or {},
            request_routing_stats_period_s=stats_period)
    replica = serve.deployment(
        KvllamaReplica, name="kvllama-replica", num_replicas=replicas,
        max_ongoing_requests=MAX_ONGOING_PER_REPLICA, request_router_config=routing,
        ray_actor_options={"num_cpus": 0})
    ingress = serve.deployment(KvllamaIngress, name="kvllama-ingress", ray_actor_options={"num_cpus": 0},
                               max_ongoing_requests=4 * MAX_ONGOING_PER_REPLICA)
    return ingress.bind(spec, config, replica.bind(spec))


def app_builder(args: dict[str, str]) -> Any:
    """For ``serve run kvllama.ray.deployment:app_builder replicas=2 model=PATH n_threads=1``.

    Arguments (all optional): ``model`` (a GGUF path), ``replicas``, ``router``,
    ``n_threads``, ``n_ctx``, ``n_seq_max``, ``served_model_name``, ``api_key``.
    """
    options = {k: int(args[k]) for k in ("n_threads", "n_ctx", "n_seq_max") if k in args}
    spec = EngineSpec(model_id=MODEL_ID, path=args.get("model"), options=options)
    name = args.get("served_model_name", MODEL_ID)
    config = ServerConfig(models={name: MODEL_ID}, default_model=name,
                          api_key=args.get("api_key") or os.environ.get("KVLLAMA_API_KEY"))
    return build_app(spec, config, replicas=int(args.get("replicas", 2)),
                     router=args.get("router", "affinity"))
