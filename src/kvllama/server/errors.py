"""HTTP errors: kvllama's typed exceptions -> status codes and the two JSON shapes.

Mapping is by exception type (never by message text). A route family decides
the body shape: paths under ``/v1/messages`` answer in Anthropic's
``{"type": "error", "error": {"type", "message"}}``, paths under ``/api/``
(Ollama) in Ollama's ``{"error": "message"}``, everything else in OpenAI's
``{"error": {"message", "type", "param", "code"}}``. The one status that
differs between the families is "overloaded": OpenAI clients expect 429,
Anthropic clients 529, Ollama clients 503 (what Ollama answers when its queue is full).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from starlette.responses import JSONResponse

from kvllama import errors as kv

log = logging.getLogger("kvllama.server")

Family = Literal["openai", "anthropic", "ollama"]

# Status of an overloaded server, per family.
OVERLOADED = {"openai": 429, "anthropic": 529, "ollama": 503}
# Nginx's convention for "client closed request": logged and counted, never seen by anyone.
CLIENT_CLOSED = 499

_OPENAI_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "invalid_request_error", 405: "invalid_request_error", 413: "invalid_request_error",
    429: "rate_limit_error", 499: "invalid_request_error", 503: "server_error",
}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 405: "invalid_request_error", 413: "request_too_large",
    429: "rate_limit_error", 499: "invalid_request_error", 503: "api_error", 529: "overloaded_error",
}


class ApiError(Exception):
    """An error the server answers on purpose. ``status`` 429 means "overloaded" in either family."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        # Seconds a client should wait before retrying (the Retry-After header); 429s say 1.
        self.retry_after = retry_after if retry_after is not None else (1 if status == 429 else None)


class ClientDisconnected(Exception):
    """The client went away before the answer was ready; its request was cancelled."""


def family_of(path: str) -> Family:
    if path.startswith("/api/"):
        return "ollama"
    return "anthropic" if path.startswith("/v1/messages") else "openai"


def from_exception(exc: BaseException) -> ApiError:
    """Map any exception to an ApiError (unknown ones become a logged 500)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ClientDisconnected):
        return ApiError(CLIENT_CLOSED, "client closed the connection; the request was cancelled")
    if isinstance(exc, kv.UnknownModelError):
        return ApiError(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, kv.ContextOverflowError):
        return ApiError(400, str(exc), code="context_length_exceeded")
    if isinstance(exc, kv.InvalidRequestError):
        return ApiError(400, str(exc), param=getattr(exc, "option", None), code=exc.code)
    if isinstance(exc, kv.SessionBusyError | kv.SessionConflictError):
        return ApiError(409, str(exc), param="session_id", code=exc.code)
    if isinstance(exc, kv.UnknownSessionError):
        return ApiError(404, str(exc), param="session_id", code=exc.code)
    if isinstance(exc, kv.NoFreeSlotError):
        return ApiError(503, str(exc), code=exc.code)
    if isinstance(exc, kv.DecodeTimeoutError | kv.ContextLostError):
        return ApiError(503, str(exc), code=exc.code)
    if isinstance(exc, kv.ModelCapacityError):
        return ApiError(503, str(exc), param="model", code=exc.code, retry_after=exc.retry_after)
    if isinstance(exc, kv.EngineClosedError | kv.ModelBusyError):
        return ApiError(503, str(exc), code=exc.code)
    if isinstance(exc, kv.KvllamaError):
        log.error("request failed: %s", exc)
        return ApiError(500, str(exc), code=exc.code)
    log.error("unexpected error while serving a request", exc_info=exc)
    return ApiError(500, "internal server error; see the server log", code="internal_error")


def status_for(err: ApiError, family: Family) -> int:
    return OVERLOADED[family] if err.status == 429 else err.status


def error_body(err: ApiError, family: Family) -> dict[str, Any]:
    status = status_for(err, family)
    if family == "ollama":
        return {"error": err.message}
    if family == "anthropic":
        kind = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": err.message}}
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": err.message, "type": kind, "param": err.param, "code": err.code}}


def error_response(exc: BaseException, family: Family) -> JSONResponse:
    err = from_exception(exc)
    headers = {"retry-after": str(err.retry_after)} if err.retry_after is not None else None
    return JSONResponse(error_body(err, family), status_code=status_for(err, family), headers=headers)
