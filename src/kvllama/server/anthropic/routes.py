"""Anthropic-compatible routes: /v1/messages (streamed or not) and /v1/messages/count_tokens."""

from __future__ import annotations

import time

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from kvllama.request import GenerationRequest
from kvllama.server.anthropic import rendering as anthropic_rendering
from kvllama.server.anthropic.rendering import AnthropicStreamWriter
from kvllama.server.anthropic.schemas import CountTokensRequest, MessagesRequest
from kvllama.server.edge import Edge
from kvllama.server.generation import complete, first_event, start, stream_frames
from kvllama.server.schemas_common import read_json, validate
from kvllama.server.sse import sse_response
from kvllama.server.state import routed_body, state_of

router = APIRouter()


@router.post("/v1/messages")
async def messages(request: Request) -> Response:
    started = time.perf_counter()
    state, body, name, model_id = await routed_body(request, MessagesRequest)
    generation = body.to_request(Edge.of(request, state, model_id))
    client_stops, max_tokens = list(body.stop_sequences or []), generation.sampling.max_tokens
    gen = await start(state, name, model_id, generation, started)
    mid = anthropic_rendering.new_id()
    if not body.stream:
        result = await complete(request, gen)
        reply = gen.builder.reply
        return JSONResponse(anthropic_rendering.response(mid, name, result, client_stops, max_tokens, reply))
    first = await first_event(request, gen)
    writer = AnthropicStreamWriter(mid, name, gen.prompt_tokens, client_stops, max_tokens)
    return sse_response(stream_frames(gen, first, writer))


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: Request) -> Response:
    state = state_of(request)
    body = validate(CountTokensRequest, await read_json(request))
    _, model_id = state.resolve(body.model)
    request = GenerationRequest.build(chat=body.chat(), media_limits=state.config.media_limits)
    if request.media:  # images and audio count as the positions they take (the projector says how many)
        resolved = await run_in_threadpool(state.engine.resolve_request, model_id, request)
        return JSONResponse({"input_tokens": len(resolved.prompt or ())})
    prompt = await run_in_threadpool(state.engine.chat_prompt, model_id, body.chat())
    return JSONResponse({"input_tokens": len(prompt.tokens)})
