"""OpenAI-compatible routes: completions, chat completions, embeddings, models."""

from __future__ import annotations

import base64
import struct
import time
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from kvllama.models.loaded import ModelInfo
from kvllama.request import GenerationRequest
from kvllama.server.edge import Edge
from kvllama.server.errors import ApiError
from kvllama.server.generation import stream_frames
from kvllama.server.openai import rendering as openai_rendering
from kvllama.server.openai.choices import complete_choices, first_events, merged_frames, start_choices
from kvllama.server.openai.rendering import Kind, OpenAIStreamWriter
from kvllama.server.openai.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
)
from kvllama.server.schemas_common import read_json, validate
from kvllama.server.sse import sse_response
from kvllama.server.state import ServerState, routed_body, state_of

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await _serve(request, ChatCompletionRequest, "chat")


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    return await _serve(request, CompletionRequest, "completion")


async def _serve(
    request: Request, schema: type[ChatCompletionRequest | CompletionRequest], kind: Kind
) -> Response:
    started = time.perf_counter()
    state, body, name, model_id = await routed_body(request, schema)
    generation = body.to_request(Edge.of(request, state, model_id))
    return await _generate(request, state, kind, (name, model_id), generation, body, started)


async def _generate(
    request: Request, state: ServerState, kind: Kind, model: tuple[str, str], generation: GenerationRequest,
    body: ChatCompletionRequest | CompletionRequest, started: float,
) -> Response:
    name, model_id = model
    echo = ""
    if isinstance(body, CompletionRequest) and body.echo:
        prompt = generation.prompt
        echo = prompt if isinstance(prompt, str) else await run_in_threadpool(
            state.engine.detokenize, model_id, prompt or ())
    logprobs = generation.sampling.logprobs is not None
    gens = await start_choices(state, name, model_id, generation, body.n, started)
    rid = openai_rendering.new_id(kind)
    if not body.stream:
        results = await complete_choices(request, gens)
        choices = [(result, gen.builder.reply) for result, gen in zip(results, gens, strict=True)]
        return JSONResponse(openai_rendering.response(kind, rid, name, choices, logprobs=logprobs, echo=echo))
    firsts = await first_events(request, gens)
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    writers = [OpenAIStreamWriter(kind, rid, name, include_usage, index=i, closes=len(gens) == 1,
                                  logprobs=logprobs, echo=echo) for i in range(len(gens))]
    if len(gens) == 1:
        return sse_response(stream_frames(gens[0], firsts[0], writers[0]))
    return sse_response(merged_frames(gens, firsts, writers))


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> Response:
    state = state_of(request)
    body = validate(EmbeddingRequest, await read_json(request))
    name, model_id = state.resolve(body.model)
    texts = await run_in_threadpool(_embedding_texts, state, model_id, body.input)
    vectors = await run_in_threadpool(state.engine.embed, model_id, texts)
    n_tokens = await run_in_threadpool(
        lambda: sum(len(state.engine.tokenize(model_id, t)) for t in texts)
    )
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
        for i, v in enumerate(vectors)
    ]
    return JSONResponse({"object": "list", "data": data, "model": name,
                         "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}})


def _embedding_texts(state: ServerState, model_id: str, given: Any) -> list[str]:
    items = [given] if isinstance(given, str) else list(given)
    if not items:
        raise ApiError(400, "input must not be empty", param="input")
    if all(isinstance(t, int) for t in items):
        items = [items]
    # TODO(engine): embed token ids directly instead of detokenising them (needs Engine.embed
    # to accept token lists); the round trip can change the tokens at the edges.
    return [t if isinstance(t, str) else state.engine.detokenize(model_id, t) for t in items]


def _encode(vector: list[float], fmt: str) -> list[float] | str:
    if fmt == "base64":  # what the openai SDK asks for by default: little-endian float32
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    state = state_of(request)
    loaded = _loaded(state)
    return JSONResponse({"object": "list",
                         "data": [_card(state, n, m, loaded) for n, m in state.served().items()]})


@router.get("/v1/models/{model:path}")
async def get_model(request: Request, model: str) -> Response:
    state = state_of(request)
    name, model_id = state.resolve(model)
    return JSONResponse(_card(state, name, model_id, _loaded(state)))


def _loaded(state: ServerState) -> dict[str, ModelInfo]:
    return {info.id: info for info in state.engine.list_models()}


def _card(state: ServerState, name: str, model_id: str, loaded: dict[str, ModelInfo]) -> dict[str, Any]:
    """A served model, loaded or not (listing never loads one): created = when it was loaded."""
    info = loaded.get(model_id)
    created = int(info.loaded_at) if info is not None else int(state.started_at)
    return {"id": name, "object": "model", "created": created, "owned_by": "kvllama"}
