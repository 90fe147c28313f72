"""Which CPU matmul kernels this process's ggml takes for K-quant and IQ weights.

ggml-cpu reads two environment variables once, at its first matmul:
``GGML_CPU_TILED_MM=0`` turns its tiled kernels off, and
``GGML_CPU_TILED_MM_FORCE=1`` takes them for every batch size; by default
they run from 8 rows of activations on. The three modes compute rows
differently, so the mode is part of the KV cache's key root, and it decides
whether decode passes need a row cap (``kvllama.backend.decode_rows``).

A build with kvllama's ggml patch (``scripts/patches/``, docs/kernel-patch.md)
also takes the choice per forward pass: the mode of the thread that calls
``llama_decode`` is fixed into that graph's plan. kvllama runs prompt passes
with the stock choice (tiled from 8 rows: full prefill speed) and decode
passes in the decode class: the vector kernels for weights whatever the row
count, and ggml's vec_dot for attention whatever the number of query rows of
a sequence (stock llama.cpp hands 2+ rows to llamafile's sgemm). A decode row
is then computed the same way alone, beside any number of others, or as one
of several rows of its sequence (a speculative verify pass).
"""

from __future__ import annotations

import ctypes
import functools
import os
import pathlib
import re

STOCK = "stock"  # tiled kernels from 8 rows on (llama.cpp's default)
OFF = "off"  # vector-dot kernels for every batch size
FORCED = "forced"  # tiled kernels for every batch size

# The patch's per-thread modes (ggml-cpu.h: enum ggml_cpu_tiled_mm_mode).
THREAD_DEFAULT = 0  # follow the environment, as stock ggml does
THREAD_OFF = 1  # vector-dot kernels for every batch size
SGEMM_NO_FLOAT = 4  # flag: float matrices (attention) go to vec_dot at any row count
# Decode passes: one kernel class for a decode row however many rows share the pass.
DECODE_CLASS = THREAD_OFF | SGEMM_NO_FLOAT

_SETTER = "ggml_cpu_set_thread_kernel_mode"


def cpu_kernel_mode() -> str:
    if _atoi(os.environ.get("GGML_CPU_TILED_MM_FORCE")) == 1:
        return FORCED
    value = os.environ.get("GGML_CPU_TILED_MM")
    return STOCK if value is None or _atoi(value) != 0 else OFF


def _atoi(text: str | None) -> int:
    """C's atoi, as ggml reads the variables: leading blanks, a sign, digits; else 0."""
    match = re.match(r"\s*([+-]?\d+)", text or "")
    return int(match.group(1)) if match else 0


class PassKernels:
    """The patched build's per-thread kernel mode; ``available`` is False on a stock build."""

    def __init__(self, setter: object | None) -> None:
        self._setter = setter
        self.available = setter is not None

    def set(self, mode: int) -> None:
        """Kernel mode for graphs this thread plans from now on (a no-op on a stock build)."""
        if self._setter is not None:
            self._setter(mode)  # type: ignore[operator]


@functools.cache
def pass_kernels() -> PassKernels:
    """Look the patch's setter up in the ggml-cpu library llama.cpp loaded (once)."""
    return PassKernels(_find_setter())


def _find_setter() -> object | None:
    """The setter of the ggml-cpu image llama.cpp runs, never a second copy of the library.

    Opening the file by another name than the one libllama linked (``libggml-cpu.so``
    vs its soname ``libggml-cpu.so.0``) maps a second image with its own thread-local
    mode, which ggml's planner never reads; ``RTLD_NOLOAD`` only finds loaded images.
    """
    try:
        from llama_cpp import llama_cpp as bindings
    except ImportError:  # pragma: no cover - the stub runs without it
        return None
    folder = pathlib.Path(getattr(bindings._lib, "_name", "") or ".").parent
    for name in ("libggml-cpu.so.0", "libggml-cpu.so", "libggml-cpu.dylib", "ggml-cpu.dll"):
        candidates = [name, str(folder / name)]
        for candidate in candidates:
            try:
                image = ctypes.CDLL(candidate, mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_GLOBAL)
                setter = getattr(image, _SETTER)
            except (OSError, AttributeError):
                continue
            setter.argtypes = [ctypes.c_int]
            setter.restype = None
            return setter
    return None


@functools.cache
def build_tag() -> str:
    """How the installed llama.cpp was built (scripts/bootstrap.sh's marker; "" if unknown)."""
    try:
        from importlib.metadata import distribution

        package = pathlib.Path(str(distribution("llama_cpp_python").locate_file("llama_cpp")))
        marker = package / ".kvllama-build"
        return marker.read_text().strip() if marker.exists() else ""
    except Exception:  # pragma: no cover - no llama-cpp-python (stub runs)
        return ""
