"""What identifies a model's KV state: the cache key root for a loaded model.

The root covers everything that changes a sequence's state bytes: the model
file (full sha256 by default; ``fingerprint="fast"`` hashes size, mtime and the
GGUF header instead, for huge files on slow disks), the KV cache types, flash
attention, the KV layout, and the llama.cpp state format version. LoRA
adapters fold in later through ``KeyRoot.adapters``.
"""

from __future__ import annotations

import hashlib
import os

from kvllama.backend.protocol import Backend
from kvllama.kvcache import KeyRoot
from kvllama.options import ModelOptions

_CHUNK = 4 << 20


def file_fingerprint(path: str, mode: str) -> str:
    if path.startswith("<"):  # the stub backend
        return path
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if mode == "fast":
            st = os.fstat(f.fileno())
            digest.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
            digest.update(f.read(1 << 20))
            return "fast:" + digest.hexdigest()
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def state_version() -> str:
    try:
        import llama_cpp

        from kvllama.native.library import package_version

        return f"llama-cpp-python {package_version()} seq-state {llama_cpp.LLAMA_STATE_SEQ_VERSION}"
    except ImportError:  # pragma: no cover - the stub runs without it
        return "stub"


def key_root(backend: Backend, options: ModelOptions) -> KeyRoot:
    path = backend.description.path
    return KeyRoot(
        model_fingerprint=file_fingerprint(path, options.fingerprint),
        type_k=options.type_k,
        type_v=options.type_v,
        flash_attn=options.flash_attn != "off",
        kv_unified=options.kv_unified,
        n_seq_max=options.n_seq_max,
        state_version=state_version() if not path.startswith("<") else "stub",
    )
