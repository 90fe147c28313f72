"""Request-body reading and validation shared by both API families.

Bodies are read and parsed here rather than by FastAPI's body injection so
that every failure (empty body, malformed JSON, a wrong type) becomes a 400
with a message naming the field, in the route family's error shape, instead
of FastAPI's 422, and so that clients that forget the JSON content type
(``curl -d``) still work.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ValidationError
from starlette.requests import Request

from kvllama.server.errors import ApiError

M = TypeVar("M", bound=BaseModel)

_SALT = re.compile(r"[A-Za-z0-9._:-]{1,256}")


def _check_salt(value: str) -> str:
    if not _SALT.fullmatch(value):
        raise ValueError("cache_salt must be 1 to 256 characters from A-Z a-z 0-9 . _ : -")
    return value


# A tenant's cache namespace (vLLM / TensorRT-LLM convention).
CacheSalt = Annotated[str, AfterValidator(_check_salt)]

SESSION_HEADER = "x-session-id"
MAX_SESSION_ID = 256


def _check_session(value: str) -> str:
    if not 1 <= len(value) <= MAX_SESSION_ID or not value.isprintable():
        raise ValueError(f"session_id must be 1 to {MAX_SESSION_ID} printable characters")
    return value


# Pins a conversation to one sequence slot (sticky sessions, SPEC §5).
SessionId = Annotated[str, AfterValidator(_check_session)]


async def read_json(request: Request) -> dict[str, Any]:
    body = await request.body()
    if not body.strip():
        raise ApiError(400, "the request body is empty; send a JSON object")
    try:
        data = json.loads(body)
    except UnicodeDecodeError:
        raise ApiError(400, "the request body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    return data


def validate(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(e) for e in exc.errors(include_url=False)]
        first = exc.errors(include_url=False)[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise ApiError(400, "; ".join(problems), param=param) from None


def _describe(error: Any) -> str:
    where = ".".join(str(p) for p in error["loc"])
    msg = error["msg"]
    return f"{where}: {msg}" if where else msg


def stops(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def sampling(**params: Any) -> dict[str, Any]:
    """Engine generation parameters, without the ones the client did not set."""
    return {k: v for k, v in params.items() if v is not None}
