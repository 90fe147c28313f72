"""Router-facing probes and operator views: tokenize, detokenize, cache lookup, sessions, status.

- ``POST /tokenize``, ``POST /detokenize``: llama-server's shapes (plus vLLM's
  ``count`` and ``max_model_len``); ``messages`` are rendered with the model's
  chat template exactly as ``/v1/chat/completions`` renders them.
- ``POST /cache/lookup``: how many of a prompt's tokens the KV cache holds (a
  router sends a conversation where its prefix already is).
- ``DELETE /sessions/{session_id}``: ends a sticky session (404 unknown, 409 busy);
  ``POST /sessions/fork``: a new session as a copy of an idle one.
- ``GET /status``, ``GET /status/requests``: models, slots, queue, memory,
  cache tiers, recent requests; ``GET /`` is a page that polls ``/status``.

Errors use the OpenAI error shape, like every path outside ``/v1/messages``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, StrictInt
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from kvllama.chat.prompt import ChatPrompt
from kvllama.errors import InvalidRequestError
from kvllama.request import ChatInput
from kvllama.server.admin import status
from kvllama.server.admin.status_page import STATUS_PAGE
from kvllama.server.errors import ApiError
from kvllama.server.metrics import RECENT_REQUESTS
from kvllama.server.openai.schemas import ChatMessage
from kvllama.server.openapi import body_schema
from kvllama.server.schemas_common import CacheSalt, SessionId, parse_body, read_json, validate
from kvllama.server.state import ServerState, state_of

router = APIRouter()


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TokenizeRequest(_Body):
    model: str | None = None
    content: str | None = None
    messages: list[ChatMessage] | None = None
    tools: list[dict[str, Any]] | None = None
    add_special: bool = True
    parse_special: bool = True
    with_pieces: bool = False


class DetokenizeRequest(_Body):
    model: str | None = None
    tokens: list[StrictInt]


class CacheLookupRequest(_Body):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    tools: list[dict[str, Any]] | None = None
    tokens: list[StrictInt] | None = None
    cache_salt: CacheSalt | None = None


class EndSessionRequest(_Body):
    model: str | None = None
    cache_salt: CacheSalt | None = None


class ForkSessionRequest(_Body):
    session_id: SessionId
    new_session_id: SessionId
    model: str | None = None
    cache_salt: CacheSalt | None = None


@router.post("/tokenize", openapi_extra=body_schema(TokenizeRequest))
async def tokenize(request: Request) -> Response:
    state = state_of(request)
    body = validate(TokenizeRequest, await read_json(request))
    _, model_id = state.resolve(body.model)
    if (body.content is None) == (body.messages is None):
        raise ApiError(400, "give exactly one of content (text) or messages (a chat)", param="content")
    tokens = await run_in_threadpool(_tokenize, state, model_id, body)
    info = await run_in_threadpool(state.engine.model_info, model_id)
    listed: list[Any] = list(tokens)
    if body.with_pieces:
        pieces = await run_in_threadpool(state.engine.token_pieces, model_id, tokens)
        listed = [{"id": t, "piece": _piece(p)} for t, p in zip(tokens, pieces, strict=True)]
    return JSONResponse({"tokens": listed, "count": len(tokens),
                         "max_model_len": info.context.get("n_ctx_seq")})


def _tokenize(state: ServerState, model_id: str, body: TokenizeRequest) -> list[int]:
    engine = state.engine
    if body.content is not None:
        return engine.tokenize(model_id, body.content, add_special=body.add_special,
                               parse_special=body.parse_special)
    prompt = _chat(state, model_id, body.messages, body.tools)
    if body.add_special:  # what a chat completion queues: BOS unless the template wrote it
        return list(prompt.tokens)
    return engine.tokenize(model_id, prompt.text, add_special=False, parse_special=True)


def _chat(state: ServerState, model_id: str, messages: list[ChatMessage] | None,
          tools: list[dict[str, Any]] | None) -> ChatPrompt:
    """The prompt /v1/chat/completions queues for these messages (the one chat-prompt builder)."""
    if not messages:
        raise ApiError(400, "messages must not be empty", param="messages")
    chat = ChatInput.of([m.model_dump(exclude_none=True) for m in messages], tools=tools)
    return state.engine.chat_prompt(model_id, chat)


def _piece(raw: bytes) -> str | list[int]:
    """llama-server's ``piece``: the text, or the bytes when they are not valid UTF-8 on their own."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return list(raw)


@router.post("/detokenize", openapi_extra=body_schema(DetokenizeRequest))
async def detokenize(request: Request) -> Response:
    state = state_of(request)
    body = validate(DetokenizeRequest, await read_json(request))
    _, model_id = state.resolve(body.model)
    try:
        text = await run_in_threadpool(state.engine.detokenize, model_id, body.tokens)
    except InvalidRequestError as exc:
        raise ApiError(400, f"tokens: {str(exc).removeprefix('prompt ')}", param="tokens") from None
    return JSONResponse({"content": text})


