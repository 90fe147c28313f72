"""Every error kvllama raises, in one place.

Callers (the HTTP layer above all) map these to status codes by type, never
by parsing messages, so each distinct failure gets its own class. All of them
derive from :class:`KvllamaError`; ``code`` is a stable snake_case name that
the HTTP layer puts in its JSON error bodies.
"""

from __future__ import annotations


class KvllamaError(Exception):
    """Base class: anything kvllama raises on purpose."""

    code = "kvllama_error"

    def __reduce__(self) -> tuple[object, ...]:
        # Errors cross process boundaries (scale-out replicas send them to the
        # ingress). Exception's own pickling calls ``cls(*args)``, which breaks
        # for subclasses whose __init__ takes other arguments than the message;
        # rebuilding from the message and attributes works for all of them.
        return (_rebuild_error, (type(self), self.args, dict(self.__dict__)))


def _blank(cls: type[KvllamaError]) -> KvllamaError:
    """An instance without running ``cls.__init__``: the builtin base whose layout it has allocates it
    (CPython accepts only that one: OSError's for ModelFileNotFoundError, Exception's for most)."""
    for base in cls.__mro__:
        if base.__module__ == "builtins" and "__new__" in vars(base):
            try:
                return base.__new__(cls)  # type: ignore[no-any-return, call-overload]
            except TypeError:
                continue
    raise TypeError(f"cannot rebuild {cls.__name__}")  # pragma: no cover


def _rebuild_error(
    cls: type[KvllamaError], args: tuple[object, ...], attrs: dict[str, object]
) -> KvllamaError:
    error = _blank(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(attrs)
    return error


class InvalidRequestError(KvllamaError, ValueError):
    """The caller asked for something malformed (a 4xx, never a crash)."""

    code = "invalid_request"


class InvalidOptionError(InvalidRequestError):
    """A model or request option has a value outside its allowed set."""

    code = "invalid_option"

    def __init__(self, option: str, value: object, allowed: str) -> None:
        self.option = option
        self.value = value
        self.allowed = allowed
        super().__init__(f"invalid value {value!r} for option {option!r}: expected {allowed}")


class InvalidSamplingError(InvalidRequestError):
    """A sampling parameter is out of range."""

    code = "invalid_sampling"


class GrammarError(InvalidRequestError):
    """The GBNF grammar did not parse."""

    code = "invalid_grammar"


class InvalidChatContentError(InvalidRequestError):
    """Chat messages have a shape or content kind kvllama cannot render."""

    code = "invalid_chat_content"


class InvalidMediaError(InvalidRequestError):
    """An image or audio input that cannot be used: undecodable, too large, too many, or a model
    without a projector for it. Always refused before it reaches the decode loop."""

    code = "invalid_media"


class ChatTemplateError(InvalidRequestError):
    """No chat template is available, or the template failed to render."""

    code = "chat_template_error"


class ContextOverflowError(InvalidRequestError):
    """The prompt does not fit in one sequence's context window."""

    code = "context_overflow"

    def __init__(self, prompt_tokens: int, n_ctx: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.n_ctx = n_ctx
        super().__init__(
            f"prompt is {prompt_tokens} tokens but the per-sequence context holds {n_ctx}; "
            "shorten the prompt or load the model with a larger n_ctx"
        )


class BatchOverflowError(InvalidRequestError):
    """A single forward pass was asked to take more rows than n_batch allows."""

    code = "batch_overflow"

    def __init__(self, rows: int, n_batch: int) -> None:
        self.rows = rows
        self.n_batch = n_batch
        super().__init__(
            f"{rows} tokens in one forward pass but n_batch is {n_batch}; "
            "pass fewer tokens or load the model with a larger n_batch"
        )


class ModelError(KvllamaError):
    """Base class for failures about a model as a whole."""

    code = "model_error"


class ModelFileNotFoundError(ModelError, FileNotFoundError):
    code = "model_file_not_found"

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"model file not found: {path}")


class MalformedModelError(ModelError):
    """The file exists but llama.cpp could not load it as a GGUF model."""

    code = "malformed_model"


class ModelOutOfMemoryError(ModelError, MemoryError):
    """llama.cpp could not allocate the model or its context."""

    code = "out_of_memory"


class UnknownModelError(ModelError, KeyError):
    code = "unknown_model"

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        super().__init__(model_id)

    def __str__(self) -> str:
        return f"no model loaded under id {self.model_id!r}"


class ModelExistsError(ModelError):
    code = "model_exists"

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        super().__init__(f"a model is already loaded under id {self.model_id!r}")


class ModelBusyError(ModelError):
    """The operation needs the model idle (e.g. unloading with requests in flight)."""

    code = "model_busy"


class ModelCapacityError(ModelError):
    """A model could not be loaded in time: every loaded model was in use and the budget was full."""

    code = "model_capacity"

    def __init__(self, model_id: str, waited: float = 0.0) -> None:
        self.model_id, self.retry_after = model_id, max(1, int(waited / 4) or 1)
        super().__init__(f"model {model_id!r} could not be loaded within {waited:g} s: the models in "
                         "memory are all in use and the memory budget is full; retry later")


class DefaultModelUnavailableError(ModelError):
    """No path was given and the embedded default model package is not installed."""

    code = "default_model_unavailable"


class SessionBusyError(KvllamaError):
    """A request for this session_id is already running (HTTP 409)."""

    code = "session_busy"

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        super().__init__(
            f"session {session_id!r} already has a request in flight; wait for it to finish"
        )


class UnknownSessionError(KvllamaError, KeyError):
    """No session of that id (in this tenant) to continue or fork (HTTP 404)."""

    code = "session_not_found"

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        super().__init__(f"no session {session_id!r} to continue or fork")

    def __str__(self) -> str:
        return str(self.args[0])


class SessionConflictError(KvllamaError):
    """The session is not what the request expects: its length differs, or the id is taken (HTTP 409)."""

    code = "session_conflict"


class NoFreeSlotError(KvllamaError):
    """Every sequence slot is held by a running request or a session (HTTP 503; retry later)."""

    code = "no_free_slot"


class DecodeError(KvllamaError):
    """llama_decode failed; the request that hit it ends with this error."""

    code = "decode_failed"

    def __init__(self, status: int, detail: str = "") -> None:
        self.status = status
        super().__init__(f"llama_decode returned {status}{': ' + detail if detail else ''}")


class NoKvSlotError(DecodeError):
    """llama_decode returned 1: the KV cache has no room for the batch."""

    code = "no_kv_slot"


class DecodeAbortedError(DecodeError):
    """llama_decode returned 2: the pass was stopped (its time budget ran out, or abort())."""

    code = "decode_aborted"


class DecodeTimeoutError(DecodeAbortedError):
    """One forward pass ran longer than the model's ``decode_timeout``."""

    code = "decode_timeout"


class GrammarExhaustedError(InvalidRequestError):
    """The request's grammar allows none of the model's tokens at this point.

    The request ends with this error before anything is accepted into the
    grammar (llama.cpp would otherwise abort the process)."""

    code = "grammar_exhausted"


class InternalEngineError(KvllamaError):
    """A bug inside kvllama ended this request (the loop logged it and serves on)."""

    code = "internal_error"


class ContextLostError(KvllamaError):
    """The model's llama.cpp context failed and was rebuilt; requests in flight ended."""

    code = "context_lost"


class EngineClosedError(KvllamaError):
    code = "engine_closed"
