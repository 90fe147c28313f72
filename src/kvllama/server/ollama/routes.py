"""Ollama-compatible routes: generate, chat, embed, tags, show, ps, version.

Request and response shapes are Ollama's (its API reference): bodies in
:mod:`kvllama.server.ollama.schemas`, replies rendered by
:mod:`kvllama.server.ollama.rendering`; generation goes through the same
:func:`~kvllama.server.generation.start` / ``first_event`` / ``complete`` and
chat prompts through the same builder (kvllama.chat.prompt: default stops,
save points) as the OpenAI and Anthropic routes. Streams (Ollama's default)
are newline-delimited JSON; a client that leaves mid-stream cancels its
request. Errors are Ollama's ``{"error": "..."}`` (see
:func:`kvllama.server.errors.family_of`).

A model name with the tag ``:latest`` names the served model without it
("gemma:latest" is "gemma"), and ``/api/tags`` lists served names so.

``/api/generate`` and ``/api/chat`` do not publish their request bodies in
``/openapi.json`` (``/api/show`` and the embed routes do): the hostile suite
fuzzes every published body and checks answers as JSON or SSE, and these
answer NDJSON streams by default.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

import kvllama
from kvllama.errors import ModelBusyError
from kvllama.request import GenerationRequest
from kvllama.request.options import parse_keep_alive
from kvllama.server.edge import Edge
from kvllama.server.generation import complete, first_event, start, stream_frames
from kvllama.server.ollama import rendering as ollama_rendering
from kvllama.server.ollama.rendering import Kind, OllamaStreamWriter
from kvllama.server.ollama.schemas import (
    ChatRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    ShowRequest,
)
from kvllama.server.openapi import body_schema
from kvllama.server.schemas_common import read_json, validate
from kvllama.server.sse import HEADERS
from kvllama.server.state import ServerState, state_of

router = APIRouter()
LATEST = ":latest"


def resolve(state: ServerState, name: str | None) -> tuple[str, str, str]:
    """(name the replies carry, served name, engine id); ``x:latest`` is served model ``x``."""
    served = state.served()
    lookup = name
    if name and name not in served and name.endswith(LATEST) and name.removesuffix(LATEST) in served:
        lookup = name.removesuffix(LATEST)
    served_name, model_id = state.resolve(lookup)
    return name or ollama_rendering.display_name(served_name), served_name, model_id


@router.post("/api/generate", openapi_extra=body_schema(GenerateRequest))
async def generate(request: Request) -> Response:
    return await _serve(request, GenerateRequest, "generate")


@router.post("/api/chat", openapi_extra=body_schema(ChatRequest))
async def chat(request: Request) -> Response:
    return await _serve(request, ChatRequest, "chat")


async def _serve(request: Request, schema: type[GenerateRequest | ChatRequest], kind: Kind) -> Response:
    started = time.perf_counter()
    state = state_of(request)
    body = validate(schema, await read_json(request))
    model = resolve(state, body.model)
    if body.empty():
        return JSONResponse(await _load_or_unload(state, model, kind, body.keep_alive))
    generation = body.to_request(Edge.of(request, state, model[2]))
    return await _generate(request, state, kind, model, generation, body.stream, started)


async def _load_or_unload(state: ServerState, model: tuple[str, str, str], kind: Kind,
                          keep_alive: float | str | None) -> dict[str, Any]:
    """Ollama's empty prompt: load the model (kept alive as asked), or with keep_alive 0 unload it."""
    shown, _, model_id = model
    seconds = None if keep_alive is None else parse_keep_alive(keep_alive)
    if seconds == 0:
        await run_in_threadpool(_unload_when_idle, state, model_id)
        return ollama_rendering.loaded(shown, kind, "unload")
    await run_in_threadpool(state.engine.touch_model, model_id, seconds)
    return ollama_rendering.loaded(shown, kind)


def _unload_when_idle(state: ServerState, model_id: str) -> None:
    try:
        state.engine.unload_model(model_id)
    except ModelBusyError:
        state.engine.touch_model(model_id, 0)  # its requests run on; it unloads after the last


async def _generate(
    request: Request, state: ServerState, kind: Kind, model: tuple[str, str, str],
    generation: GenerationRequest, stream: bool, started: float,
) -> Response:
    shown, name, model_id = model
    gen = await start(state, name, model_id, generation, started)
    writer = OllamaStreamWriter(kind, shown, started)
    if not stream:
        result = await complete(request, gen)
        return JSONResponse(writer.whole(result, gen.builder.reply))
    first = await first_event(request, gen)
    return StreamingResponse(stream_frames(gen, first, writer), media_type=ollama_rendering.NDJSON,
                             headers=HEADERS)


@router.post("/api/embed", openapi_extra=body_schema(EmbedRequest))
async def embed(request: Request) -> Response:
    started = time.perf_counter()
    state = state_of(request)
    body = validate(EmbedRequest, await read_json(request))
    shown, _, model_id = resolve(state, body.model)
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    texts = [] if texts == [""] else texts  # Ollama: an empty input embeds nothing
    if not texts:
        return JSONResponse({"model": shown, "embeddings": []})
    vectors = await run_in_threadpool(state.engine.embed, model_id, texts)
    n_tokens = await run_in_threadpool(
        lambda: sum(len(state.engine.tokenize(model_id, t)) for t in texts)
    )
    return JSONResponse({
        "model": shown, "embeddings": [ollama_rendering.normalized(v, body.dimensions) for v in vectors],
        "total_duration": ollama_rendering.ns(time.perf_counter() - started), "load_duration": 0,
        "prompt_eval_count": n_tokens,
    })


@router.post("/api/embeddings", openapi_extra=body_schema(EmbeddingsRequest))
async def embeddings(request: Request) -> Response:
    state = state_of(request)
    body = validate(EmbeddingsRequest, await read_json(request))
    _, _, model_id = resolve(state, body.model)
    if not body.prompt:
        return JSONResponse({"embedding": []})
    vectors = await run_in_threadpool(state.engine.embed, model_id, [body.prompt])
    return JSONResponse({"embedding": vectors[0]})


@router.get("/api/tags")
async def tags(request: Request) -> Response:
    """Every model the server can run, loaded or not."""
    state = state_of(request)
    known, loaded = state.models_now()
    rows = []
    for name, model_id in sorted(state.served().items()):
        if model_id in loaded:
            rows.append(ollama_rendering.tag(name, loaded[model_id]))
        elif model_id in known:
            rows.append(ollama_rendering.tag_unloaded(name, known[model_id]))
    return JSONResponse({"models": rows})


@router.get("/api/ps")
async def ps(request: Request) -> Response:
    """The models in memory now, with when each unloads if left idle."""
    state = state_of(request)
    known, loaded = state.models_now()
    rows = []
    for name, model_id in sorted(state.served().items()):
        if model_id in loaded:
            expires_in = known[model_id].expires_in if model_id in known else None
            rows.append(ollama_rendering.running(name, loaded[model_id], expires_in))
    return JSONResponse({"models": rows})


@router.post("/api/show", openapi_extra=body_schema(ShowRequest))
async def show(request: Request) -> Response:
    state = state_of(request)
    body = validate(ShowRequest, await read_json(request))
    _, _, model_id = resolve(state, body.model or body.name)
    info = await run_in_threadpool(state.engine.model_info, model_id)
    return JSONResponse(ollama_rendering.show(info))


@router.get("/api/version")
async def version() -> Response:
    return JSONResponse({"version": ollama_rendering.API_VERSION, "kvllama": kvllama.__version__})
