"""The ingress's engine: kvllama's own HTTP app, with generation sent to the replicas.

:class:`ReplicatedEngine` *is* an :class:`~kvllama.api.engine.Engine`, with
the served model loaded locally (same file and options, so tokenizing,
chat templates, stops and save points are exactly the replicas'; the
weights are memory-mapped, so replicas on the same machine share their
pages). The methods that need a model's KV state go to a replica through
the deployment handle, whose request router (kvllama.ray.router) picks the
replica: generation, embeddings, ending and forking sessions. So the HTTP
layer (kvllama.server) runs unchanged: ``create_app(ReplicatedEngine(...))``
is the ingress, and there is no second server to keep in step.

Errors raised on a replica cross back as the same typed exceptions
(kvllama.errors pickles them), so a bad request is the same 4xx here as
from ``kvllama serve``.
"""

from __future__ import annotations

import asyncio
import contextvars
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kvllama.api.engine import Engine
from kvllama.api.engine_spec import EngineSpec
from kvllama.errors import InvalidRequestError
from kvllama.events import Event
from kvllama.models.loaded import ModelInfo
from kvllama.ray.policy import RouteInfo
from kvllama.ray.registry import ROUTERS
from kvllama.ray.replica import Admitted, Refused
from kvllama.request import GenerationRequest, Prompt

# Set per HTTP request by the ingress middleware: the replica that served it (a response header).
served_by: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "kvllama_served_by", default=None)


@dataclass(frozen=True)
class _RemoteRequest:
    """What the HTTP layer reads of a request (``Generation.prompt_tokens``)."""

    id: str
    prompt: tuple[int, ...]


class RemoteStream:
    """An :class:`~kvllama.api.streams.AsyncRequestStream` whose request runs on a replica."""

    def __init__(self, response: Any, request: _RemoteRequest, model_id: str, replica: str) -> None:
        self._response = response
        self.request = request
        self.model_id = model_id
        self.replica = replica
        self._finished = False

    @property
    def id(self) -> str:
        return self.request.id

    def cancel(self) -> None:
        """Cancels the replica's generator, whose stream then cancels the request."""
        if not self._finished:
            self._finished = True
            self._response.cancel()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    async def _events(self) -> AsyncIterator[Event]:
        try:
            async for event in self._response:
                yield event
            self._finished = True
        finally:
            self.cancel()


