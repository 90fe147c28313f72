"""OpenAI-compatible routes: completions, chat completions, embeddings, models."""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from kvllama.server import chat_prompt
from kvllama.server.admin.lora import request_adapters
from kvllama.server.agent_params import session_params
from kvllama.server.errors import ApiError
from kvllama.server.generation import stream_frames
from kvllama.server.grammar import JSON_OBJECT_GRAMMAR, json_schema_grammar
from kvllama.server.openai import rendering as openai_rendering
from kvllama.server.openai.choices import complete_choices, first_events, merged_frames, start_choices
from kvllama.server.openai.rendering import Kind, OpenAIStreamWriter
from kvllama.server.openai.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ResponseFormat,
)
from kvllama.server.schemas_common import read_json, sampling, stops, validate
from kvllama.server.sse import sse_response
from kvllama.server.state import ServerState, state_of

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    started = time.perf_counter()
    state = state_of(request)
    body = validate(ChatCompletionRequest, await read_json(request))
    name, model_id = state.resolve(body.model)
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    prompt = await run_in_threadpool(chat_prompt.render, state.engine, model_id, messages, tools=body.tools)
    max_tokens = _first(body.max_completion_tokens, body.max_tokens, default=state.config.max_tokens_limit)
    params = _params(state, body, max_tokens, prompt.stops_with(stops(body.stop)))
    params["grammar"] = _grammar(body.response_format, body.grammar)
    params.update(sampling(thinking=body.thinking, thinking_budget_tokens=body.thinking_budget_tokens,
                           logprobs=body.engine_logprobs()))
    params.update(session_params(request, body.session_id))
    params["save_points"] = list(prompt.save_points) or None
    return await _generate(request, state, "chat", (name, model_id), prompt.text, params, body, started)


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    started = time.perf_counter()
    state = state_of(request)
    body = validate(CompletionRequest, await read_json(request))
    name, model_id = state.resolve(body.model)
    try:
        prompt = body.single_prompt()
    except ValueError as exc:
        raise ApiError(400, str(exc), param="prompt") from None
    max_tokens = _first(body.max_tokens, default=state.config.default_completion_max_tokens)
    params = _params(state, body, max_tokens, stops(body.stop))
    params["grammar"] = body.grammar
    params["logprobs"] = body.logprobs
    params.update(session_params(request, body.session_id))
    if body.continue_session:
        params.update(continue_session=True, expect_session_tokens=body.expect_session_tokens)
    return await _generate(request, state, "completion", (name, model_id), prompt, params, body, started)


def _first(*values: int | None, default: int) -> int:
    """The first value the client set (0 included, so that it is refused rather than replaced)."""
    return next((v for v in values if v is not None), default)


def _params(
    state: ServerState, body: ChatCompletionRequest | CompletionRequest, max_tokens: int, stop: list[str]
) -> dict[str, Any]:
    # cache_salt (validated by schemas_common.CacheSalt) isolates tenants in the KV cache.
    return sampling(
        cache_salt=body.cache_salt, max_tokens=state.check_max_tokens(max_tokens),
        stop=stop or None, seed=body.seed,
        temperature=body.temperature, top_p=body.top_p, top_k=body.top_k, min_p=body.min_p,
        repetition_penalty=body.repetition_penalty, frequency_penalty=body.frequency_penalty,
        presence_penalty=body.presence_penalty, logit_bias=body.logit_bias, min_tokens=body.min_tokens,
        ignore_eos=body.ignore_eos or None,
    )


def _grammar(fmt: ResponseFormat | None, grammar: str | None) -> str | None:
    if fmt is None or fmt.type == "text":
        return grammar
    if grammar is not None:
        raise ApiError(400, "give either response_format or grammar, not both", param="grammar")
    if fmt.type == "json_object":
        return JSON_OBJECT_GRAMMAR
    if fmt.json_schema is None:
        raise ApiError(400, "response_format of type json_schema needs a json_schema object",
                       param="response_format.json_schema")
    return json_schema_grammar(fmt.json_schema.schema_)


async def _generate(
    request: Request, state: ServerState, kind: Kind, model: tuple[str, str],
    prompt: str | Sequence[int], params: dict[str, Any],
    body: ChatCompletionRequest | CompletionRequest, started: float,
) -> Response:
    name, model_id = model
    params["adapters"] = request_adapters(state, model_id, body.lora)
    given = {k: v for k, v in params.items() if v is not None}
    echo = ""
    if isinstance(body, CompletionRequest) and body.echo:
        echo = prompt if isinstance(prompt, str) else await run_in_threadpool(
            state.engine.detokenize, model_id, prompt)
    logprobs = given.get("logprobs") is not None
    gens = await start_choices(state, name, model_id, prompt, given, body.n, started)
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
    return JSONResponse({"object": "list", "data": [_card(state, n, m) for n, m in state.served().items()]})


@router.get("/v1/models/{model:path}")
async def get_model(request: Request, model: str) -> Response:
    state = state_of(request)
    name, model_id = state.resolve(model)
    return JSONResponse(_card(state, name, model_id))


def _card(state: ServerState, name: str, model_id: str) -> dict[str, Any]:
    try:
        created = int(state.engine.model_info(model_id).loaded_at)
    except Exception:  # unloaded behind the server's back: still list it
        created = int(state.started_at)
    return {"id": name, "object": "model", "created": created, "owned_by": "kvllama"}
