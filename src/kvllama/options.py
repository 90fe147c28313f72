"""Model load options: the llama.cpp knobs a loaded model exposes, validated up front.

Validation happens here, before any file is opened, so a typo costs a clear
:class:`InvalidOptionError` instead of a half-loaded model. Values are kept as
the user-facing names ("q8_0", "layer", "off"); the native layer translates
them to llama.cpp's enum numbers.

Defaults favour exact outputs over the last percent of speed (see
docs/llama-cpp-facts.md): flash attention is pinned off, because with it a
restored sequence longer than the sliding window diverges from a cold run, and
``kv_unified`` is off, because with it decoding one sequence beside others
changed its greedy tokens.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from kvllama.errors import InvalidOptionError

SPLIT_MODES = ("none", "layer", "row")
FLASH_ATTN_MODES = ("on", "off", "auto")
KV_TYPES = ("f16", "f32", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")

DEFAULT_N_SEQ_MAX = 8
DEFAULT_N_CTX_PER_SEQ = 4096


def _default_threads() -> int:
    return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ModelOptions:
    """Everything that decides how a GGUF file becomes a llama.cpp model and context."""

    n_gpu_layers: int = 0
    split_mode: str = "layer"
    main_gpu: int = 0
    tensor_split: tuple[float, ...] = ()
    # Total KV cells over all sequences, as in llama.cpp. None: n_seq_max times
    # min(4096, n_ctx_train), so every sequence gets a real conversation's room.
    n_ctx: int | None = None
    n_batch: int = 512
    n_ubatch: int = 512
    n_seq_max: int = DEFAULT_N_SEQ_MAX
    n_threads: int = field(default_factory=_default_threads)
    n_threads_batch: int | None = None
    flash_attn: str = "off"
    type_k: str = "f16"
    type_v: str = "f16"
    # A full-size sliding-window cache (llama.cpp's own default). Off, each sequence's
    # window layers keep a ring of n_swa + n_ubatch cells, and once a sequence wraps it
    # a resumed turn places its rows in other cells than a cold run of the same tokens
    # (measured: docs/measured/exactness.md); the cost is KV memory for those layers.
    swa_full: bool = True
    kv_unified: bool = False
    # Leave a finished request's prompt KV in its slot until the slot is needed, so a
    # request that repeats or continues it prefills only its last tokens (decoding/kept.py).
    keep_finished: bool = True
    # Recompute a kept reply's KV as prompt chunks while the loop is idle, so the next turn
    # reuses the reply too and prefills only its new message, exactly (decoding/settling.py).
    settle_replies: bool = True
    # Decode each step as a 2-row chunk of its sequence (the previous token recomputed), so a
    # reply's KV is computed exactly like a prompt's: resumes keep it, restores leave 2 tokens.
    # Needs GGML_CPU_TILED_MM=0 from the process start on CPU K-quant models (docs/measured/exactness.md).
    canonical_decode: bool = False
    # Speculative decoding by prompt lookup: up to this many draft tokens per step (0: off);
    # needs verify passes computed as decode steps are: kvllama's patched llama.cpp build
    # (decode passes in one kernel class) or canonical_decode (decoding/speculation.py).
    speculative_draft: int = 0
    # A second GGUF with the same vocabulary whose greedy guesses are the drafts (instead of
    # prompt lookup); needs speculative_draft >= 1 (backend/draft_model.py).
    draft_model: str | None = None
    # Rows of prompt per request per tick while other requests are decoding.
    prefill_chunk_size: int | None = None
    # Milliseconds an idle loop waits, once a request arrives, for the next one of its burst
    # (again after each, at most 20 windows in all): requests sent together by separate
    # clients then prefill together (decoding/loop.py). A lone request's first token comes
    # this much later; 0 turns it off.
    burst_window_ms: float = 15.0
    # A multimodal projector GGUF (llama.cpp's mmproj) for images and/or audio in prompts.
    mmproj: str | None = None
    # A Jinja chat template to use when the GGUF carries none.
    chat_template: str | None = None
    use_mmap: bool = True
    # llama.cpp's "extra buffer types": CPU weight repacking (and AMX). Off by
    # default because the repacked kernels compute a row differently depending
    # on how many rows share the batch, which breaks alone == beside-others.
    use_extra_bufts: bool = False
    # Decode rows per forward pass; more decoders run as several passes. None:
    # 7 where llama.cpp's CPU matmul switches kernels at 8 rows for this model's
    # weight types (keeps a sequence's tokens identical alone or beside others),
    # else no limit (backend/decode_rows.py); 0 means no limit.
    max_decode_rows: int | None = None
    # How the cache identifies the model file: "sha256" (whole file) or "fast".
    fingerprint: str = "sha256"
    # Seconds one forward pass may run before llama.cpp is told to abort it (0: no
    # limit). The requests of an aborted pass end with DecodeTimeoutError and the
    # loop goes on; a 512-row prompt chunk of a 1B model takes ~1-2 s on 2 cores.
    decode_timeout: float = 120.0
    # Extended thinking / tool-call markers: a preset name (docs/agents.md), and/or
    # explicit strings: thinking_markers=("<think>", "</think>"),
    # tool_call_markers={"start": ..., "end": ..., "payload_start": ..., "payload_end": ...}.
    markers: str | None = None
    thinking_markers: tuple[str, str] | None = None
    tool_call_markers: dict[str, str] | None = None

    @classmethod
    def from_kwargs(cls, **options: Any) -> ModelOptions:
        """Build and validate; unknown names are errors too (they are usually typos)."""
        known = {f.name for f in fields(cls)}
        for name in options:
            if name not in known:
                raise InvalidOptionError(name, options[name], "one of " + ", ".join(sorted(known)))
        if "tensor_split" in options and options["tensor_split"] is not None:
            options["tensor_split"] = _float_tuple(options["tensor_split"])
        opts = cls(**{k: v for k, v in options.items() if v is not None or k in _NULLABLE})
        opts.validate()
        return opts

    def _validate_speculation(self) -> None:
        _int("speculative_draft", self.speculative_draft, minimum=0, maximum=16)
        draft = self.draft_model
        if draft is not None and (not isinstance(draft, str) or not draft or not self.speculative_draft):
            raise InvalidOptionError("draft_model", self.draft_model,
                                     "a GGUF path, with speculative_draft >= 1 (the most tokens it drafts)")

    def _validate_times(self) -> None:
        if (isinstance(self.decode_timeout, bool) or not isinstance(self.decode_timeout, int | float)
                or not 0 <= self.decode_timeout < 1e9):
            raise InvalidOptionError("decode_timeout", self.decode_timeout, "seconds >= 0 (0: no limit)")
        if (isinstance(self.burst_window_ms, bool) or not isinstance(self.burst_window_ms, int | float)
                or not 0 <= self.burst_window_ms <= 1000):
            raise InvalidOptionError("burst_window_ms", self.burst_window_ms, "milliseconds from 0 to 1000")

    def validate(self) -> None:
        _choice("split_mode", self.split_mode, SPLIT_MODES)
        _choice("flash_attn", self.flash_attn, FLASH_ATTN_MODES)
        _choice("type_k", self.type_k, KV_TYPES)
        _choice("type_v", self.type_v, KV_TYPES)
        _choice("fingerprint", self.fingerprint, ("sha256", "fast"))
        _int("n_gpu_layers", self.n_gpu_layers, minimum=-1)
        _int("main_gpu", self.main_gpu, minimum=0)
        _int("n_batch", self.n_batch, minimum=1)
        _int("n_ubatch", self.n_ubatch, minimum=1)
        _int("n_seq_max", self.n_seq_max, minimum=1, maximum=256)
        _int("n_threads", self.n_threads, minimum=1)
        if self.max_decode_rows is not None:
            _int("max_decode_rows", self.max_decode_rows, minimum=0)
        self._validate_times()
        self._validate_speculation()
        if self.mmproj is not None and (not isinstance(self.mmproj, str) or not self.mmproj):
            raise InvalidOptionError("mmproj", self.mmproj, "the path of a projector GGUF (an mmproj file)")
        if self.n_threads_batch is not None:
            _int("n_threads_batch", self.n_threads_batch, minimum=1)
        if self.n_ctx is not None:
            _int("n_ctx", self.n_ctx, minimum=8)
        if self.prefill_chunk_size is not None:
            _int("prefill_chunk_size", self.prefill_chunk_size, minimum=1)
        for name in ("swa_full", "kv_unified", "use_mmap", "use_extra_bufts", "keep_finished",
                     "canonical_decode", "settle_replies"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidOptionError(name, getattr(self, name), "true or false")
        if self.n_ubatch > self.n_batch:
            raise InvalidOptionError("n_ubatch", self.n_ubatch, f"at most n_batch ({self.n_batch})")
        if any(x < 0 for x in self.tensor_split):
            raise InvalidOptionError("tensor_split", self.tensor_split, "non-negative proportions")
        if (self.type_v != "f16" and self.type_v != "f32") and self.flash_attn == "off":
            raise InvalidOptionError(
                "type_v",
                self.type_v,
                "f16 or f32 unless flash_attn is 'on' or 'auto' (llama.cpp needs flash "
                "attention for a quantized V cache)",
            )
        if self.thinking_markers is not None and not (
            isinstance(self.thinking_markers, tuple | list) and len(self.thinking_markers) == 2
            and all(isinstance(m, str) and m for m in self.thinking_markers)
        ):
            raise InvalidOptionError(
                "thinking_markers", self.thinking_markers, "a (start, end) pair of strings"
            )
        if self.tool_call_markers is not None and not (
            isinstance(self.tool_call_markers, dict)
            and {"start", "end"} <= set(self.tool_call_markers)
            and set(self.tool_call_markers) <= {"start", "end", "payload_start", "payload_end"}
            and all(isinstance(v, str) and v for v in self.tool_call_markers.values())
        ):
            raise InvalidOptionError(
                "tool_call_markers", self.tool_call_markers,
                "a dict with string start, end and optional payload_start, payload_end",
            )
        if self.chat_template is not None and not isinstance(self.chat_template, str):
            raise InvalidOptionError("chat_template", self.chat_template, "a Jinja template string")

    def effective_chunk_size(self) -> int:
        """Default max(64, n_batch // 4), never above n_batch."""
        size = self.prefill_chunk_size or max(64, self.n_batch // 4)
        return min(size, self.n_batch)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tensor_split"] = list(self.tensor_split)
        return data


_NULLABLE = {"n_ctx", "draft_model", "mmproj",
             "n_threads_batch", "prefill_chunk_size", "chat_template", "markers",
             "thinking_markers", "tool_call_markers"}


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InvalidOptionError(name, value, "one of " + ", ".join(allowed))


def _int(name: str, value: object, *, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidOptionError(name, value, "an integer")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise InvalidOptionError(name, value, f"an integer {bound}")


def _float_tuple(value: object) -> tuple[float, ...]:
    if isinstance(value, str):
        parts = [p for p in value.replace("/", ",").split(",") if p.strip()]
    elif isinstance(value, list | tuple):
        parts = list(value)
    else:
        raise InvalidOptionError("tensor_split", value, "a list of proportions, e.g. [3, 1]")
    try:
        return tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        raise InvalidOptionError(
            "tensor_split", value, "a list of proportions, e.g. [3, 1]"
        ) from None
