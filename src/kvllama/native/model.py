"""The llama.cpp model handle (weights + vocabulary)."""

from __future__ import annotations

import ctypes
import functools
from typing import Any

from kvllama.errors import MalformedModelError
from kvllama.native.library import llama
from kvllama.options import ModelOptions

_SPLIT = {"none": 0, "layer": 1, "row": 2}


class NativeModel:
    """Owns one ``llama_model``; frees it exactly once."""

    def __init__(self, path: str, options: ModelOptions) -> None:
        lib = llama()
        self._lib = lib
        params = lib.llama_model_default_params()
        params.n_gpu_layers = options.n_gpu_layers
        params.split_mode = _SPLIT[options.split_mode]
        params.main_gpu = options.main_gpu
        params.load_mode = lib.LLAMA_LOAD_MODE_MMAP if options.use_mmap else lib.LLAMA_LOAD_MODE_NONE
        params.use_extra_bufts = options.use_extra_bufts
        if options.tensor_split:
            n = lib.llama_max_devices()
            values = list(options.tensor_split)[:n] + [0.0] * max(0, n - len(options.tensor_split))
            # Kept on self: llama.cpp reads it during the load call.
            self._tensor_split = (ctypes.c_float * n)(*values)
            params.tensor_split = self._tensor_split
        handle = lib.llama_model_load_from_file(path.encode(), params)
        if not handle:
            raise MalformedModelError(
                f"llama.cpp could not load {path} (corrupt, truncated or unsupported GGUF; "
                "enable DEBUG logging on 'kvllama.llama_cpp' for its reason)"
            )
        self.handle = handle
        self.vocab = lib.llama_model_get_vocab(handle)
        self.n_vocab: int = lib.llama_vocab_n_tokens(self.vocab)

    def close(self) -> None:
        handle, self.handle = getattr(self, "handle", None), None
        if handle:
            self._lib.llama_model_free(handle)

    def __enter__(self) -> NativeModel:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    # --- metadata -----------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        lib, h = self._lib, self.handle
        buf = ctypes.create_string_buffer(256)
        lib.llama_model_desc(h, buf, len(buf))
        return {
            "description": buf.value.decode("utf-8", "replace"),
            "n_params": int(lib.llama_model_n_params(h)),
            "size_bytes": int(lib.llama_model_size(h)),
            "n_layer": int(lib.llama_model_n_layer(h)),
            "n_ctx_train": int(lib.llama_model_n_ctx_train(h)),
            "n_embd": int(lib.llama_model_n_embd(h)),
            "n_head": int(lib.llama_model_n_head(h)),
            "n_head_kv": int(lib.llama_model_n_head_kv(h)),
            "n_swa": int(lib.llama_model_n_swa(h)),
            "n_vocab": self.n_vocab,
        }

    def chat_template(self) -> str | None:
        raw = self._lib.llama_model_chat_template(self.handle, None)
        return raw.decode("utf-8") if raw else None

    # --- vocabulary ---------------------------------------------------------

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        lib = self._lib
        raw = text.encode("utf-8")
        capacity = len(raw) + 8
        buf = (lib.llama_token * capacity)()
        n = lib.llama_tokenize(self.vocab, raw, len(raw), buf, capacity, add_special, parse_special)
        if n < 0:
            capacity = -n
            buf = (lib.llama_token * capacity)()
            n = lib.llama_tokenize(
                self.vocab, raw, len(raw), buf, capacity, add_special, parse_special
            )
        return list(buf[:n])

    def piece(self, token: int, special: bool = False) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self._lib.llama_token_to_piece(self.vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def detokenize(self, tokens: list[int], remove_special: bool, unparse_special: bool) -> str:
        lib = self._lib
        arr = (lib.llama_token * max(1, len(tokens)))(*tokens)
        capacity = max(64, len(tokens) * 8)
        buf = ctypes.create_string_buffer(capacity)
        n = lib.llama_detokenize(
            self.vocab, arr, len(tokens), buf, capacity, remove_special, unparse_special
        )
        if n < 0:
            capacity = -n
            buf = ctypes.create_string_buffer(capacity)
            n = lib.llama_detokenize(
                self.vocab, arr, len(tokens), buf, capacity, remove_special, unparse_special
            )
        return buf.raw[:n].decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self.vocab, token))

    @functools.cached_property
    def eog_ids(self) -> tuple[int, ...]:
        """Every end-of-generation token (EOS, EOT, ``<end_of_turn>``...): what
        ``min_tokens`` and ``ignore_eos`` keep from being sampled. One pass over the
        vocabulary (about 0.1 s for 262,144 tokens), the first time it is needed."""
        is_eog, vocab = self._lib.llama_vocab_is_eog, self.vocab
        return tuple(t for t in range(self.n_vocab) if is_eog(vocab, t))

    def special_tokens(self) -> dict[str, str]:
        """BOS/EOS texts for chat templates (``bos_token``/``eos_token``)."""
        lib = self._lib
        out = {}
        for name, fn in (("bos_token", lib.llama_vocab_bos), ("eos_token", lib.llama_vocab_eos)):
            token = fn(self.vocab)
            out[name] = self.piece(token, special=True).decode("utf-8", "replace") if token >= 0 else ""
        return out
