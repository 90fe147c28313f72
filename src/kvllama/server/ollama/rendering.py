"""Ollama's wire format out: response bodies and NDJSON chunks (its request bodies: ``schemas``).

Like the other families this only renders what the one reducer yields: a
streamed ``/api/chat`` reply renders each content delta as a ``message``
chunk and a whole one renders :class:`Reply`, their fold; ``/api/generate``
renders the text as generated (as a text completion does), event by event or
joined. Either way the last chunk (``done: true``) carries ``done_reason``
and the timings in nanoseconds, taken from the same result.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from kvllama.api.residency import KnownModel
from kvllama.events import Event, TextEvent, ThinkingEvent
from kvllama.models.loaded import ModelInfo
from kvllama.replies import Block, BlockStart, Delta, Reply, TextDelta, ThinkingDelta
from kvllama.results import CompletionResult
from kvllama.server.errors import error_body, from_exception
from kvllama.server.sse import dumps

Kind = Literal["generate", "chat"]
NDJSON = "application/x-ndjson"
DONE_REASON = {"stop": "stop", "length": "length", "cancelled": "stop"}
# The Ollama release whose API this edge follows (clients gate features on /api/version).
API_VERSION = "0.9.0"
# Models stay loaded: like Ollama's keep_alive -1 (it adds Go's largest duration, ~292 years).
NEVER_EXPIRES = "2318-01-01T00:00:00Z"
# /api/chat renders tools into every model's template (calls are parsed for models with markers).
CAPABILITIES = ["completion", "tools"]


# --- responses -------------------------------------------------------------


def timestamp(seconds: float | None = None) -> str:
    """RFC 3339 in UTC, as Ollama's ``created_at`` and ``modified_at``."""
    moment = datetime.fromtimestamp(time.time() if seconds is None else seconds, UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def ns(seconds: float) -> int:
    return max(0, round(seconds * 1e9))


def loaded(model: str, kind: Kind, reason: str = "load") -> dict[str, Any]:
    """Ollama's answer to an empty prompt or message list: the model is loaded (or, with
    ``keep_alive`` 0, unloaded), nothing generated."""
    body: dict[str, Any] = {"model": model, "created_at": timestamp()}
    if kind == "chat":
        body["message"] = {"role": "assistant", "content": ""}
    else:
        body["response"] = ""
    return {**body, "done": True, "done_reason": reason}


def final(result: CompletionResult, started: float) -> dict[str, Any]:
    """The fields of the last chunk: why it ended, token counts and timings (ns).

    ``load_duration`` is the time spent waiting for a sequence slot (models stay loaded;
    Ollama's includes waiting for its scheduler too).
    """
    s = result.stats
    return {
        "done": True, "done_reason": DONE_REASON[result.finish_reason],
        "total_duration": ns(time.perf_counter() - started), "load_duration": ns(s.queue_seconds),
        "prompt_eval_count": s.prompt_tokens, "prompt_eval_duration": ns(s.prefill_seconds),
        "eval_count": s.generated_tokens, "eval_duration": ns(s.decode_seconds),
    }


def tool_calls(calls: Sequence[Block]) -> list[dict[str, Any]]:
    return [{"function": {"index": i, "name": b.name, "arguments": b.call.arguments if b.call else {}}}
            for i, b in enumerate(calls)]


def message(reply: Reply) -> dict[str, Any]:
    """The assistant message a stream of ``reply``'s deltas adds up to."""
    out: dict[str, Any] = {"role": "assistant", "content": reply.text}
    if thinking := reply.thinking:
        out["thinking"] = thinking
    if calls := reply.calls:
        out["tool_calls"] = tool_calls(calls)
    return out


class OllamaStreamWriter:
    """Events -> NDJSON lines: one ``done: false`` chunk per piece of reply, then the final chunk.

    Also renders the non-streamed body (:meth:`whole`) from the same result.
    """

    def __init__(self, kind: Kind, model: str, started: float) -> None:
        self.kind = kind
        self.model = model
        self.started = started
        self._calls = 0  # tool calls sent so far: the next call's index

    def start(self) -> list[str]:
        return []

    def on_event(self, event: Event, deltas: Sequence[Delta]) -> list[str]:
        if self.kind == "chat":
            return [self._line({"message": m}) for d in deltas if (m := self._message(d)) is not None]
        if isinstance(event, TextEvent) and event.text:
            return [self._line({"response": event.text})]
        if isinstance(event, ThinkingEvent) and event.text:
            return [self._line({"response": "", "thinking": event.text})]
        return []

    def finish(self, result: CompletionResult, reply: Reply) -> list[str]:
        if self.kind == "chat":
            last: dict[str, Any] = {"message": {"role": "assistant", "content": ""}}
        else:
            last = {"response": "", "context": list(result.context_tokens)}
        return [self._line({**last, **final(result, self.started)})]

    def error(self, exc: BaseException) -> list[str]:
        return [dumps(error_body(from_exception(exc), "ollama")) + "\n"]

    def whole(self, result: CompletionResult, reply: Reply) -> dict[str, Any]:
        """The non-streamed body."""
        if self.kind == "chat":
            body: dict[str, Any] = {"message": message(reply)}
        else:
            body = {"response": result.reply}
            if result.thinking:
                body["thinking"] = result.thinking
            body["context"] = list(result.context_tokens)
        return {"model": self.model, "created_at": timestamp(), **body, **final(result, self.started)}

    def _message(self, delta: Delta) -> dict[str, Any] | None:
        match delta:
            case TextDelta(flat=flat) if flat:
                return {"role": "assistant", "content": flat}
            case ThinkingDelta(text=text) if text:
                return {"role": "assistant", "content": "", "thinking": text}
            case BlockStart(kind="tool_use", call=call) if call is not None:
                self._calls += 1
                return {"role": "assistant", "content": "", "tool_calls": [{"function": {
                    "index": self._calls - 1, "name": call.name, "arguments": call.arguments}}]}
        return None

    def _line(self, fields: dict[str, Any]) -> str:
        body = {"model": self.model, "created_at": timestamp(), **fields}
        body.setdefault("done", False)
        return dumps(body) + "\n"


# --- models ----------------------------------------------------------------


def display_name(name: str) -> str:
    """An Ollama model name carries a tag; a served name without one is listed as ``name:latest``."""
    return name if ":" in name else f"{name}:latest"


def human_number(n: int) -> str:
    """Ollama's parameter_size: 7.6B, 268.10M, 8B, 500K."""
    for scale, unit, decimals in ((1e9, "B", 1), (1e6, "M", 2), (1e3, "K", 0)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f}{unit}" if value == math.floor(value) else f"{value:.{decimals}f}{unit}"
    return str(n)


def details(info: ModelInfo) -> dict[str, Any]:
    return {"parent_model": "", "format": "gguf", "family": info.architecture,
            "families": [info.architecture], "parameter_size": human_number(info.n_params),
            "quantization_level": info.quant}


def digest(info: ModelInfo) -> str:
    """Stands in for Ollama's manifest digest: stable for one file (its path and size), not its hash."""
    return hashlib.sha256(f"{info.path}\0{info.size_bytes}\0{info.n_params}".encode()).hexdigest()


def modified_at(info: ModelInfo) -> str:
    try:
        return timestamp(os.stat(info.path).st_mtime)
    except (OSError, ValueError):  # not a file (a stub, a path with a NUL)
        return timestamp(info.loaded_at)


def tag(name: str, info: ModelInfo) -> dict[str, Any]:
    """One ``/api/tags`` entry for a loaded model."""
    shown = display_name(name)
    return {"name": shown, "model": shown, "modified_at": modified_at(info), "size": info.size_bytes,
            "digest": digest(info), "details": details(info)}


def tag_unloaded(name: str, known: KnownModel) -> dict[str, Any]:
    """One ``/api/tags`` entry for a model that is not loaded (read from its GGUF header)."""
    shown = display_name(name)
    path = known.path or ""
    try:
        modified = timestamp(os.stat(path).st_mtime)
    except (OSError, ValueError):
        modified = timestamp()
    family = known.architecture
    return {"name": shown, "model": shown, "modified_at": modified, "size": known.size_bytes,
            "digest": hashlib.sha256(f"{path}\0{known.size_bytes}".encode()).hexdigest(),
            "details": {"parent_model": "", "format": "gguf", "family": family, "families": [family],
                        "parameter_size": "", "quantization_level": known.quant}}


def running(name: str, info: ModelInfo, expires_in: float | None) -> dict[str, Any]:
    """One ``/api/ps`` entry; ``size_vram`` counts the whole model when layers are offloaded."""
    shown = display_name(name)
    size = info.memory_estimate_bytes
    expires = NEVER_EXPIRES if expires_in is None else timestamp(time.time() + expires_in)
    return {"name": shown, "model": shown, "size": size, "digest": digest(info), "details": details(info),
            "expires_at": expires, "size_vram": size if info.context.get("n_gpu_layers") else 0,
            "context_length": info.context.get("n_ctx_seq", info.n_ctx_train)}


def show(info: ModelInfo) -> dict[str, Any]:
    """``/api/show``: details and GGUF-style ``model_info`` keys (clients read ``<arch>.context_length``)."""
    arch = info.architecture
    n_ctx_seq = info.context.get("n_ctx_seq", info.n_ctx_train)
    return {
        "license": "",
        "modelfile": f"# Served by kvllama\nFROM {info.path}\n",
        "parameters": f"num_ctx {n_ctx_seq}",
        "template": "",
        "details": details(info),
        "model_info": {
            "general.architecture": arch, "general.parameter_count": info.n_params,
            f"{arch}.context_length": info.n_ctx_train, f"{arch}.block_count": info.n_layer,
            "kvllama.context_length": n_ctx_seq, "kvllama.chat_template_source": info.chat_template_source,
        },
        # Ollama's names: "vision" for images, "audio" for audio (a model with a projector).
        "capabilities": [*CAPABILITIES, *(("vision",) if "image" in info.modalities else ()),
                         *(("audio",) if "audio" in info.modalities else ())],
        "modified_at": modified_at(info),
    }


def normalized(vector: Sequence[float], dimensions: int | None) -> list[float]:
    """Unit length, as Ollama's ``/api/embed`` answers (first truncated to ``dimensions`` if fewer)."""
    if dimensions is not None and 0 < dimensions < len(vector):
        vector = vector[:dimensions]
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else list(vector)
