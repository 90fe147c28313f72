"""Probe: the decode class of the patched build (docs/kernel-patch.md).

``.venv/bin/python docs/probes/decode_class.py [MODE ...] [--model=PATH]`` (modes, ggml-cpu.h:
1 = vector kernels, 5 = the decode class (vector kernels, attention on vec_dot at any row
count), 7 = tiled kernels at every size + vec_dot attention; default 1 and 5). For each mode:

* per k = 1, 2, 4, 8, 16 decode rows in one pass: median ms of 20 passes, and the
  max |delta logit| of sequence 0's rows over 12 greedy steps against k = 1;
* verify: sequence 0 decoded step by step (1-row passes), then its 8 decoded
  tokens recomputed as one 8-row pass of that sequence; max |delta logit| of the
  pass's rows against the step-by-step rows (0.0: a verify pass answers exactly
  as greedy decoding does).
"""
import statistics
import sys
import time

import numpy as np

from kvllama.backend.llama import LlamaBackend
from kvllama.models.default import default_model_path
from kvllama.options import ModelOptions

N = 16
modes = [int(m) for m in sys.argv[1:] if not m.startswith("--")] or [1, 5]
path = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--model=")), default_model_path())
b = LlamaBackend(path, ModelOptions.from_kwargs(n_seq_max=N, n_ctx=N * 512, n_threads=2))
lib, V = b.ctx._lib, b.description.n_vocab
prompts = [b.tokenize(f"Entry {i}: the river was long and the town was small, and the people who lived there")[:16] for i in range(N)]


def row(i: int) -> np.ndarray:
    return np.ctypeslib.as_array(lib.llama_get_logits_ith(b.ctx.handle, i), shape=(V,)).copy()


def prefill(k: int) -> list[int]:
    for s in range(N):
        b.clear_sequence(s)
    b.batch.fill([(t, i, s, i == 15) for s in range(k) for i, t in enumerate(prompts[s])])
    b.ctx.decode(b.batch)
    return [int(row(16 * s + 15).argmax()) for s in range(k)]


def steps(k: int, mode: int, n: int = 20) -> tuple[list[np.ndarray], list[float], list[int]]:
    toks = prefill(k)
    out, times, seq0 = [], [], [toks[0]]
    for step in range(n):
        b.batch.fill([(toks[s], 16 + step, s, True) for s in range(k)])
        t0 = time.perf_counter()
        b.ctx.decode(b.batch, mode)
        times.append((time.perf_counter() - t0) * 1000)
        out.append(row(0))
        toks = [int(row(s).argmax()) for s in range(k)]
        seq0.append(toks[0])
    return out, times, seq0


for mode in modes:
    ref, _, seq0 = steps(1, mode)
    for k in (1, 2, 4, 8, 16):
        got, times, _ = steps(k, mode)
        delta = max(float(np.abs(a - g).max()) for a, g in zip(ref[:12], got[:12], strict=True))
        print(f"mode {mode}  {k:2d} rows  {statistics.median(times):6.1f} ms/pass  max|delta| {delta:.3g}")
    prefill(1)
    b.batch.fill([(t, 16 + i, 0, True) for i, t in enumerate(seq0[:8])])
    b.ctx.decode(b.batch, mode)
    delta = max(float(np.abs(row(i) - ref[i]).max()) for i in range(8))
    print(f"mode {mode}  verify: 8 rows of one sequence vs 8 one-row steps  max|delta| {delta:.3g}")
