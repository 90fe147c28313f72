"""The app factory: routes, error handlers, middleware, health and metrics.

``create_app(engine, config)`` wires an already-loaded :class:`Engine` into a
FastAPI app; it owns no model and no thread, so tests build one around a stub
engine and ``kvllama serve`` around a real one. Every error leaves in its
route family's JSON shape (see :mod:`kvllama.server.errors`).
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

import kvllama
from kvllama.api.engine import Engine
from kvllama.errors import KvllamaError
from kvllama.server.admin import lora
from kvllama.server.admin import models as model_routes
from kvllama.server.admin import routes as admin_routes
from kvllama.server.anthropic import routes as anthropic_routes
from kvllama.server.config import ServerConfig
from kvllama.server.errors import ApiError, ClientDisconnected, error_response, family_of
from kvllama.server.middleware import GuardMiddleware, MetricsMiddleware
from kvllama.server.ollama import routes as ollama_routes
from kvllama.server.openai import routes as openai_routes
from kvllama.server.openapi import publish_request_bodies
from kvllama.server.responses import routes as responses_routes
from kvllama.server.state import ServerState, state_of


def create_app(engine: Engine, config: ServerConfig | None = None) -> FastAPI:
    config = config or ServerConfig()
    state = ServerState(engine, config)
    app = FastAPI(title="kvllama", version=kvllama.__version__,
                  summary="OpenAI- and Anthropic-compatible endpoints over a kvllama Engine")
    app.state.kvllama = state
    app.include_router(openai_routes.router)
    app.include_router(anthropic_routes.router)
    app.include_router(responses_routes.router)
    app.include_router(admin_routes.router)
    app.include_router(ollama_routes.router)
    app.include_router(lora.router)
    app.include_router(model_routes.router)
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/metrics", metrics, methods=["GET"])
    publish_request_bodies(app)
    for exc_type in (ApiError, KvllamaError, ClientDisconnected):
        app.add_exception_handler(exc_type, _known_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    # Added last = outermost: the metrics middleware also counts the guard's 401s and 413s.
    app.add_middleware(GuardMiddleware, api_key=config.api_key, max_body_bytes=config.max_body_bytes)
    routes = [*openai_routes.router.routes, *anthropic_routes.router.routes, *responses_routes.router.routes,
              *admin_routes.router.routes,
              *ollama_routes.router.routes, *lora.router.routes, *app.routes]
    paths = frozenset(p for r in routes if "{" not in (p := getattr(r, "path", None) or "{"))
    app.add_middleware(MetricsMiddleware, metrics=state.metrics, paths=paths)
    return app


async def health(request: Request) -> Response:
    """Health without auth (for load balancers): 503 while a served model cannot serve.

    A model is unhealthy while its decode loop rebuilds a failed llama.cpp
    context, or for good if its loop died; the body names those models.
    """
    state = state_of(request)
    served = state.served()
    loaded = {info.id: info for info in state.engine.list_models()}
    known = set(state.engine.model_ids())
    # A model that is not in memory is healthy: its next request loads it. Never loads one here.
    unhealthy = [name for name, model_id in sorted(served.items())
                 if model_id not in known or (model_id in loaded and not loaded[model_id].healthy)]
    body = {"status": "unhealthy" if unhealthy else "ok", "models": sorted(served), "unhealthy": unhealthy}
    return JSONResponse(body, status_code=503 if unhealthy else 200)


async def metrics(request: Request) -> Response:
    return Response(state_of(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def _known_error(request: Request, exc: Exception) -> Response:
    return error_response(exc, family_of(request.url.path))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        message = f"no route {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    return error_response(ApiError(exc.status_code, message), family_of(request.url.path))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return error_response(ApiError(400, problems), family_of(request.url.path))
