"""LoRA adapters over HTTP, in llama-server's shapes.

``GET /lora-adapters`` lists a model's adapters with their list index as
``id`` (what llama-server clients send) and kvllama's own id as ``name``;
``POST /lora-adapters`` sets their default scales (a list of ``{"id",
"scale"}``, or ``{"model", "adapters": [...]}``); a request's ``lora`` field
(``[{"id": index or name, "scale"}]``) names the set that request runs with
(the others are off), as llama-server's per-request ``lora`` does.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from kvllama.server.edge import adapter_id_of
from kvllama.server.openapi import body_schema
from kvllama.server.schemas_common import LoraRef, read_json, validate
from kvllama.server.state import ServerState, state_of

router = APIRouter()


class LoraScales(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    adapters: list[LoraRef]


@router.get("/lora-adapters")
async def list_lora(request: Request, model: str | None = None) -> Response:
    state = state_of(request)
    _name, model_id = state.resolve(model)
    return JSONResponse(_listing(state, model_id))


@router.post("/lora-adapters", openapi_extra=body_schema(LoraScales))
async def set_lora(request: Request) -> Response:
    state = state_of(request)
    raw = await read_json(request)
    body = validate(LoraScales, {"adapters": raw} if isinstance(raw, list) else raw)
    _name, model_id = state.resolve(body.model)
    for ref in body.adapters:
        adapter_id = adapter_id_of([str(a["id"]) for a in state.engine.list_adapters(model_id)], ref.id)
        await run_in_threadpool(state.engine.set_adapter_scale, model_id, adapter_id, ref.scale)
    return JSONResponse(_listing(state, model_id))


def _listing(state: ServerState, model_id: str) -> list[dict[str, Any]]:
    return [{"id": i, "name": a["id"], "path": a["path"], "scale": a["scale"], "sha256": a["sha256"]}
            for i, a in enumerate(state.engine.list_adapters(model_id))]
