"""Probe: does a decode row depend on how many rows share its pass? And what does a pass cost?

``.venv/bin/python docs/probes/decode_rows_per_pass.py [default|off] [--time]``

One sequence (8-token prompt, prefilled with 15 neighbours in one 128-row pass)
is decoded greedily for 12 steps beside k-1 others (k = 1..16), all decode rows
in one ``llama_decode``. Prints, per k, the max |delta logit| of the target's
row against k = 1 at each step. ``default``: decode passes with the stock
kernel choice (tiled from 8 rows); ``off``: the patched build's per-pass mode
OFF (vector kernels at any size; a stock build ignores it). ``--time`` also
prints the median milliseconds of one decode pass per k (20 passes).
"""
import statistics
import sys
import time

import numpy as np

from kvllama.backend.llama import LlamaBackend
from kvllama.models.default import default_model_path
from kvllama.native.kernels import THREAD_DEFAULT, THREAD_OFF
from kvllama.options import ModelOptions

N = 16
mode = THREAD_OFF if sys.argv[1:2] == ["off"] else THREAD_DEFAULT
path = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--model=")), default_model_path())
b = LlamaBackend(path, ModelOptions.from_kwargs(n_seq_max=N, n_ctx=N * 512, n_threads=2))
lib, V = b.ctx._lib, b.description.n_vocab
prompts = [b.tokenize(f"Entry {i}: the river was long")[:8] for i in range(N)]


def row(i: int) -> np.ndarray:
    return np.ctypeslib.as_array(lib.llama_get_logits_ith(b.ctx.handle, i), shape=(V,)).copy()


def run(k: int, steps: int = 12) -> tuple[list[np.ndarray], list[float]]:
    for s in range(N):
        b.clear_sequence(s)
    b.batch.fill([(t, i, s, i == 7) for s in range(k) for i, t in enumerate(prompts[s])])
    b.ctx.decode(b.batch)
    toks = [int(row(8 * s + 7).argmax()) for s in range(k)]
    out, times = [], []
    for step in range(steps):
        b.batch.fill([(toks[s], 8 + step, s, True) for s in range(k)])
        t0 = time.perf_counter()
        b.ctx.decode(b.batch, mode)
        times.append((time.perf_counter() - t0) * 1000)
        out.append(row(0))
        toks = [int(row(s).argmax()) for s in range(k)]
    return out, times


ref, _ = run(1)
for k in range(1, N + 1):
    got, times = run(k, 20 if "--time" in sys.argv else 12)
    deltas = ["%.2g" % float(np.abs(a - g).max()) for a, g in zip(ref, got[:12], strict=True)]
    extra = f"  {statistics.median(times):.1f} ms/pass" if "--time" in sys.argv else ""
    print(k, deltas, extra)
