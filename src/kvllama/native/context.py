"""The llama.cpp context handle (KV memory + compute state) for one model."""

from __future__ import annotations

import ctypes

from kvllama.errors import (
    DecodeAbortedError,
    DecodeError,
    DecodeTimeoutError,
    ModelOutOfMemoryError,
    NoKvSlotError,
)
from kvllama.native.abort import AbortFlag, DecodeWatchdog
from kvllama.native.batch import EmbeddingBatch, NativeBatch
from kvllama.native.kernels import THREAD_DEFAULT, pass_kernels
from kvllama.native.library import llama
from kvllama.native.model import NativeModel
from kvllama.options import ModelOptions

# ggml_type numbers; BF16 (30) is missing from llama-cpp-python's constants.
KV_TYPE_IDS = {
    "f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "bf16": 30,
}
_FLASH = {"auto": -1, "off": 0, "on": 1}


class NativeContext:
    """Owns one ``llama_context``; must be closed before its model."""

    def __init__(
        self,
        model: NativeModel,
        options: ModelOptions,
        n_ctx: int,
        *,
        n_seq: int | None = None,
        embeddings: bool = False,
        pooling: int | None = None,
    ) -> None:
        lib = llama()
        self._lib = lib
        params = lib.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = options.n_batch
        params.n_ubatch = options.n_ubatch
        params.n_seq_max = n_seq or options.n_seq_max
        params.n_threads = options.n_threads
        params.n_threads_batch = options.n_threads_batch or options.n_threads
        params.flash_attn_type = _FLASH[options.flash_attn]
        params.type_k = KV_TYPE_IDS[options.type_k]
        params.type_v = KV_TYPE_IDS[options.type_v]
        params.swa_full = options.swa_full
        params.kv_unified = options.kv_unified
        params.embeddings = embeddings
        params.no_perf = True
        if pooling is not None:
            params.pooling_type = pooling
        handle = lib.llama_init_from_model(model.handle, params)
        if not handle:
            raise ModelOutOfMemoryError(
                f"llama.cpp could not create a context of {n_ctx} cells "
                f"({options.n_seq_max} sequences, type_k={options.type_k}, "
                f"type_v={options.type_v}); try a smaller n_ctx or n_seq_max"
            )
        self.handle = handle
        self.memory = lib.llama_get_memory(handle)
        self.n_ctx: int = lib.llama_n_ctx(handle)
        self.n_ctx_seq: int = lib.llama_n_ctx_seq(handle)
        self.n_batch: int = lib.llama_n_batch(handle)
        self.n_seq_max: int = lib.llama_n_seq_max(handle)
        # Cross-stream sequence copies llama.cpp has queued but not yet applied (see move_sequence).
        self.copies_pending = False
        self._copy_destinations: list[int] = []
        self._abort = AbortFlag()
        lib.llama_set_abort_callback(
            handle, ctypes.cast(self._abort.callback, lib.ggml_abort_callback), self._abort.data
        )
        self.watchdog = DecodeWatchdog(self._abort, options.decode_timeout)

    def close(self) -> None:
        handle, self.handle = getattr(self, "handle", None), None
        if handle:
            self.watchdog.close()
            self._lib.llama_free(handle)

    def __enter__(self) -> NativeContext:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def decode(self, batch: NativeBatch | EmbeddingBatch, kernels: int = THREAD_DEFAULT) -> None:
        """One forward pass; llama.cpp's status codes become typed exceptions.

        ``kernels``: the CPU matmul mode for this pass (native/kernels.py; a no-op on
        a stock build). The watchdog aborts a pass that outlives the model's
        ``decode_timeout``.
        """
        pass_kernels().set(kernels)
        self.watchdog.arm()
        try:
            status = self._lib.llama_decode(self.handle, batch.struct)
        finally:
            self.watchdog.disarm()
        if status == 0:
            self.copies_pending = False  # llama_decode applies queued copies before computing
            self._copy_destinations.clear()
            return
        if status == 1:
            raise NoKvSlotError(status, "no KV slot for the batch")
        if status == 2:
            if self.watchdog.timed_out:
                raise DecodeTimeoutError(
                    status, f"the forward pass ran past decode_timeout ({self.watchdog.budget:g} s)"
                )
            raise DecodeAbortedError(status, "aborted")
        raise DecodeError(status, "invalid batch" if status == -1 else "fatal error")

    def set_causal(self, causal: bool) -> None:
        """Attention masked to earlier positions (the default) or both ways (an image's rows)."""
        self._lib.llama_set_causal_attn(self.handle, causal)

    def clear_sequence(self, seq_id: int, p0: int = -1, p1: int = -1) -> bool:
        return bool(self._lib.llama_memory_seq_rm(self.memory, seq_id, p0, p1))

    def abort(self) -> None:
        """Stop the forward pass running now (from any thread); it raises DecodeAbortedError."""
        self.watchdog.abort()

    def seq_pos_min(self, seq_id: int) -> int:
        """Lowest position the sequence still holds (-1 if empty); the sliding-window cache's for iSWA."""
        return int(self._lib.llama_memory_seq_pos_min(self.memory, seq_id))

    def seq_pos_max(self, seq_id: int) -> int:
        """Highest position the sequence holds (-1 if empty)."""
        return int(self._lib.llama_memory_seq_pos_max(self.memory, seq_id))

    def move_sequence(self, src: int, dst: int) -> None:
        """Whole-sequence copy then remove: a bit copy, the only copy non-unified KV allows.

        With one KV stream per sequence (``kv_unified=False``) llama.cpp moves the
        cells' metadata now but only queues the buffer copy, which the next
        ``llama_decode`` applies. Until then the source stream's buffer still
        holds the data and the destination's is stale, so the state functions
        (which do not apply the queue) must not touch either: callers flush
        with :meth:`apply_pending_copies` first.
        """
        self._lib.llama_memory_seq_rm(self.memory, dst, -1, -1)
        self._lib.llama_memory_seq_cp(self.memory, src, dst, -1, -1)
        self._lib.llama_memory_seq_rm(self.memory, src, -1, -1)
        self.copies_pending = True
        self._copy_destinations.append(dst)

    def copy_sequence(self, src: int, dst: int) -> None:
        """Whole-sequence copy (a session fork); queued like :meth:`move_sequence`'s."""
        self._lib.llama_memory_seq_rm(self.memory, dst, -1, -1)
        self._lib.llama_memory_seq_cp(self.memory, src, dst, -1, -1)
        self.copies_pending = True
        self._copy_destinations.append(dst)

    def apply_pending_copies(self, batch: NativeBatch, token: int) -> None:
        """Make llama.cpp apply queued sequence copies now.

        There is no public call for it: llama.cpp applies them at the start of
        ``llama_decode``. So decode one token, without logits, into an empty
        sequence and forget it again (a move always leaves its source empty).
        If every sequence holds tokens (a fork filled the last id), the token
        goes after a copy's destination and is cut off again: the next real
        token then takes the same cell, as ``seq_rm`` moves llama.cpp's slot
        search back to it. The other sequences' cells and buffers are
        untouched, and the pass's logits are never read.

        The pass is aborted before it computes anything: the abort flag is up
        when ``llama_decode`` starts, so the graph stops at its first node
        (status 2), after the copies were applied. A whole forward pass (15-20
        ms on the default model, more on larger ones) before every restore that
        follows a move shrinks to well under a millisecond.
        """
        if not self.copies_pending:
            return
        empty = next((i for i in range(self.n_seq_max) if self.seq_pos_max(i) < 0), None)
        seq = empty if empty is not None else self._copy_destinations[-1]
        pos = 0 if empty is not None else self.seq_pos_max(seq) + 1
        batch.fill([(token, pos, seq, False)])
        flag = self.watchdog.flag
        flag.raise_()
        try:
            status = self._lib.llama_decode(self.handle, batch.struct)
        finally:
            flag.lower()
            self.clear_sequence(seq, pos, -1)
        if status not in (0, 2):
            raise DecodeError(status, "applying queued sequence copies failed")
        self.copies_pending = False  # memory_update ran before the graph was stopped
        self._copy_destinations.clear()

    def clear_all(self) -> None:
        self._lib.llama_memory_clear(self.memory, True)

    def embeddings_seq(self, seq_id: int, n_embd: int) -> list[float] | None:
        ptr = self._lib.llama_get_embeddings_seq(self.handle, seq_id)
        return list(ptr[:n_embd]) if ptr else None

    def embeddings_ith(self, index: int, n_embd: int) -> list[float] | None:
        ptr = self._lib.llama_get_embeddings_ith(self.handle, index)
        return list(ptr[:n_embd]) if ptr else None

    def state_seq_get(self, seq_id: int) -> bytes:
        assert not self.copies_pending, "apply_pending_copies() before reading a sequence's state"
        size = self._lib.llama_state_seq_get_size(self.handle, seq_id)
        buf = (ctypes.c_uint8 * size)()
        written = self._lib.llama_state_seq_get_data(self.handle, buf, size, seq_id)
        return bytes(memoryview(buf)[:written])

    def state_seq_set(self, seq_id: int, blob: bytes) -> bool:
        assert not self.copies_pending, "apply_pending_copies() before writing a sequence's state"
        # Zero-copy: llama.cpp only reads the buffer, and ``blob`` outlives the call.
        ptr = ctypes.cast(ctypes.c_char_p(blob), ctypes.POINTER(ctypes.c_uint8))
        return self._lib.llama_state_seq_set_data(self.handle, ptr, len(blob), seq_id) > 0
