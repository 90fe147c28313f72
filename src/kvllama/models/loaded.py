"""A loaded model: its backend, its decode loop, and what ``model_info`` reports."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from kvllama.backend.protocol import Backend
from kvllama.decoding.loop import ModelLoop
from kvllama.options import ModelOptions


@dataclass(frozen=True)
class ModelInfo:
    """A snapshot of one model (docs/guide/python-api.md); cheap to build, safe from any thread."""

    id: str
    path: str
    architecture: str
    quant: str
    n_params: int
    size_bytes: int
    n_layer: int
    n_ctx_train: int
    # n_ctx, n_ctx_seq, n_batch, n_ubatch, n_seq_max, flash_attn, type_k, ...
    context: dict[str, Any]
    loaded_at: float
    # Weights plus KV memory (an upper bound for sliding-window models).
    memory_estimate_bytes: int
    phase: str
    pending: int
    in_flight: int
    last_cache_hit: dict[str, Any]
    chat_template_source: str
    description: str = ""
    # False while the decode loop rebuilds a failed llama.cpp context, or after the loop died.
    healthy: bool = True
    # Sequence slots held by parked sticky sessions, and by finished requests kept in their
    # slots (kept sequences give way to any new request): free = n_seq_max - in_flight - sessions.
    sessions: int = 0
    kept: int = 0
    # Prompt tokens reused, by source (LoopStatus.prompt_reuse): sessions, slots, memory, cache.
    prompt_reuse: dict[str, Any] = field(default_factory=dict)
    # Replies recomputed as prompt chunks in idle time (decoding/settling.py): tokens, fully
    # settled sequences, passes aborted for an arriving request, rows saved.
    settled: dict[str, int] = field(default_factory=dict)
    # What prompts may hold ("text", plus "image" / "audio" with a projector), the projector's
    # file, and media spans encoded since the load (a warm start encodes none: kvllama.media).
    modalities: tuple[str, ...] = ("text",)
    projector: str | None = None
    media_encoded: int = 0

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


@dataclass
class LoadedModel:
    id: str
    backend: Backend
    loop: ModelLoop
    options: ModelOptions
    chat_template_source: str
    loaded_at: float = field(default_factory=time.time)
    # embed() calls take turns on the model's one embedding context (off the decode thread).
    embed_lock: threading.Lock = field(default_factory=threading.Lock)
    # Loaded LoRA adapters: id -> (path, default scale); a request without ``adapters``
    # runs with every one of them at its default scale (llama-server's behaviour).
    adapters: dict[str, tuple[str, float]] = field(default_factory=dict)

    def info(self) -> ModelInfo:
        d, shape, status = self.backend.description, self.backend.shape, self.loop.status
        opts = self.options
        return ModelInfo(
            id=self.id,
            path=d.path,
            architecture=d.architecture,
            quant=d.quant,
            n_params=d.n_params,
            size_bytes=d.size_bytes,
            n_layer=d.n_layer,
            n_ctx_train=d.n_ctx_train,
            context={
                "n_ctx": shape.n_ctx,
                "n_ctx_seq": shape.n_ctx_seq,
                "n_batch": shape.n_batch,
                "n_ubatch": shape.n_ubatch,
                "n_seq_max": shape.n_seq_max,
                "prefill_chunk_size": self.loop.chunk_size,
                "flash_attn": opts.flash_attn,
                "type_k": opts.type_k,
                "type_v": opts.type_v,
                "swa_full": opts.swa_full,
                "kv_unified": opts.kv_unified,
                "n_threads": opts.n_threads,
                "n_gpu_layers": opts.n_gpu_layers,
                # Decode rows per pass (0: no cap) and whether decode-only passes take the vector
                # kernels at any size (the patched build, native/kernels.py).
                "max_decode_rows": shape.max_decode_rows,
                "per_pass_kernels": shape.per_pass_kernels,
            },
            loaded_at=self.loaded_at,
            memory_estimate_bytes=d.size_bytes + shape.kv_bytes_estimate,
            phase=status.phase.value,
            pending=self.loop.pending,
            in_flight=status.in_flight,
            last_cache_hit=dict(status.last_cache_hit),
            prompt_reuse=status.prompt_reuse(),
            chat_template_source=self.chat_template_source,
            description=d.description,
            healthy=self.loop.healthy,
            sessions=len(self.loop.sessions.parked),
            kept=len(self.loop.kept),
            settled=self.loop.settled(),
            modalities=media.modalities if (media := self.backend.media) is not None else ("text",),
            projector=opts.mmproj,
            media_encoded=media.encodes if media is not None else 0,
        )
