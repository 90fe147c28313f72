"""Where llama.cpp puts the logits tensor, and what a decode step costs, by sequence count.

Run: ``.venv/bin/python docs/probes/logits_alignment.py`` (tiny model; ``default`` as
the argument for the embedded Gemma 3 270M). For each (n_seq_max, n_ubatch) it
creates a context, prefills 4 sequences, and reads the address of
``result_output`` (the logits) through llama.cpp's eval callback, then times
4-row decode steps. docs/llama-cpp-facts.md records what it printed.
"""

from __future__ import annotations

import ctypes
import sys
import time
from dataclasses import replace

import llama_cpp

import kvllama.native.context as native_context
from kvllama.bench.floor import Floor
from kvllama.bench.tiny_model import tiny_model_path
from kvllama.models.default import default_model_path
from kvllama.native.batch import NativeBatch
from kvllama.options import ModelOptions


class TensorHead(ctypes.Structure):
    """The leading fields of ggml's ``struct ggml_tensor`` (ggml.h), up to ``name``."""

    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
                ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16),
                ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p),
                ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64)]


addresses: dict[str, int] = {}


@llama_cpp.ggml_backend_sched_eval_callback
def _observe(tensor, ask, _user):  # type: ignore[no-untyped-def]
    head = ctypes.cast(tensor, ctypes.POINTER(TensorHead)).contents
    if ask:
        addresses[head.name.decode()] = head.data or 0
    return False


def main() -> None:
    path = default_model_path() if sys.argv[1:] == ["default"] else str(tiny_model_path())
    init = llama_cpp.llama_init_from_model

    def observed(model, params):  # type: ignore[no-untyped-def]
        params.cb_eval = _observe
        return init(model, params)

    with Floor(path, ModelOptions.from_kwargs(n_seq_max=8)) as floor:
        for n_seq, n_ubatch in ((4, 512), (8, 512), (9, 512), (9, 576), (7, 512), (7, 448), (16, 512)):
            opts = replace(floor.options, n_batch=n_ubatch, n_ubatch=n_ubatch)
            cells = floor.per_seq * n_seq
            native_context.llama().llama_init_from_model = observed
            _steps(native_context.NativeContext(floor.model, opts, cells, n_seq=n_seq), 1)
            native_context.llama().llama_init_from_model = init
            # Timed without the callback (the scheduler consults it at every node).
            ms = _steps(native_context.NativeContext(floor.model, opts, cells, n_seq=n_seq), 40)
            offset = addresses["result_output"] % 64
            print(f"n_seq {n_seq:>2} n_ubatch {n_ubatch}: logits at {offset:>2} mod 64, "
                  f"4-row step median {ms:.2f} ms")


def _steps(ctx: native_context.NativeContext, steps: int) -> float:
    """Prefill 4 sequences, then ``steps`` 4-row decode steps; the median step in ms."""
    batch = NativeBatch(ctx.n_batch)
    batch.fill([(100 + j, j, s, False) for s in range(4) for j in range(60)])
    ctx.decode(batch)
    times = []
    for step in range(steps):
        batch.fill([(5, 60 + step, s, True) for s in range(4)])
        started = time.perf_counter()
        ctx.decode(batch)
        times.append(time.perf_counter() - started)
    batch.close()
    ctx.close()
    return sorted(times)[len(times) // 2] * 1000

if __name__ == "__main__":
    main()
