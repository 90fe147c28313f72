"""llama-server's router endpoints: list the models with their status, load one, unload one.

``GET /models`` lists every served model, loaded or not; ``POST /models/load``
loads one now (kept for its default keep-alive) and ``POST /models/unload``
frees one (409 while it has requests). Requests load models on their own;
these are for clients that manage memory explicitly (docs/guide/models.md).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from kvllama.errors import ModelBusyError
from kvllama.server.errors import ApiError
from kvllama.server.openapi import body_schema
from kvllama.server.schemas_common import read_json, validate
from kvllama.server.state import state_of

router = APIRouter()


class ModelRef(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str


@router.get("/models")
async def list_models(request: Request) -> Response:
    state = state_of(request)
    known, _loaded = await run_in_threadpool(state.models_now)
    data: list[dict[str, Any]] = []
    for name, model_id in sorted(state.served().items()):
        k = known.get(model_id)
        if k is None:
            continue
        status: dict[str, Any] = {"value": "loaded" if k.loaded else "loading" if k.loading else "unloaded"}
        if k.loaded and k.expires_in is not None:
            status["expires_in"] = round(k.expires_in, 3)
        data.append({"id": name, "object": "model", "owned_by": "kvllama", "created": int(state.started_at),
                     "path": k.path, "status": status})
    return JSONResponse({"object": "list", "data": data})


@router.post("/models/load", openapi_extra=body_schema(ModelRef))
async def load(request: Request) -> Response:
    state = state_of(request)
    body = validate(ModelRef, await read_json(request))
    _, model_id = state.resolve(body.model)
    await run_in_threadpool(state.engine.touch_model, model_id)
    return JSONResponse({"success": True, "model": body.model})


@router.post("/models/unload", openapi_extra=body_schema(ModelRef))
async def unload(request: Request) -> Response:
    state = state_of(request)
    body = validate(ModelRef, await read_json(request))
    _, model_id = state.resolve(body.model)
    try:
        await run_in_threadpool(state.engine.unload_model, model_id)
    except ModelBusyError as exc:
        raise ApiError(409, str(exc), param="model", code=exc.code) from None
    return JSONResponse({"success": True, "model": body.model})
