"""Request-body reading and validation shared by both API families.

Bodies are read and parsed here rather than by FastAPI's body injection so
that every failure (empty body, malformed JSON, a wrong type) becomes a 400
with a message naming the field, in the route family's error shape, instead
of FastAPI's 422, and so that clients that forget the JSON content type
(``curl -d``) still work.

Two properties of a parsed body are checked here, once, before any field is
read: it nests at most :data:`MAX_JSON_DEPTH` levels (a body nested 200,000
deep would make ``json.loads`` and every recursive walk after it raise
RecursionError), and none of its strings or keys holds a lone surrogate
(``"\\ud800"`` is valid JSON but not Unicode text, and would fail wherever
the text is encoded to UTF-8: the tokenizer, a stop sequence, a grammar).
Both checks cost nothing for ordinary bodies: a body with few brackets and
no ``\\uD8..``-``\\uDF..`` escape skips the walk entirely.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError
from starlette.requests import Request

from kvllama.kvcache import validate_cache_salt
from kvllama.request import check_session_id
from kvllama.server.errors import ApiError

M = TypeVar("M", bound=BaseModel)

def _check_salt(value: str) -> str:
    validate_cache_salt(value)
    return value


# A tenant's cache namespace (vLLM / TensorRT-LLM convention); the rule is the cache's own.
CacheSalt = Annotated[str, AfterValidator(_check_salt)]

SESSION_HEADER = "x-session-id"

# Pins a conversation to one sequence slot (sticky sessions, docs/guide/agents.md).
SessionId = Annotated[str, AfterValidator(check_session_id)]


# Real requests nest a few levels (tool schemas perhaps 10-20); 128 keeps every
# recursive walk downstream (pydantic, chat templates' tojson, the JSON schema
# converter) far from Python's recursion limit of 1000.
MAX_JSON_DEPTH = 128

# A \uD800-\uDFFF escape: the only way a surrogate can get into a parsed body
# (the strict UTF-8 decode below refuses encoded ones).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class _NotJson(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not a JSON value")


async def read_json(request: Request) -> dict[str, Any]:
    body = await request.body()
    if not body.strip():
        raise ApiError(400, "the request body is empty; send a JSON object")
    data = parse_body(body)
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    return data


def refuse_suffix(value: str | None) -> str | None:
    """``suffix`` (fill-in-the-middle), which the OpenAI and Ollama bodies both carry: not supported."""
    if value:
        raise ValueError("suffix (fill-in-the-middle) is not supported")
    return value


def parse_body(body: bytes) -> Any:
    """Parse and check a request body; every failure is a 400 saying what is wrong."""
    try:
        # Decoded here, strictly: json.loads would guess UTF-16/32 and let UTF-8-encoded
        # surrogates through ("surrogatepass"); RFC 8259 bodies are UTF-8.
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"the request body is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ApiError(400, f"the request body is nested too deeply (at most {MAX_JSON_DEPTH} levels "
                            "of arrays and objects)") from None
    except (json.JSONDecodeError, _NotJson) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    except ValueError:  # Python refuses to convert integers of more than 4300 digits
        raise ApiError(400, "the request body has a number with too many digits") from None
    deep = body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH
    surrogates = _SURROGATE_ESCAPE.search(body) is not None
    if deep or surrogates:
        _walk(data, surrogates=surrogates)
    return data


def _walk(data: Any, *, surrogates: bool) -> None:
    """One iterative pass: refuse nesting over MAX_JSON_DEPTH and strings with lone surrogates."""
    links: list[tuple[int, str | int]] = [(-1, "")]  # node -> (parent node, key in parent)
    todo: list[tuple[Any, int, int]] = [(data, 1, 0)]
    while todo:
        value, depth, node = todo.pop()
        if depth > MAX_JSON_DEPTH:
            where = _path(links, node)
            raise ApiError(400, f"the request body is nested too deeply: {where} is more than "
                                f"{MAX_JSON_DEPTH} levels of arrays and objects down",
                           param=where.split(".", 1)[0] or None)
        pairs = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in pairs:
            if surrogates and isinstance(key, str) and _lone_surrogate(key):
                _refuse_surrogate(_path(links, node), f"the key {key!r}")
            if isinstance(child, str):
                if surrogates and _lone_surrogate(child):
                    links.append((node, key))
                    _refuse_surrogate(_path(links, len(links) - 1), "it")
            elif isinstance(child, dict | list):
                links.append((node, key))
                todo.append((child, depth + 1, len(links) - 1))


def _lone_surrogate(text: str) -> bool:
    # json.loads joins escaped pairs into one code point, so any surrogate left is lone.
    return not text.isascii() and _SURROGATE.search(text) is not None


def _refuse_surrogate(where: str, what: str) -> None:
    place = where or "the body"
    raise ApiError(400, f"{place}: {what} contains a lone surrogate (a \\ud800-\\udfff escape without "
                        "its pair), which is not valid Unicode text", param=where or None)


def _path(links: list[tuple[int, str | int]], node: int) -> str:
    """The dotted path of a node ("messages.0.content"), shortened in the middle if very deep."""
    keys: list[str] = []
    while node > 0:
        node, key = links[node]
        keys.append(str(key))
    keys.reverse()
    if len(keys) > 12:
        keys = [*keys[:6], "...", *keys[-4:]]
    return ".".join(keys)


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


class LoraRef(BaseModel):
    """One adapter of a request's ``lora`` list: its index in ``/lora-adapters`` or its name."""

    model_config = ConfigDict(extra="ignore")

    id: int | str
    # Checked with the request (kvllama.request.check_adapter_scale): one rule for every way in.
    scale: float = 1.0
