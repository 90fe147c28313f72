"""llama.cpp's multimodal projector (libmtmd): media in, prompt chunks and embeddings out.

One ``mtmd_context`` per loaded model, on that model's weights. It splits a
prompt's text at the media markers into text chunks (token ids, with the
projector's own wrapping, e.g. Gemma 3's ``<start_of_image>``) and media
chunks, and encodes a media chunk into one embedding row per position.
mtmd's context is not thread-safe, so every call holds one lock: prompts
are tokenized in the callers' threads and chunks encoded on the decode
thread, never at once.
"""

from __future__ import annotations

import ctypes
import hashlib
import threading
from dataclasses import dataclass

import numpy as np

from kvllama.errors import InvalidMediaError, MalformedModelError
from kvllama.native.library import llama, log_callback

TEXT, IMAGE, AUDIO = 0, 1, 2


class NativeChunk:
    """A media chunk copied out of a tokenized prompt; frees itself exactly once."""

    def __init__(self, handle: object, free: object) -> None:
        self.handle = handle
        self._free = free

    def close(self) -> None:
        handle, self.handle = self.handle, None
        if handle:
            self._free(handle)  # type: ignore[operator]

    def __del__(self) -> None:
        self.close()

    def __reduce__(self) -> tuple[object, ...]:
        # A pointer into this process's heap: another process would free garbage. Send the request's
        # media instead (kvllama.ray sends a request with media unresolved; the replica resolves it).
        raise TypeError("a tokenized medium cannot leave its process; send the request's media instead")


@dataclass(frozen=True)
class Chunk:
    """One piece of a tokenized prompt: text tokens, or a medium's positions."""

    kind: int  # TEXT, IMAGE or AUDIO
    tokens: tuple[int, ...] = ()
    n_tokens: int = 0
    # Which medium (its index in the request), and its id: the hash of its decoded bytes.
    medium: int = -1
    medium_id: bytes = b""
    native: NativeChunk | None = None


