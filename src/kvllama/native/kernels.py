"""Which CPU matmul kernels this process's ggml takes for K-quant and IQ weights.

ggml-cpu reads two environment variables once, at its first matmul:
``GGML_CPU_TILED_MM=0`` turns its tiled kernels off, and
``GGML_CPU_TILED_MM_FORCE=1`` takes them for every batch size; by default
they run from 8 rows of activations on. The three modes compute rows
differently, so the mode is part of the KV cache's key root, and it decides
whether decode passes need a row cap (``kvllama.backend.decode_rows``).
"""

from __future__ import annotations

import os
import re

STOCK = "stock"  # tiled kernels from 8 rows on (llama.cpp's default)
OFF = "off"  # vector-dot kernels for every batch size
FORCED = "forced"  # tiled kernels for every batch size


def cpu_kernel_mode() -> str:
    if _atoi(os.environ.get("GGML_CPU_TILED_MM_FORCE")) == 1:
        return FORCED
    value = os.environ.get("GGML_CPU_TILED_MM")
    return STOCK if value is None or _atoi(value) != 0 else OFF


def _atoi(text: str | None) -> int:
    """C's atoi, as ggml reads the variables: leading blanks, a sign, digits; else 0."""
    match = re.match(r"\s*([+-]?\d+)", text or "")
    return int(match.group(1)) if match else 0