class ReplicatedEngine(Engine):
    def __init__(self, spec: EngineSpec, replicas: Any) -> None:
        super().__init__(cache=None, thinking_key=spec.thinking_key)
        self.spec = spec
        self._replicas = replicas  # the replicas deployment's handle
        self.load_model(spec.model_id, spec.path, **spec.options)
        for path, scale in spec.loras:
            self.load_adapter(spec.model_id, Path(path).stem, path, scale)

    @property
    def saves_prompt_rows(self) -> bool:
        return self.spec.cache is not None

    # --- generation, on a replica ---------------------------------------------------

    async def asubmit(self, model_id: str, request: GenerationRequest) -> RemoteStream:  # type: ignore[override]
        """Resolved here (a chat rendered, the prompt tokenized: the same files as the replicas'),
        routed by its tokens, and run on the chosen replica as it is."""
        resolved = await asyncio.to_thread(self.resolve_request, model_id, request)
        assert isinstance(resolved.prompt, tuple)
        tokens = resolved.prompt
        route = RouteInfo(
            model_id=model_id, tokens=tokens, cache_salt=resolved.options.cache_salt,
            session_id=resolved.options.session_id, own_adapters=resolved.adapters is not None,
            route_id=uuid.uuid4().hex,
        )
        # Media chunks live in this process (native handles): the replica tokenizes them again.
        sent = request if resolved.media else resolved
        response = self._replicas.generate.options(stream=True).remote(route, model_id, sent)
        first = await anext(aiter(response))
        if isinstance(first, Refused):
            raise first.error
        assert isinstance(first, Admitted)
        holder = served_by.get()
        if holder is not None:
            holder.append(first.replica)
        return RemoteStream(response, _RemoteRequest(first.request_id, tokens), model_id, first.replica)

    def embed(self, model_id: str, texts: str | Sequence[str]) -> list[list[float]]:
        items = [texts] if isinstance(texts, str) else list(texts)
        return self._replicas.embed.remote(RouteInfo(model_id), model_id, items).result()

    def end_session(
        self, session_id: str, model_id: str | None = None, cache_salt: str | None = None
    ) -> bool:
        model = model_id or self.spec.model_id
        route = RouteInfo(model, cache_salt=cache_salt, session_id=session_id)
        return self._replicas.end_session.remote(route, session_id, model_id, cache_salt).result()

    def fork_session(self, model_id: str, session_id: str, new_session_id: str,
                     cache_salt: str | None = None) -> None:
        route = RouteInfo(model_id, cache_salt=cache_salt, session_id=session_id,
                          new_session_id=new_session_id)
        self._replicas.fork_session.remote(route, model_id, session_id, new_session_id, cache_salt).result()

    def set_adapter_scale(self, model_id: str, adapter_id: str, scale: float) -> None:
        raise InvalidRequestError(
            "default adapter scales cannot be changed on a replicated deployment; "
            "name the set per request instead (the body's `lora` field)")

    # --- what the replicas reported -------------------------------------------------

    def model_info(self, model_id: str) -> ModelInfo:
        """The local model's description, with the replicas' summed load."""
        info = super().model_info(model_id)
        snaps = self._snapshots(model_id)
        if not snaps:
            return info
        load = sum(s.in_flight + s.pending for s in snaps)
        return replace(info, pending=sum(s.pending for s in snaps), in_flight=sum(s.in_flight for s in snaps),
                       sessions=sum(len(s.sessions) for s in snaps), healthy=all(s.healthy for s in snaps),
                       phase="generating" if load else "idle")

    def list_models(self) -> list[ModelInfo]:
        return [self.model_info(info.id) for info in super().list_models()]

    def pending(self, model_id: str | None = None) -> int:
        return sum(s.pending for s in self._snapshots(model_id))

    def list_cached_prefixes(self, model_id: str, tokens: Prompt, cache_salt: str | None = None) -> int:
        route = RouteInfo(model_id, tuple(self.prompt_tokens(model_id, tokens)), cache_salt)
        return max((r.policy.matched_tokens(route, rid) for r in ROUTERS.all() for rid in r.reports),
                   default=0)

    def cache_metrics(self) -> dict[str, Any]:
        """Every replica's cache counters, summed (per replica: :meth:`replica_status`)."""
        total: dict[str, Any] = {}
        for report in _reports().values():
            _add_into(total, report.cache)
        return total

    def replica_status(self) -> dict[str, Any]:
        """Per replica: its load, slots and digest size; and the router's decisions by kind."""
        replicas = {}
        for rid, report in _reports().items():
            replicas[rid] = {
                "models": {s.model_id: {"pending": s.pending, "in_flight": s.in_flight,
                                        "free_slots": s.free_slots, "cached_blocks": len(s.blocks),
                                        "sessions": len(s.sessions), "healthy": s.healthy,
                                        "reported_at": s.taken_at}
                           for s in report.snapshots},
                "prompt_reuse": report.prompt_reuse,
            }
        routed: dict[str, int] = {}
        for router in ROUTERS.all():
            for kind, n in router.counts.items():
                routed[str(kind)] = routed.get(str(kind), 0) + n
        return {"replicas": replicas, "routed": routed}

    def _snapshots(self, model_id: str | None) -> list[Any]:
        return [s for report in _reports().values() for s in report.snapshots
                if model_id is None or s.model_id == model_id]


def _reports() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for router in ROUTERS.all():
        router.refresh()
        out.update(router.reports)
    return out


def _add_into(total: dict[str, Any], part: dict[str, Any]) -> None:
    for key, value in part.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            total[key] = total.get(key, 0) + value
        elif isinstance(value, dict):
            _add_into(total.setdefault(key, {}), value)
