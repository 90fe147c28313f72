"""Building a request at the edge: every value validated once, before it is queued.

``Engine.infer`` and friends take keyword arguments (what Python users
expect); this module turns them into the typed objects the decode loop runs:
``SamplingParams`` bounded by the model, ``RequestOptions`` (cache salt,
session, parent row), the prompt's tokens, and the sampler chains (grammar
parsing happens here, in the caller's thread, never on the decode thread).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from kvllama.backend.protocol import Backend
from kvllama.engine.markers import MarkerStrings
from kvllama.engine.request import EventSink, Request, RequestOptions, RequestSpec, new_request_id
from kvllama.errors import ContextOverflowError, InvalidOptionError, InvalidRequestError
from kvllama.kvcache import validate_cache_salt
from kvllama.sampling import SamplingParams

Prompt = str | Sequence[int]
_INT32_MAX = 2**31 - 1


def request_options(params: dict[str, Any]) -> RequestOptions:
    """Take the non-sampling options out of ``params`` and check them."""
    salt = params.pop("cache_salt", None)
    if salt is not None:
        validate_cache_salt(salt)
    session_id = params.pop("session_id", None)
    if session_id is not None and (not isinstance(session_id, str) or not session_id):
        raise InvalidRequestError("session_id must be a non-empty string")
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
    return RequestOptions(cache_salt=salt, session_id=session_id, parent_key=parent_key,
                          save_points=save_points, continue_session=continue_session,
                          expect_session_tokens=expect)


MAX_SAVE_POINTS = 16


def _adapter_set(given: object, defaults: dict[str, float]) -> tuple[tuple[str, float], ...]:
    """``adapters=[(id, scale) | {"id", "scale"}, ...]`` (None: the model's defaults), checked,
    sorted by id, zero scales dropped (scale 0 is the same as leaving the adapter out)."""
    if given is None:
        pairs = list(defaults.items())
    elif isinstance(given, (str, bytes)) or not isinstance(given, Sequence):
        raise InvalidRequestError("adapters must be a list of (adapter id, scale) pairs")
    else:
        pairs = []
        for item in given:
            if isinstance(item, Mapping):
                item = (item.get("id"), item.get("scale", 1.0))
            if not isinstance(item, Sequence) or isinstance(item, str) or len(item) != 2:
                raise InvalidRequestError("adapters must be a list of (adapter id, scale) pairs")
            pairs.append((item[0], item[1]))
    out: dict[str, float] = {}
    for adapter_id, scale in pairs:
        if not isinstance(adapter_id, str) or isinstance(scale, bool) or not isinstance(scale, int | float):
            raise InvalidRequestError(f"adapter ({adapter_id!r}, {scale!r}): an id and a number")
        if not -100.0 <= float(scale) <= 100.0:
            raise InvalidRequestError(f"adapter {adapter_id!r}: scale must be in [-100, 100]")
        if float(scale) != 0.0:
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


def build_request(
    backend: Backend, markers: MarkerStrings | None, prompt: Prompt, params: dict[str, Any], sink: EventSink,
    default_adapters: dict[str, float] | None = None,
) -> Request:
    """A request ready to submit, its samplers built (close them if it is never submitted)."""
    params = dict(params)
    adapters = _adapter_set(params.pop("adapters", None), default_adapters or {})
    options = replace(request_options(params), adapters=adapters,
                      adapter_key=tuple((backend.adapter_sha256(i), s) for i, s in adapters))
    sampling = bound_by_model(SamplingParams.from_kwargs(**params).with_seed(), backend)
    if options.continue_session and isinstance(prompt, str):
        # It follows the session's transcript: no BOS in the middle of a conversation.
        tokens = tokenize_text(backend, "prompt", prompt, add_special=False, parse_special=True)
    else:
        tokens = prompt_tokens(backend, prompt)
    n_ctx_seq = backend.shape.n_ctx_seq
    if len(tokens) >= n_ctx_seq:
        raise ContextOverflowError(len(tokens), n_ctx_seq)
    request = Request(RequestSpec(new_request_id(), tuple(tokens), sampling, options), sink)
    request.sampler = backend.new_sampler(sampling)
    try:
        if markers is not None and markers.has_tool_calls and not sampling.greedy:
            request.greedy_sampler = backend.new_sampler(replace(sampling, temperature=0.0))
    except BaseException:
        close_samplers(request)
        raise
    return request


def close_samplers(request: Request) -> None:
    for sampler in (request.sampler, request.greedy_sampler):
        if sampler is not None:
            sampler.close()
    request.sampler = request.greedy_sampler = None


def tokenize_text(backend: Backend, field: str, text: str, **options: bool) -> list[int]:
    """Tokenize text, refusing what cannot be encoded to UTF-8 (a lone surrogate) as a typed error.

    Tokenizing encodes the text anyway, so the check costs nothing extra.
    """
    try:
        return backend.tokenize(text, **options)
    except UnicodeEncodeError as exc:
        raise InvalidRequestError(
            f"{field} contains an unpaired surrogate (\\u{ord(text[exc.start]):04x} at index "
            f"{exc.start}); send valid Unicode text"
        ) from None


def bound_by_model(p: SamplingParams, backend: Backend) -> SamplingParams:
    """Clamp the values llama.cpp sizes allocations by to what the model can use.

    ``top_k`` above the vocabulary keeps every token and ``penalty_last_n`` above
    the sequence's context looks at every token it can hold, so clamping changes
    no output; unclamped, 2**31 made llama.cpp allocate gigabytes. Values that
    do not fit llama.cpp's int32 are refused (ctypes would silently wrap them).
    """
    for name in ("top_k", "penalty_last_n"):
        value = getattr(p, name)
        if value > _INT32_MAX:
            raise InvalidOptionError(name, value, f"at most {_INT32_MAX}")
    n_vocab, n_ctx_seq = backend.description.n_vocab, backend.shape.n_ctx_seq
    for token, _bias in p.logit_bias:
        if token >= n_vocab:
            raise InvalidOptionError("logit_bias", token, f"token ids of this model (0..{n_vocab - 1})")
    return replace(p, top_k=min(p.top_k, n_vocab), penalty_last_n=min(p.penalty_last_n, n_ctx_seq))


def prompt_tokens(backend: Backend, prompt: Prompt) -> list[int]:
    """Text (tokenized with the model's specials) or token ids (checked against the vocabulary)."""
    if isinstance(prompt, str):
        if not prompt:
            raise InvalidRequestError("prompt is empty")
        bos = backend.description.special_tokens.get("bos_token")
        # A rendered chat template may already start with BOS; never add a second.
        add_special = not (bos and prompt.startswith(bos))
        return tokenize_text(backend, "prompt", prompt, add_special=add_special, parse_special=True)
    if isinstance(prompt, Sequence) and not isinstance(prompt, bytes):
        tokens = list(prompt)
        if not tokens:
            raise InvalidRequestError("prompt is empty")
        n_vocab = backend.description.n_vocab
        for t in tokens:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < n_vocab:
                raise InvalidRequestError(
                    f"prompt token {t!r} is not a token id of this model (0..{n_vocab - 1})"
                )
        return tokens
    raise InvalidRequestError("prompt must be a string or a list of token ids")

