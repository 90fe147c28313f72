"""Preparing a :class:`~kvllama.request.GenerationRequest` for the decode loop: the model-bound part.

The request arrives checked for syntax (kvllama.request); what depends on
the model is done here, once: a conversation is rendered through the one
chat-prompt builder (kvllama.chat.prompt) and its template's stops added,
the prompt becomes token ids (checked against the vocabulary), the adapter
set is resolved against the model's, sampling values are bounded by the
model, and the sampler chains are built (grammar parsing happens here, in
the caller's thread, never on the decode thread).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from kvllama.backend.protocol import Backend
from kvllama.chat.prompt import ChatInput, ChatPrompt, Render, build_chat_prompt
from kvllama.decoding.markers import MarkerStrings
from kvllama.decoding.request import EventSink, Request, RequestSpec, new_request_id
from kvllama.errors import ContextOverflowError, InvalidMediaError, InvalidOptionError, InvalidRequestError
from kvllama.request import GenerationRequest, Prompt
from kvllama.sampling import SamplingParams

_INT32_MAX = 2**31 - 1


def chat_prompt(backend: Backend, chat: ChatInput, render: Render, template_stops: tuple[str, ...],
                *, find_save_points: bool) -> ChatPrompt:
    """A conversation's prompt, through the one builder, tokenized as a request's prompt is."""
    return build_chat_prompt(chat, render, lambda t: prompt_tokens(backend, t), template_stops,
                             find_save_points=find_save_points)


def resolve(backend: Backend, request: GenerationRequest,
            build_chat: Callable[[ChatInput, bool], ChatPrompt]) -> GenerationRequest:
    """The request with its prompt as the token ids the loop runs (a conversation rendered once).

    ``build_chat(chat, find_save_points)``: the model's :func:`chat_prompt`.
    """
    if request.media:
        return _with_media(backend, request, build_chat)
    if request.chat is not None:
        return _with_chat_prompt(backend, request, build_chat(request.chat, not request.context))
    prompt = request.prompt
    assert prompt is not None
    if isinstance(prompt, str) and (request.context or request.options.continue_session):
        # It follows earlier tokens (a session's transcript, Ollama's context): no BOS mid-conversation.
        tokens = [*_ids(backend, request.context),
                  *tokenize_text(backend, "prompt", prompt, add_special=False, parse_special=True)]
    else:
        tokens = [*_ids(backend, request.context), *prompt_tokens(backend, prompt)]
    return replace(request, prompt=tuple(tokens), context=())


def _with_chat_prompt(backend: Backend, request: GenerationRequest, chat: ChatPrompt) -> GenerationRequest:
    sampling = replace(request.sampling, stop=chat.with_stops(request.sampling.stop))
    options = request.options
    if not options.save_points and chat.save_points:
        options = replace(options, save_points=chat.save_points)
    tokens = chat.tokens
    if request.context:
        tokens = (*_ids(backend, request.context),
                  *tokenize_text(backend, "prompt", chat.text, add_special=False, parse_special=True))
    return replace(request, prompt=tokens, chat=None, context=(), sampling=sampling, options=options)


def _with_media(backend: Backend, request: GenerationRequest,
                build_chat: Callable[[ChatInput, bool], ChatPrompt]) -> GenerationRequest:
    """A prompt with images or audio: its text (a conversation rendered once) through the projector.

    No shared-prefix save points are looked for (their offsets come from the text tokenizer);
    the prompt's rows are found by the layout's rules instead (kvllama.media.layout).
    """
    media = backend.media
    if media is None:
        raise InvalidMediaError("this model was loaded without a projector, so it takes no images or "
                                "audio (load it with mmproj=PATH, or kvllama serve --mmproj PATH)")
    if request.context or request.options.continue_session:
        raise InvalidMediaError("media cannot follow a session's transcript or an Ollama context; "
                                "send the whole conversation")
    if request.chat is not None:
        chat = build_chat(request.chat, False)
        text = chat.text
        stops = chat.with_stops(request.sampling.stop)
        request = replace(request, sampling=replace(request.sampling, stop=stops))
    elif isinstance(request.prompt, str):
        text = request.prompt
    else:
        raise InvalidMediaError(f"a prompt with media must be text with one {media.marker} marker per "
                                "medium, not token ids")
    bos = backend.description.special_tokens.get("bos_token")
    try:
        tokens, layout = media.tokenize(text, request.media, add_special=not (bos and text.startswith(bos)))
    except UnicodeEncodeError as exc:
        raise InvalidRequestError(f"the prompt contains an unpaired surrogate at index {exc.start}") from None
    return replace(request, prompt=tokens, chat=None, context=(), layout=layout)


def _ids(backend: Backend, context: Sequence[int]) -> list[int]:
    return prompt_tokens(backend, context) if context else []


def loop_request(
    backend: Backend, markers: MarkerStrings | None, request: GenerationRequest, sink: EventSink,
    default_adapters: dict[str, float],
) -> Request:
    """A resolved request (its ids checked by :func:`resolve`) as the loop runs it, its samplers
    built (close them if it is never submitted)."""
    assert request.resolved and isinstance(request.prompt, tuple)
    if request.adapters is None:
        adapters = tuple(sorted((i, s) for i, s in default_adapters.items() if s != 0.0))
    else:
        adapters = request.adapters
    options = replace(request.options, adapters=adapters,
                      adapter_key=tuple((backend.adapter_sha256(i), s) for i, s in adapters))
    sampling = bound_by_model(request.sampling.with_seed(), backend)
    tokens = request.prompt
    n_ctx_seq = backend.shape.n_ctx_seq
    if len(tokens) >= n_ctx_seq:
        raise ContextOverflowError(len(tokens), n_ctx_seq)
    loop_req = Request(RequestSpec(new_request_id(), tokens, sampling, options, layout=request.layout), sink)
    loop_req.sampler = backend.new_sampler(sampling)
    try:
        if markers is not None and markers.has_tool_calls and not sampling.greedy:
            loop_req.greedy_sampler = backend.new_sampler(replace(sampling, temperature=0.0))
    except BaseException:
        close_samplers(loop_req)
        raise
    return loop_req


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

