"""The real backend: llama.cpp through kvllama.native's handle wrappers."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

from kvllama.backend.decode_rows import (
    default_max_decode_rows,
    has_float_weights,
    has_tiled_weights,
    on_cpu,
    uses_pass_kernels,
)
from kvllama.backend.lora_sets import AdapterRegistry, AdapterSet
from kvllama.backend.protocol import ContextShape, ModelDescription
from kvllama.errors import ContextOverflowError, InvalidOptionError, ModelFileNotFoundError
from kvllama.media.projector import MediaPrompter
from kvllama.native.batch import BatchRow, EmbeddingBatch, NativeBatch
from kvllama.native.context import NativeContext
from kvllama.native.gguf import GgufInfo, read_gguf
from kvllama.native.kernels import DECODE_CLASS, STOCK, THREAD_DEFAULT, THREAD_OFF, cpu_kernel_mode
from kvllama.native.model import NativeModel
from kvllama.native.projector import NativeProjector
from kvllama.native.sampler import CandidateBuffer, NativeSampler
from kvllama.options import DEFAULT_N_CTX_PER_SEQ, ModelOptions
from kvllama.sampling import SamplingParams

_POOLING_MEAN = 1
# Longest text embed() takes (one forward pass; see LlamaBackend.embed).
EMBED_MAX_TOKENS = 512
_KV_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32,
             "q4_1": 20 / 32, "q5_0": 22 / 32, "q5_1": 24 / 32}


class LlamaBackend:
    """One model, one generation context, and (lazily) one embedding context."""

    def __init__(self, path: str, options: ModelOptions) -> None:
        self.gguf: GgufInfo = read_gguf(path)  # typed errors before llama.cpp sees the file
        self.options = options
        self._stack = ExitStack()
        self._embed: tuple[NativeContext, NativeBatch] | None = None
        try:
            self.model = self._stack.enter_context(NativeModel(path, options))
            # Freed before the model (the stack unwinds in reverse): llama.cpp would free
            # them with the model, and a second free would be a double free.
            self.adapters = AdapterRegistry(self.model)
            self._stack.callback(self.adapters.close)
            facts = self.model.describe()
            if options.canonical_decode:
                self._check_canonical(facts["n_layer"])
            per_seq = (options.n_ctx // options.n_seq_max) if options.n_ctx else min(
                DEFAULT_N_CTX_PER_SEQ, facts["n_ctx_train"] or DEFAULT_N_CTX_PER_SEQ
            )
            # Exactly n_seq_max streams, no spare one: with n_ubatch not a multiple of the stream
            # count, llama.cpp's compute buffer puts the logits 32 bytes off a cache line (slots.py).
            # Registered after the model so ExitStack frees the context first.
            n_seq = options.n_seq_max
            self.ctx = NativeContext(self.model, options, per_seq * n_seq, n_seq=n_seq)
            # A callback, not the object: rebuild() swaps the context.
            self._stack.callback(lambda: self.ctx.close())
            self._stack.callback(self._close_embedding_context)
            self.batch = NativeBatch(self.ctx.n_batch)
            self._stack.callback(self.batch.close)
            self._flush_batch = NativeBatch(1)
            self._stack.callback(self._flush_batch.close)
            self.media = self._projector(facts["n_embd"]) if options.mmproj else None
        except BaseException:
            self._stack.close()
            raise
        self._pieces: dict[int, bytes] = {}
        # Grammar sampling's candidate array, shared (sampling runs on the decode thread only).
        self._candidates = CandidateBuffer(facts["n_vocab"])
        self.description = ModelDescription(
            path=path,
            architecture=self.gguf.architecture,
            quant=quant_tag(self.gguf),
            n_params=facts["n_params"],
            size_bytes=facts["size_bytes"],
            n_layer=facts["n_layer"],
            n_ctx_train=facts["n_ctx_train"],
            n_embd=facts["n_embd"],
            n_vocab=facts["n_vocab"],
            description=facts["description"],
            chat_template=self.model.chat_template(),
            special_tokens=self.model.special_tokens(),
            n_swa=facts["n_swa"],
        )
        self.shape = self._shape(facts)

    def _projector(self, n_embd: int) -> MediaPrompter:
        """The model's projector; freed before the model (the stack unwinds in reverse)."""
        path = str(self.options.mmproj)
        if not os.path.isfile(path):
            raise ModelFileNotFoundError(path)
        native = NativeProjector(path, self.model.handle, self.options.n_threads)
        min_rows = 2 if self.options.canonical_decode else 8  # ContextShape.min_chunk_rows
        media = MediaPrompter(native, n_embd, min_rows, self.options.n_ubatch)
        self._stack.callback(media.close)
        return media

    def _shape(self, facts: dict[str, Any]) -> ContextShape:
        options = self.options
        per_pass = uses_pass_kernels(self.gguf, options.n_gpu_layers, facts["n_layer"])
        # The decode class; on F16/BF16-weight models without the attention switch (decode_rows.py).
        self._decode_kernels = THREAD_DEFAULT if not per_pass else (
            THREAD_OFF if has_float_weights(self.gguf) else DECODE_CLASS)
        return ContextShape(
            n_ctx=self.ctx.n_ctx_seq * options.n_seq_max,
            n_ctx_seq=self.ctx.n_ctx_seq,
            n_batch=self.ctx.n_batch,
            n_ubatch=options.n_ubatch,
            n_seq_max=options.n_seq_max,
            kv_bytes_estimate=self._kv_bytes(facts),
            max_decode_rows=(
                options.max_decode_rows if options.max_decode_rows is not None
                else default_max_decode_rows(self.gguf, options.n_gpu_layers, facts["n_layer"])
            ),
            per_pass_kernels=per_pass,
            swa_window=facts["n_swa"],
            min_chunk_rows=2 if options.canonical_decode else 8,
            canonical_decode=options.canonical_decode,
            exact_verify=options.canonical_decode or self._decode_kernels == DECODE_CLASS,
        )

    def _check_canonical(self, n_layer: int) -> None:
        """Canonical decoding needs chunks of 2 rows computed like chunks of 8+ (measured on the
        CPU with the tiled kernels off or forced, or for weights they never take)."""
        o = self.options
        if not on_cpu(o.n_gpu_layers, n_layer):
            raise InvalidOptionError("canonical_decode", True, "the CPU backend (n_gpu_layers=0): "
                                     "GPU kernels were not measured for it")
        if has_tiled_weights(self.gguf) and cpu_kernel_mode() == STOCK:
            raise InvalidOptionError(
                "canonical_decode", True,
                "GGML_CPU_TILED_MM=0 in the environment from the process start for this model's "
                "K-quant weights (kvllama serve --canonical-decode sets it)")

    def _kv_bytes(self, facts: dict[str, Any]) -> int:
        """K and V for every layer and cell; an upper bound for sliding-window models."""
        g = self.gguf
        head_dim_k = g.arch_value("attention.key_length") or facts["n_embd"] // max(1, facts["n_head"])
        head_dim_v = g.arch_value("attention.value_length") or head_dim_k
        per_cell = facts["n_layer"] * facts["n_head_kv"] * (
            head_dim_k * _KV_BYTES[self.options.type_k] + head_dim_v * _KV_BYTES[self.options.type_v]
        )
        return math.ceil(per_cell * self.ctx.n_ctx)

    # --- vocabulary ---------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        return self.model.tokenize(text, add_special, parse_special)

    def piece(self, token: int, special: bool = False) -> bytes:
        """Token bytes (cached); ``special`` renders control tokens as their text (tool-call replay)."""
        key = -token - 1 if special else token
        cached = self._pieces.get(key)
        if cached is None:
            if special:
                cached = self.model.piece(token, special=True)
            else:
                cached = b"" if self.model.is_eog(token) else self.model.piece(token)
            self._pieces[key] = cached
        return cached

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.model.detokenize(list(tokens), remove_special=True, unparse_special=False)

    def is_eog(self, token: int) -> bool:
        return self.model.is_eog(token)

    # --- any thread ---------------------------------------------------------

    def new_sampler(self, params: SamplingParams) -> NativeSampler:
        """Parsing a grammar happens here, in the caller's thread, never on the decode thread."""
        return NativeSampler(self.model, params, self._candidates)

    def abort(self) -> None:
        """Stop the forward pass running now; the loop ends or replans its requests."""
        self.ctx.abort()

    # --- decode thread ------------------------------------------------------

    def decode(self, rows: Sequence[BatchRow], adapters: AdapterSet = (), decode_only: bool = False) -> None:
        self.adapters.use(adapters, self.ctx.handle)
        self.batch.fill(rows)
        self.ctx.decode(self.batch, self._decode_kernels if decode_only else THREAD_DEFAULT)

    def decode_media(self, seq_id: int, start: int, rows: Any, non_causal: bool, want_logits: bool,
                     adapters: AdapterSet = ()) -> int:
        """A medium's embedding rows at positions ``start``...: one pass if attention inside it
        goes both ways (it must be one ubatch), else passes of at most ``n_batch`` rows. Returns
        the last row's index in its pass (where its logits are)."""
        self.adapters.use(adapters, self.ctx.handle)
        step = len(rows) if non_causal else self.ctx.n_batch
        a = 0
        if non_causal:
            self.ctx.set_causal(False)
        try:
            for a in range(0, len(rows), step):
                last = a + step >= len(rows)
                batch = EmbeddingBatch(rows[a : a + step], start + a, seq_id, want_logits and last)
                try:
                    self.ctx.decode(batch)
                finally:
                    batch.close()
        finally:
            if non_causal:
                self.ctx.set_causal(True)
        return len(rows) - 1 - a

    def load_adapter(self, adapter_id: str, path: str) -> str:
        return self.adapters.load(adapter_id, path)

    def unload_adapter(self, adapter_id: str) -> None:
        self.adapters.unload(adapter_id, self.ctx.handle)

    def adapter_sha256(self, adapter_id: str) -> str:
        return self.adapters.sha256(adapter_id)

    @property
    def eog_ids(self) -> tuple[int, ...]:
        return self.model.eog_ids

    def sample(self, sampler: NativeSampler, row_index: int, ban: tuple[int, ...] = ()) -> int:
        return sampler.sample(self.ctx.handle, row_index, ban)

    def logprobs(self, sampler: NativeSampler, row_index: int, token: int,
                 top_n: int) -> tuple[float, tuple[tuple[int, float], ...]]:
        return sampler.logprobs(self.ctx.handle, row_index, token, top_n, self.model.n_vocab)

    def clear_sequence(self, seq_id: int, from_pos: int = 0) -> None:
        self.ctx.clear_sequence(seq_id, from_pos, -1)

    def truncate_sequence(self, seq_id: int, n_keep: int) -> bool:
        """Cut to ``n_keep`` tokens, unless a sliding window below the cut is already gone.

        llama.cpp's ``seq_rm`` reports success on a sliding-window cache even when
        the cells the next token must attend to were pruned long ago, so check
        first (llama-server's rule: the sequence must still hold every position
        from ``n_keep - n_swa`` on). With ``swa_full`` a live sequence keeps
        every position, but a restored one holds only its row's last window
        (a state blob keeps no more), so the check applies either way.
        """
        n_swa = self.description.n_swa
        if n_swa > 0 and self.ctx.seq_pos_min(seq_id) > max(0, n_keep - n_swa):
            return False
        return self.ctx.clear_sequence(seq_id, n_keep, -1)

    def move_sequence(self, src: int, dst: int) -> None:
        self.ctx.move_sequence(src, dst)

    def copy_sequence(self, src: int, dst: int) -> None:
        self.ctx.copy_sequence(src, dst)

    def sequence_state(self, seq_id: int) -> bytes:
        self._apply_pending_copies()
        return self.ctx.state_seq_get(seq_id)

    def restore_sequence(self, seq_id: int, blob: bytes) -> bool:
        self._apply_pending_copies()
        self.ctx.clear_sequence(seq_id)
        return self.ctx.state_seq_set(seq_id, blob)

    def _apply_pending_copies(self) -> None:
        self.ctx.apply_pending_copies(self._flush_batch, token=0)

    def rebuild(self) -> None:
        """A fresh context of the same shape after llama.cpp reported a fatal error.

        Every sequence is gone afterwards; the model's weights are kept.
        """
        old = self.ctx
        old.close()  # first: the memory goes back before the new context takes its own
        self.ctx = NativeContext(self.model, self.options, old.n_ctx, n_seq=old.n_seq_max)
        self.adapters.forget_context()

    def embed(self, tokens: Sequence[int]) -> list[float]:
        """Mean-pooled over the sequence; the last token's vector if pooling is unavailable.

        The whole text goes through one decode call: llama.cpp pools only over
        the rows of the last batch, so chunking would pool a fragment.
        """
        ctx, batch = self._embedding_context()
        if len(tokens) > ctx.n_ctx_seq:
            raise ContextOverflowError(len(tokens), ctx.n_ctx_seq)
        ctx.clear_all()
        batch.fill([(t, i, 0, True) for i, t in enumerate(tokens)])
        ctx.decode(batch)
        n_embd = self.description.n_embd
        vector = ctx.embeddings_seq(0, n_embd) or ctx.embeddings_ith(-1, n_embd)
        if vector is None:
            raise RuntimeError("llama.cpp returned no embeddings for this model")
        return vector

    def _embedding_context(self) -> tuple[NativeContext, NativeBatch]:
        if self._embed is None:
            n = min(self.description.n_ctx_train or EMBED_MAX_TOKENS, EMBED_MAX_TOKENS)
            opts = replace(self.options, n_batch=n, n_ubatch=n)
            ctx = NativeContext(self.model, opts, n, n_seq=1, embeddings=True, pooling=_POOLING_MEAN)
            self._embed = (ctx, NativeBatch(n))
        return self._embed

    def _close_embedding_context(self) -> None:
        if self._embed is not None:
            ctx, batch = self._embed
            batch.close()
            ctx.close()
            self._embed = None

    def close(self) -> None:
        self._stack.close()


_FTYPE_TAGS = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
    38: "MXFP4_MOE",
}


def quant_tag(gguf: GgufInfo) -> str:
    """The quantisation tag users know ("Q4_K_M"), from general.file_type."""
    file_type = gguf.get("general.file_type")
    if isinstance(file_type, int) and file_type in _FTYPE_TAGS:
        return _FTYPE_TAGS[file_type]
    return "unknown"
