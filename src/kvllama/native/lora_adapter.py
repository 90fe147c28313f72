"""One LoRA adapter file loaded for a model (``llama_adapter_lora``): the handle and its identity.

llama.cpp applies adapters per context, to every row of a forward pass
(``llama_set_adapters_lora``), so the backend sets a pass's adapter set just
before it decodes. The file's sha256 names the adapter in cache keys: a row
computed with an adapter is never restored without it, whatever id the
adapter was loaded under.
"""

from __future__ import annotations

import ctypes
import hashlib
from pathlib import Path

from kvllama.errors import MalformedModelError, ModelFileNotFoundError
from kvllama.native.library import llama
from kvllama.native.model import NativeModel

_CHUNK = 4 << 20


class NativeAdapter:
    def __init__(self, model: NativeModel, path: str) -> None:
        file = Path(path).expanduser()
        if not file.is_file():
            raise ModelFileNotFoundError(str(file))
        self.path = str(file)
        self.sha256 = _sha256(file)
        self._lib = llama()
        handle = self._lib.llama_adapter_lora_init(model.handle, self.path.encode())
        if not handle:
            raise MalformedModelError(
                f"{self.path} is not a LoRA adapter llama.cpp can load for this model "
                "(another architecture, or tensor shapes that do not match)"
            )
        self.handle = handle

    def close(self) -> None:
        handle, self.handle = getattr(self, "handle", None), None
        if handle:
            self._lib.llama_adapter_lora_free(handle)


def set_context_adapters(ctx_handle: object, adapters: list[tuple[NativeAdapter, float]]) -> None:
    """Make ``adapters`` (with their scales) the context's whole adapter set; [] clears it."""
    lib = llama()
    n = len(adapters)
    if not adapters:  # NULL arrays are allowed only with n = 0
        status = lib.llama_set_adapters_lora(ctx_handle, None, 0, None)
    else:
        handles = (lib.llama_adapter_lora_p_ctypes * n)(*[a.handle for a, _ in adapters])
        scales = (ctypes.c_float * n)(*[s for _, s in adapters])
        status = lib.llama_set_adapters_lora(ctx_handle, handles, n, scales)
    if status not in (0, None):
        raise MalformedModelError(f"llama.cpp refused the adapter set (status {status})")


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
