"""A bigger random-weight Gemma 3 in Q4_K_M, for benchmarks only (never the test suite).

The default model (270M, mostly Q5_0/Q8_0 weights) and the tiny F16 model do
not show how a bigger K-quant model behaves: where the CPU's kernel classes
switch and what a decode pass of N rows costs depend on the weights' size and
type (issue figures: at width 2048, one 8-row tiled pass cost more than two
4-row vector passes, the reverse of the 270M). This writes the tiny model's
recipe (bench/tiny_model.py) at width 2048 with 16 blocks as F16, then
quantizes it to Q4_K_M, the quantization people download most, with
llama.cpp's own ``llama_model_quantize``: about 650 MiB, a few minutes on 2
cores, once (cached under ~/.cache/kvllama). Text is gibberish; every matmul
is real.
"""

from __future__ import annotations

import os
from pathlib import Path

from kvllama.bench.tiny_model import cached_model, write_tiny_model

RECIPE_VERSION = "v1"
HPARAMS: dict[str, int] = {
    "embedding_length": 2048,
    "block_count": 16,
    "feed_forward_length": 4096,
    "attention.head_count": 8,
    "attention.head_count_kv": 4,
    "attention.key_length": 256,
    "attention.value_length": 256,
}
_FTYPE_Q4_K_M = 15


def kquant_model_path() -> Path:
    """The cached Q4_K_M model, written and quantized once if missing."""
    return cached_model(f"kquant-gemma3-2048x16-q4_k_m-{RECIPE_VERSION}.gguf", _write)


def _write(out: Path) -> None:
    f16 = out.with_suffix(".f16.gguf")
    try:
        write_tiny_model(f16, hparams=HPARAMS, name="random Gemma 3 2048x16")
        quantize(f16, out, _FTYPE_Q4_K_M)
    finally:
        f16.unlink(missing_ok=True)


def quantize(source: Path, target: Path, ftype: int) -> None:
    """llama.cpp's quantizer over the wheel's C API (what llama-quantize runs)."""
    from kvllama.native.library import llama

    lib = llama()
    params = lib.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = os.cpu_count() or 1
    status = lib.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    if status != 0:
        raise RuntimeError(f"llama_model_quantize failed ({status}) for {source}")
