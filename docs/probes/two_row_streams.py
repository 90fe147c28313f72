"""Probe: what 2-row decode steps cost at N streams (generated tokens/s, one row vs two per sequence).

``GGML_CPU_TILED_MM=0 .venv/bin/python docs/probes/two_row_streams.py 8`` (streams as the argument).
"""
import os, sys, time
import numpy as np
from kvllama.native.batch import NativeBatch
from kvllama.native.context import NativeContext
from kvllama.native.library import llama
from kvllama.native.model import NativeModel
from kvllama.options import ModelOptions
from kvllama.models.default import default_model_path

lib = llama()
N = int(sys.argv[1]); STEPS = 32
opts = ModelOptions(n_ctx=1024 * N, n_seq_max=N, n_threads=2, decode_timeout=0.0)
model = NativeModel(default_model_path(), opts)
n_vocab = model.n_vocab
def argmax(ctx, i):
    return int(np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx.handle, i), shape=(n_vocab,)).argmax())
for mode in ("one", "two"):
    ctx = NativeContext(model, opts, 1024 * N, n_seq=N); batch = NativeBatch(512)
    seqs = [[2] + [1000 + (i * 37 + 11 * s) % 5000 for i in range(127)] for s in range(N)]
    for s, toks in enumerate(seqs):
        batch.fill([(t, i, s, i == 127) for i, t in enumerate(toks)]); ctx.decode(batch)
        toks.append(argmax(ctx, 127))
    t0 = time.perf_counter()
    for _ in range(STEPS):
        rows, idx = [], []
        for s, toks in enumerate(seqs):
            p = len(toks) - 1
            if mode == "two":
                lib.llama_memory_seq_rm(ctx.memory, s, p - 1, -1)
                rows.append((toks[p - 1], p - 1, s, False))
            rows.append((toks[p], p, s, True)); idx.append(len(rows) - 1)
        batch.fill(rows); ctx.decode(batch)
        for s, i in enumerate(idx):
            seqs[s].append(argmax(ctx, i))
    dt = time.perf_counter() - t0
    print(os.environ.get("GGML_CPU_TILED_MM", "stock"), "streams", N, mode, "tok/s", round(N * STEPS / dt, 1))
    batch.close(); ctx.close()
model.close()
