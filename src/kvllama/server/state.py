"""What every route needs: the engine, the config, the metrics, model-name resolution."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel
from starlette.requests import Request

from kvllama.api.engine import Engine
from kvllama.api.residency import KnownModel
from kvllama.errors import UnknownModelError
from kvllama.models.loaded import ModelInfo
from kvllama.server.config import ServerConfig
from kvllama.server.errors import ApiError
from kvllama.server.metrics import ServerMetrics
from kvllama.server.responses.store import ResponseStore
from kvllama.server.schemas_common import read_json, validate


@dataclass
class ServerState:
    engine: Engine
    config: ServerConfig
    metrics: ServerMetrics = field(init=False)
    started_at: float = field(default_factory=time.time)
    # Stored Responses-API responses (kvllama.server.responses).
    responses: ResponseStore = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = ServerMetrics(self.engine, self.served, self.config.cache_metrics_provider)
        c = self.config
        directory = c.responses_dir
        cache = self.engine.cache
        if directory is None and cache is not None and cache.config.disk_dir is not None:
            directory = str(Path(cache.config.disk_dir) / "responses")
        self.responses = ResponseStore(directory, max_count=c.responses_max_count,
                                       max_age=c.responses_max_age)

    def served(self) -> dict[str, str]:
        """Served name -> engine model id (the config's mapping, else every model the engine knows,
        loaded or not: a request for one that is not loaded loads it)."""
        if self.config.models:
            return dict(self.config.models)
        return {model_id: model_id for model_id in self.engine.model_ids()}

    def models_now(self) -> tuple[dict[str, KnownModel], dict[str, ModelInfo]]:
        """Every known model and the loaded ones' snapshots, by engine id (never loads a model)."""
        known = {k.id: k for k in self.engine.known_models()}
        return known, {info.id: info for info in self.engine.list_models()}

    def resolve(self, name: str | None) -> tuple[str, str]:
        """(served name, engine id) for a request's ``model`` field; 404 if unknown."""
        served = self.served()
        if not name:
            name = self.config.default_model
            if name is None and len(served) == 1:
                name = next(iter(served))
            if name is None:
                raise ApiError(400, "model is required: this server serves "
                               f"{', '.join(sorted(served)) or 'no models'}", param="model")
        model_id = served.get(name)
        if model_id is None:
            raise ApiError(
                404,
                f"model {name!r} not found; this server serves {', '.join(sorted(served)) or 'no models'}",
                param="model", code="model_not_found",
            )
        return name, model_id

    def check_capacity(self, name: str, model_id: str) -> None:
        """Refuse early (429/529) when this model's queue is at the configured bound."""
        bound = self.config.max_queue
        if bound is None:
            return
        try:
            pending = self.engine.pending(model_id)
        except UnknownModelError:
            raise ApiError(404, f"model {name!r} is not loaded", param="model",
                           code="model_not_found") from None
        if pending >= bound:
            raise ApiError(
                429,
                f"model {name!r} is overloaded: {pending} requests are already queued "
                f"(this server queues at most {bound}); retry later",
                code="queue_full",
            )


def state_of(request: Request) -> ServerState:
    return request.app.state.kvllama  # type: ignore[no-any-return]


M = TypeVar("M", bound=BaseModel)


async def routed_body(request: Request, schema: type[M]) -> tuple[ServerState, M, str, str]:
    """A generation route's start: the server state, the validated body, and the (served name,
    engine id) of the model the body names."""
    state = state_of(request)
    body = validate(schema, await read_json(request))
    name, model_id = state.resolve(getattr(body, "model", None))
    return state, body, name, model_id
