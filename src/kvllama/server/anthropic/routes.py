"""Anthropic-compatible routes: /v1/messages (streamed or not) and /v1/messages/count_tokens."""

from __future__ import annotations

import time

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from kvllama.chat import prefix_points
from kvllama.server import chat_prompt
from kvllama.server.admin.lora import request_adapters
from kvllama.server.agent_params import check_thinking_signatures, session_params, thinking_key
from kvllama.server.anthropic import rendering as anthropic_rendering
from kvllama.server.anthropic.rendering import AnthropicStreamWriter
from kvllama.server.anthropic.schemas import CountTokensRequest, MessagesRequest
from kvllama.server.generation import complete, first_event, start, stream_frames
from kvllama.server.schemas_common import read_json, sampling, validate
from kvllama.server.sse import sse_response
from kvllama.server.state import state_of

router = APIRouter()


@router.post("/v1/messages")
async def messages(request: Request) -> Response:
    started = time.perf_counter()
    state = state_of(request)
    body = validate(MessagesRequest, await read_json(request))
    name, model_id = state.resolve(body.model)
    turns = body.message_dicts()
    check_thinking_signatures(thinking_key(state), turns)
    breakpoints = prefix_points.anthropic_breakpoints(turns, body.system, body.tools,
                                                      chat_prompt.tools_as_functions)
    prompt = await run_in_threadpool(
        chat_prompt.render, state.engine, model_id, turns, system=body.system,
        tools=chat_prompt.tools_as_functions(body.tools), breakpoints=breakpoints,
    )
    client_stops = list(body.stop_sequences or [])
    max_tokens = state.check_max_tokens(body.max_tokens)
    params = sampling(
        cache_salt=body.cache_salt,
        max_tokens=max_tokens, stop=prompt.stops_with(client_stops) or None,
        temperature=body.temperature, top_k=body.top_k, top_p=body.top_p, seed=body.seed,
        grammar=body.grammar,
    )
    params.update(session_params(request, body.session_id))
    params["save_points"] = list(prompt.save_points) or None
    params["adapters"] = request_adapters(state, model_id, body.lora)
    if body.thinking is not None:
        params.update(body.thinking.engine_params())
    gen = await start(state, name, model_id, prompt.text, params, started)
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
    prompt = await run_in_threadpool(chat_prompt.render, state.engine, model_id, body.message_dicts(),
                                     system=body.system, tools=chat_prompt.tools_as_functions(body.tools))
    count = await run_in_threadpool(chat_prompt.count_prompt_tokens, state.engine, model_id, prompt.text)
    return JSONResponse({"input_tokens": count})
