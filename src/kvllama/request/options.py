"""A request's non-sampling options (tenant, session, parent row, save points, adapters), checked once.

The rules for a cache salt, a session id and an adapter scale live here (the
salt's in :mod:`kvllama.kvcache.keys`, which keys rows by it); the HTTP
schemas wrap these same functions, so a value is refused with the same words
whichever way it arrives.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvllama.errors import InvalidRequestError
from kvllama.kvcache import validate_cache_salt

MAX_SESSION_ID = 256
MAX_SAVE_POINTS = 16
AdapterSet = tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class RequestOptions:
    """What a request asks of the engine besides sampling."""

    # Tenant isolation: rows and sessions of another salt are invisible.
    cache_salt: str | None = None
    # Sticky session (decoding/sessions.py): the conversation keeps its sequence between turns.
    session_id: str | None = None
    # A previous result's finish_key: resume exactly from that row.
    parent_key: bytes | None = None
    # Token offsets where this prompt's prefix is shared with others (the end of a system
    # prompt, a cache_control breakpoint): the prefill saves a row there (decoding/warm.py).
    save_points: tuple[int, ...] = ()
    # The prompt continues the session's transcript (its previous prompt and reply) instead
    # of repeating it; optionally only if the transcript is this many tokens long.
    continue_session: bool = False
    expect_session_tokens: int | None = None
    # LoRA adapters the request runs with: ((adapter id, scale), ...), sorted, no zero scales;
    # and the same by file sha256, which names them in cache keys. Set at admission, where the
    # model's defaults and files are known (GenerationRequest.adapters is what was asked).
    adapters: AdapterSet = ()
    adapter_key: AdapterSet = ()
    # Seconds the model stays loaded after this request (Ollama's keep_alive: 0 unloads at
    # once, negative keeps it loaded); None: the model's default (api/residency.py).
    keep_alive: float | None = None
    # Who goes first (vLLM's meaning: lower runs sooner; default 0): the queue is ordered by it, and
    # a request that waits for a slot parks a running one of lower priority (decoding/preemption.py).
    priority: int = 0

    @property
    def kv_tenant(self) -> tuple[str | None, AdapterSet]:
        """Who may share KV with this request: the same cache salt and the same adapters."""
        return (self.cache_salt, self.adapter_key)


def check_session_id(value: object) -> str:
    """A session id: 1 to 256 printable characters (the body field and the x-session-id header alike)."""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_SESSION_ID or not value.isprintable():
        raise InvalidRequestError(f"session_id must be 1 to {MAX_SESSION_ID} printable characters")
    return value


def check_adapter_scale(scale: object) -> float:
    """An adapter's scale: a finite number in [-100, 100]."""
    ok = isinstance(scale, int | float) and not isinstance(scale, bool)
    if not ok or not math.isfinite(scale) or not -100.0 <= scale <= 100.0:  # type: ignore[arg-type,operator]
        raise InvalidRequestError(f"an adapter scale is a number in [-100, 100], got {scale!r}")
    return float(scale)  # type: ignore[arg-type]


def take_options(params: dict[str, Any]) -> RequestOptions:
    """Take the non-sampling options out of ``params`` and check them."""
    salt = validate_cache_salt(params.pop("cache_salt", None))
    session_id = params.pop("session_id", None)
    if session_id is not None:
        check_session_id(session_id)
    parent_key = params.pop("parent_key", None)
    if parent_key is not None and not isinstance(parent_key, bytes):
        raise InvalidRequestError("parent_key must be the bytes of a previous result's finish_key")
    save_points = _save_points(params.pop("save_points", None))
    continue_session = params.pop("continue_session", False) or False
    expect = params.pop("expect_session_tokens", None)
    if not isinstance(continue_session, bool) or (continue_session and session_id is None):
        raise InvalidRequestError("continue_session is true or false, and needs a session_id")
    if expect is not None and (isinstance(expect, bool) or not isinstance(expect, int) or expect < 0
                               or not continue_session):
        raise InvalidRequestError("expect_session_tokens is a token count, with continue_session")
    keep_alive = params.pop("keep_alive", None)
    return RequestOptions(cache_salt=salt, session_id=session_id, parent_key=parent_key,
                          save_points=save_points, continue_session=continue_session,
                          expect_session_tokens=expect,
                          keep_alive=None if keep_alive is None else parse_keep_alive(keep_alive),
                          priority=check_priority(params.pop("priority", 0)))


def check_priority(value: object) -> int:
    """A priority: an integer in [-2**31, 2**31) (lower runs sooner)."""
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**31) <= value < 2**31:
        raise InvalidRequestError(f"priority must be an integer (lower runs sooner), got {value!r}")
    return value


_DURATION = re.compile(r"(-?\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: object) -> float:
    """Seconds, from Ollama's ``keep_alive``: a number of seconds or a Go duration ("5m", "1h30m",
    "-1s"). Negative: for ever."""
    if isinstance(value, bool):
        raise InvalidRequestError("keep_alive is seconds or a duration such as \"5m\"")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise InvalidRequestError("keep_alive must be a finite number of seconds")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        parts = _DURATION.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            sign = -1.0 if text.startswith("-") else 1.0
            return sign * sum(abs(float(n)) * _UNIT[u] for n, u in parts)
    raise InvalidRequestError(f"keep_alive is seconds or a duration such as \"5m\", got {value!r}")


def adapter_set(given: object) -> AdapterSet:
    """``[(id, scale) | {"id", "scale"}, ...]``, checked, sorted by id, zero scales dropped
    (scale 0 is the same as leaving the adapter out)."""
    if isinstance(given, (str, bytes)) or not isinstance(given, Sequence):
        raise InvalidRequestError("adapters must be a list of (adapter id, scale) pairs")
    out: dict[str, float] = {}
    for item in given:
        if isinstance(item, Mapping):
            item = (item.get("id"), item.get("scale", 1.0))
        if not isinstance(item, Sequence) or isinstance(item, str) or len(item) != 2:
            raise InvalidRequestError("adapters must be a list of (adapter id, scale) pairs")
        adapter_id, scale = item
        if not isinstance(adapter_id, str):
            raise InvalidRequestError(f"adapter ({adapter_id!r}, {scale!r}): an id and a number")
        if check_adapter_scale(scale) != 0.0:
            out[adapter_id] = float(scale)
    return tuple(sorted(out.items()))


def _save_points(value: object) -> tuple[int, ...]:
    """Token offsets into the prompt where a shared prefix ends (see RequestOptions.save_points)."""
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise InvalidRequestError("save_points must be a list of token offsets into the prompt")
    if len(value) > MAX_SAVE_POINTS:
        raise InvalidRequestError(f"save_points takes at most {MAX_SAVE_POINTS} offsets, got {len(value)}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise InvalidRequestError(f"save_points entries must be non-negative token offsets, got {v!r}")
    return tuple(sorted(set(value)))
