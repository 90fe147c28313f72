"""``/v1/responses`` routes: create (streamed or not), retrieve, delete, list input items.

Stored responses are scoped by ``cache_salt``: ``GET`` and ``DELETE`` take it
in the query (as ``DELETE /sessions/{id}`` does), and a response created
under another salt is a 404, like one that never existed.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from kvllama.server.edge import Edge
from kvllama.server.errors import ApiError
from kvllama.server.generation import Generation, complete, first_event, start, stream_frames
from kvllama.server.responses import rendering
from kvllama.server.responses.rendering import Context, ItemIds, ResponsesStreamWriter
from kvllama.server.responses.schemas import ResponsesRequest
from kvllama.server.responses.store import StoredResponse
from kvllama.server.responses.turns import Turn, build_turn, transcript_of
from kvllama.server.sse import sse_response
from kvllama.server.state import ServerState, routed_body, state_of

router = APIRouter()
log = logging.getLogger("kvllama.server")
_ECHOED = ("instructions", "max_output_tokens", "metadata", "previous_response_id", "temperature", "top_p",
           "parallel_tool_calls", "store", "user")


@router.post("/v1/responses")
async def create(request: Request) -> Response:
    started = time.perf_counter()
    state, body, name, model_id = await routed_body(request, ResponsesRequest)
    previous = None
    if body.previous_response_id is not None:
        previous = state.responses.get(body.cache_salt, body.previous_response_id)
        if previous is None:
            raise ApiError(404, f"previous response {body.previous_response_id!r} not found",
                           param="previous_response_id")
    edge = Edge.of(request, state, model_id)
    turn = await run_in_threadpool(build_turn, body, edge, state.engine, model_id, previous)
    ctx = Context(rendering.new_id("resp"), name, request=_echo(body))
    gen = await start(state, name, model_id, turn.generation, started)

    def keep(response: dict[str, Any]) -> None:
        """Store the finished response; a failure to store costs its continuation, never the reply."""
        if not body.store:
            return
        try:
            _store(state, model_id, body, ctx, turn, gen, response)
        except Exception:
            log.exception("storing response %s failed; it cannot be continued", ctx.id)

    if not body.stream:
        result = await complete(request, gen)
        ids = ItemIds()
        response = rendering.final_object(ctx, result, gen.builder.reply, ids)
        keep(response)
        return JSONResponse(response)
    first = await first_event(request, gen)
    writer = ResponsesStreamWriter(ctx, gen.builder.reply, on_done=keep)
    return sse_response(stream_frames(gen, first, writer))


def _echo(body: ResponsesRequest) -> dict[str, Any]:
    echoed = {k: getattr(body, k) for k in _ECHOED}
    echoed["parallel_tool_calls"] = body.parallel_tool_calls if body.parallel_tool_calls is not None else True
    echoed["metadata"] = body.metadata or {}
    echoed["tools"] = body.tools or []
    echoed["tool_choice"] = body.tool_choice if body.tool_choice is not None else "auto"
    fmt = body.text.format if body.text is not None and body.text.format is not None else None
    echoed["text"] = {"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}}
    echoed["reasoning"] = body.reasoning.model_dump() if body.reasoning is not None else None
    echoed["truncation"] = body.truncation or "disabled"
    return echoed


def _store(state: ServerState, model_id: str, body: ResponsesRequest, ctx: Context, turn: Turn,
           gen: Generation, response: dict[str, Any]) -> None:
    result = gen.result()
    # A conversation with media is rendered again next turn (a later turn keeps its media parts).
    media = bool(turn.generation.media)
    transcript = [] if media else transcript_of(state.engine, model_id, result)
    reply = _reply_message(response["output"])
    items = [{"id": rendering.new_id("msg" if it.get("type", "message") == "message" else "item"), **it}
             for it in body.input_items()]
    state.responses.put(body.cache_salt, StoredResponse(
        id=ctx.id, created_at=ctx.created_at, response=response, input_items=items,
        messages=[*turn.messages, reply], instructions=body.instructions,
        transcript=transcript, model=ctx.model,
        finish_key=result.finish_key.hex() if result.finish_key else None,
        has_media=media,
    ))


def _reply_message(output: list[dict[str, Any]]) -> dict[str, Any]:
    """The reply as the assistant message a later turn's template renders."""
    text = "".join(part["text"] for item in output if item["type"] == "message" for part in item["content"])
    calls = [{"id": item["call_id"], "type": "function",
              "function": {"name": item["name"], "arguments": item["arguments"]}}
             for item in output if item["type"] == "function_call"]
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = calls
    return message


@router.get("/v1/responses/{response_id}")
async def retrieve(request: Request, response_id: str) -> Response:
    return JSONResponse(_stored(request, response_id).response)


@router.delete("/v1/responses/{response_id}")
async def delete(request: Request, response_id: str) -> Response:
    state = state_of(request)
    if not state.responses.delete(request.query_params.get("cache_salt"), response_id):
        raise _not_found(response_id)
    return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})


@router.get("/v1/responses/{response_id}/input_items")
async def input_items(request: Request, response_id: str) -> Response:
    items = list(_stored(request, response_id).input_items)
    q = request.query_params
    if q.get("order", "desc") == "desc":
        items.reverse()
    after = q.get("after")
    if after is not None:
        ids = [i["id"] for i in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    limit = _limit(q.get("limit"))
    page, more = items[:limit], len(items) > limit
    first, last = (page[0]["id"], page[-1]["id"]) if page else (None, None)
    return JSONResponse({"object": "list", "data": page, "has_more": more, "first_id": first,
                         "last_id": last})


def _limit(value: str | None) -> int:
    if value is None:
        return 20
    if not value.isdigit() or not 1 <= int(value) <= 100:
        raise ApiError(400, "limit must be an integer from 1 to 100", param="limit")
    return int(value)


def _stored(request: Request, response_id: str) -> StoredResponse:
    stored = state_of(request).responses.get(request.query_params.get("cache_salt"), response_id)
    if stored is None:
        raise _not_found(response_id)
    return stored


def _not_found(response_id: str) -> ApiError:
    return ApiError(404, f"response {response_id!r} not found", param="response_id", code="not_found")