@router.post("/cache/lookup", openapi_extra=body_schema(CacheLookupRequest))
async def cache_lookup(request: Request) -> Response:
    """``tokens``: the prompt's length as the engine counts it; ``cached_tokens``: its longest cached prefix.

    A restore always leaves a few prompt tokens to prefill, so a request restores
    up to ``cached_tokens`` (sticky sessions and kept sequences are not counted).
    """
    state = state_of(request)
    body = validate(CacheLookupRequest, await read_json(request))
    name, model_id = state.resolve(body.model)
    given = [k for k in ("prompt", "messages", "tokens") if getattr(body, k) is not None]
    if len(given) != 1:
        raise ApiError(400, "give exactly one of prompt (text), messages (a chat) or tokens (ids)",
                       param="prompt")
    ids, cached = await run_in_threadpool(_lookup, state, model_id, body)
    return JSONResponse({"model": name, "tokens": len(ids), "cached_tokens": cached})


def _lookup(state: ServerState, model_id: str, body: CacheLookupRequest) -> tuple[list[int], int]:
    engine = state.engine
    if body.tokens is not None:
        if not body.tokens:
            raise ApiError(400, "tokens must not be empty", param="tokens")
        try:
            ids = engine.prompt_tokens(model_id, body.tokens)  # checks every id
        except InvalidRequestError as exc:
            raise ApiError(400, f"tokens: {str(exc).removeprefix('prompt ')}", param="tokens") from None
    elif body.prompt is not None:
        if not body.prompt:
            raise ApiError(400, "prompt is empty", param="prompt")
        ids = engine.prompt_tokens(model_id, body.prompt)
    else:
        ids = list(_chat(state, model_id, body.messages, body.tools).tokens)
    return ids, engine.list_cached_prefixes(model_id, ids, cache_salt=body.cache_salt)


@router.post("/sessions/fork", openapi_extra=body_schema(ForkSessionRequest))
async def fork_session(request: Request) -> Response:
    """A new sticky session that starts as a copy of an idle one (its KV copied once, in place).

    404 if the session is not parked idle, 409 if a request of either runs or
    the new id is taken, 503 when no sequence slot is free for the copy.
    """
    state = state_of(request)
    body = validate(ForkSessionRequest, await read_json(request))
    _name, model_id = state.resolve(body.model)
    await run_in_threadpool(state.engine.fork_session, model_id, body.session_id, body.new_session_id,
                            body.cache_salt)
    return JSONResponse({"id": body.new_session_id, "object": "session.forked", "from": body.session_id})


@router.delete("/sessions/{session_id:path}", openapi_extra=body_schema(EndSessionRequest, required=False))
async def end_session(
    request: Request, session_id: str, model: str | None = None, cache_salt: str | None = None
) -> Response:
    """End a sticky session: its slot is given back (saved to the KV cache first).

    ``model`` and ``cache_salt`` (the session's tenant) may come in the query
    string or a JSON body. 404 if no model holds the session idle, 409 while a
    request of it runs.
    """
    state = state_of(request)
    sid = validate(_SessionPath, {"session_id": session_id}).session_id
    body = await _end_session_body(request, {"model": model, "cache_salt": cache_salt})
    model_id = state.resolve(body.model)[1] if body.model is not None else None
    ended = await run_in_threadpool(state.engine.end_session, sid, model_id, body.cache_salt)
    if not ended:
        tenant = f" under cache_salt {body.cache_salt!r}" if body.cache_salt else ""
        raise ApiError(404, f"no idle session {sid!r}{tenant}", param="session_id", code="session_not_found")
    return JSONResponse({"id": sid, "object": "session.deleted", "deleted": True})


class _SessionPath(_Body):
    session_id: SessionId


async def _end_session_body(request: Request, query: dict[str, str | None]) -> EndSessionRequest:
    """``model`` and ``cache_salt`` from the query string and/or a JSON body (they must agree)."""
    fields: dict[str, Any] = {k: v for k, v in query.items() if v is not None}
    raw = await request.body()
    if raw.strip():
        data = parse_body(raw)
        if not isinstance(data, dict):
            raise ApiError(400, f"the request body must be a JSON object, got {type(data).__name__}")
        for key in query:
            if data.get(key) is None:
                continue
            if key in fields and data[key] != fields[key]:
                raise ApiError(400, f"{key} in the query string and in the body differ", param=key)
            fields[key] = data[key]
    return validate(EndSessionRequest, fields)


@router.get("/status")
async def get_status(request: Request) -> Response:
    state = state_of(request)
    return JSONResponse(await run_in_threadpool(status.collect, state))


@router.get("/status/requests")
async def recent_requests(request: Request, limit: int = RECENT_REQUESTS) -> Response:
    if not 1 <= limit <= RECENT_REQUESTS:
        raise ApiError(400, f"limit must be 1 to {RECENT_REQUESTS}, got {limit}", param="limit")
    recent = state_of(request).metrics.recent
    return JSONResponse({"object": "list", "data": recent.snapshot(limit), "total": recent.count})


@router.get("/", include_in_schema=False)
async def status_page(request: Request) -> Response:
    return HTMLResponse(STATUS_PAGE, headers={"cache-control": "no-store"})
