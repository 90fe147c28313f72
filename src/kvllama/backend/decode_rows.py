"""How many decode rows one forward pass may carry without changing a row's numbers.

ggml's CPU backend multiplies K-quant and IQ weights (Q2_K..Q6_K, IQ1..IQ4_XS)
with its tiled kernels only from 8 rows of activations on, and with its
vector-dot kernels below that (``ggml-cpu/tiled/tiled.cpp``: "profitable at
rows >= 8"). The two sum in different orders, so a sequence decoded in a pass
of 8+ rows gets slightly different logits than in a pass of 1-7 rows, and
greedy decoding turns that into different tokens. Capping decode passes at 7
rows keeps every stream in one kernel class whatever else runs.

The cap is needed only where that switch exists: a model without such
tensors (F16, Q8_0, Q4_0 ... weights), a process that takes one kernel for
every batch size (``GGML_CPU_TILED_MM_FORCE=1``, which costs one-row passes
about 40 % here, or ``GGML_CPU_TILED_MM=0``, which costs prefill about 20 %),
or a model fully on a GPU needs none, and then 8+ streams run as one pass.
Nor does the patched build (scripts/patches/, docs/kernel-patch.md), which
picks the kernels per forward pass: decode-only passes take the vector kernels
at any size, prompt passes the stock choice (``uses_pass_kernels``).
Measured: docs/measured/exactness.md and "Performance".
"""

from __future__ import annotations

from kvllama.native.gguf import GgufInfo
from kvllama.native.kernels import STOCK, cpu_kernel_mode, pass_kernels

# Below this many rows the CPU backend takes the vector-dot kernels for tiled types.
TILED_MIN_ROWS = 8

# ggml_type ids that ggml-cpu's tiled matmul takes (ggml.h numbering).
_TILED_TYPES = frozenset({
    10,  # Q2_K
    11,  # Q3_K
    12,  # Q4_K
    13,  # Q5_K
    14,  # Q6_K
    16,  # IQ2_XXS
    17,  # IQ2_XS
    18,  # IQ3_XXS
    19,  # IQ1_S
    21,  # IQ3_S
    22,  # IQ2_S
    23,  # IQ4_XS
    29,  # IQ1_M
})


def has_tiled_weights(gguf: GgufInfo) -> bool:
    """Weights of a type the CPU's tiled kernels take (from 8 rows on, with stock settings)."""
    return bool(gguf.tensor_types & _TILED_TYPES)


def on_cpu(n_gpu_layers: int, n_layer: int) -> bool:
    """Whether the CPU kernels run (some of) the model's layers."""
    return not (n_gpu_layers < 0 or (n_layer and n_gpu_layers > n_layer))


# ggml_type ids of float weight matrices (F16, BF16): llamafile's sgemm takes them from 2 rows.
_FLOAT_WEIGHT_TYPES = frozenset({1, 30})


def has_float_weights(gguf: GgufInfo) -> bool:
    """F16/BF16 weight matrices: the decode class's attention switch would reach them too.

    ``GGML_CPU_SGEMM_NO_FLOAT`` sends every float matrix to vec_dot, weights included:
    on an F16 model (the tiny test model) 4- and 8-stream decode fell to about 0.3 of
    the floor. Such models keep the vector kernels for K-quants only (no attention
    switch), so their verify passes are not decode steps' class (no speculation
    without canonical decoding there).
    """
    return bool(gguf.tensor_types & _FLOAT_WEIGHT_TYPES)


def uses_pass_kernels(gguf: GgufInfo, n_gpu_layers: int, n_layer: int) -> bool:
    """Decode passes in the decode class, prompt passes on the stock choice.

    Needs the patched build (native/kernels.py), stock settings and the model on
    the CPU. Every such model uses it, K-quant weights or not: attention kept on
    vec_dot for any number of a sequence's rows is what makes a speculative verify
    pass compute rows as decode steps do.
    """
    return pass_kernels().available and cpu_kernel_mode() == STOCK and on_cpu(n_gpu_layers, n_layer)


def default_max_decode_rows(gguf: GgufInfo, n_gpu_layers: int, n_layer: int) -> int:
    """7 where the CPU kernel switch can reach this model's matmuls, else 0 (no limit)."""
    if uses_pass_kernels(gguf, n_gpu_layers, n_layer):
        return 0  # decode passes take the vector kernels whatever their size
    if cpu_kernel_mode() != STOCK:
        return 0  # tiled kernels for every batch size, or for none
    if not on_cpu(n_gpu_layers, n_layer):
        return 0  # every layer offloaded: the CPU kernels do not run the model
    return TILED_MIN_ROWS - 1 if has_tiled_weights(gguf) else 0