class NativeProjector:
    """Owns one ``mtmd_context``; must be closed before the model it was loaded for."""

    def __init__(self, path: str, model_handle: object, n_threads: int) -> None:
        import llama_cpp.mtmd_cpp as mtmd

        llama()  # the backend is initialised and llama.cpp's logging routed first
        self._m = mtmd
        callback = log_callback()
        mtmd.mtmd_log_set(callback, None)
        mtmd.mtmd_helper_log_set(callback, None)
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = False
        params.n_threads = n_threads
        params.print_timings = False
        params.warmup = False
        handle = mtmd.mtmd_init_from_file(path.encode(), model_handle, params)
        if not handle:
            raise MalformedModelError(
                f"llama.cpp could not load the projector {path} for this model (not a projector GGUF, "
                "or made for a model of another embedding width; DEBUG logging on 'kvllama.llama_cpp' "
                "says which)")
        self.handle = handle
        self.vision = bool(mtmd.mtmd_support_vision(handle))
        self.audio = bool(mtmd.mtmd_support_audio(handle))
        self.marker = (mtmd.mtmd_default_marker() or b"<__media__>").decode()
        self.sample_rate = int(mtmd.mtmd_get_audio_sample_rate(handle)) if self.audio else 0
        self.lock = threading.Lock()

    def close(self) -> None:
        handle, self.handle = getattr(self, "handle", None), None
        if handle:
            self._m.mtmd_free(handle)

    def __del__(self) -> None:
        self.close()

    def non_causal(self, chunk: Chunk) -> bool:
        """Whether the text model must attend both ways inside this chunk (Gemma 3's images);
        mtmd answers by the vision projector for any chunk but audio, so ask for media only."""
        if chunk.kind != IMAGE or chunk.native is None:
            return False
        return bool(self._m.mtmd_decode_use_non_causal(self.handle, chunk.native.handle))

    def tokenize(self, text: str, media: list[bytes], add_special: bool) -> list[Chunk]:
        """The prompt as chunks; each medium decoded and identified by a hash of its decoded bytes."""
        m = self._m
        with self.lock:
            bitmaps = [self._bitmap(data, i) for i, data in enumerate(media)]
            chunks = m.mtmd_input_chunks_init()
            try:
                raw = text.encode()
                inp = m.mtmd_input_text(raw, len(raw), add_special, True)
                array = (m.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
                status = m.mtmd_tokenize(self.handle, chunks, ctypes.byref(inp), array, len(bitmaps))
                if status != 0:
                    raise InvalidMediaError(
                        f"the prompt has {text.count(self.marker)} media markers ({self.marker}) but the "
                        f"request has {len(media)} media" if status == 1 else
                        f"the projector could not preprocess the media (mtmd_tokenize returned {status})")
                return self._chunks(chunks, [m.mtmd_bitmap_get_id(b) for b in bitmaps])
            finally:
                m.mtmd_input_chunks_free(chunks)
                for b in bitmaps:
                    m.mtmd_bitmap_free(b)

    def _bitmap(self, data: bytes, index: int) -> object:
        m = self._m
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        bitmap = m.mtmd_helper_bitmap_init_from_buf(self.handle, buf, len(data), False)
        if not bitmap:
            raise InvalidMediaError(f"media[{index}] could not be decoded (corrupt, truncated or not "
                                    "what its header says)")
        is_audio = bool(m.mtmd_bitmap_is_audio(bitmap))
        if (is_audio and not self.audio) or (not is_audio and not self.vision):
            m.mtmd_bitmap_free(bitmap)
            kind = "audio" if is_audio else "images"
            raise InvalidMediaError(f"media[{index}]: this model's projector takes no {kind}")
        n = m.mtmd_bitmap_get_n_bytes(bitmap)
        data_ptr = m.mtmd_bitmap_get_data(bitmap)
        digest = hashlib.sha256()
        digest.update(f"{int(is_audio)}:{m.mtmd_bitmap_get_nx(bitmap)}x{m.mtmd_bitmap_get_ny(bitmap)}:".encode())
        digest.update(ctypes.string_at(data_ptr, n))
        m.mtmd_bitmap_set_id(bitmap, f"{index}:{digest.hexdigest()}".encode())
        return bitmap

    def _chunks(self, chunks: object, ids: list[bytes | None]) -> list[Chunk]:
        m = self._m
        out: list[Chunk] = []
        for i in range(m.mtmd_input_chunks_size(chunks)):
            c = m.mtmd_input_chunks_get(chunks, i)
            kind = m.mtmd_input_chunk_get_type(c)
            if kind == TEXT:
                n = ctypes.c_size_t()
                ptr = m.mtmd_input_chunk_get_tokens_text(c, ctypes.byref(n))
                out.append(Chunk(TEXT, tuple(ptr[: n.value])))
                continue
            chunk_id = m.mtmd_input_chunk_get_id(c) or b""
            medium = ids.index(chunk_id) if chunk_id in ids else -1
            native = NativeChunk(m.mtmd_input_chunk_copy(c), m.mtmd_input_chunk_free)
            out.append(Chunk(kind, n_tokens=m.mtmd_input_chunk_get_n_tokens(c), medium=medium,
                             medium_id=chunk_id, native=native))
        return out

    def encode(self, chunk: Chunk, n_embd: int) -> np.ndarray:
        """The chunk's embeddings, ``(n_tokens, n_embd)`` float32, copied out of mtmd's buffer."""
        m = self._m
        assert chunk.native is not None and chunk.native.handle
        with self.lock:
            if m.mtmd_encode_chunk(self.handle, chunk.native.handle) != 0:
                raise InvalidMediaError("the projector failed to encode a medium")
            ptr = m.mtmd_get_output_embd(self.handle)
            return np.ctypeslib.as_array(ptr, shape=(chunk.n_tokens * n_embd,)).reshape(
                chunk.n_tokens, n_embd).copy()
