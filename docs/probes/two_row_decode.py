"""Probe: is a decode step computed as a 2-row chunk (re-feeding the previous token) in the prompt class?

Greedy-decodes 24 tokens after a 128-token prompt, each step either as one
decode row ("one") or as a 2-row chunk that recomputes the previous token and
computes the new one ("two"), then compares the last logits with a cold
chunked prefill of the same tokens (max |delta|, 0.0 = bit-identical) and
reports the median step time. Run it as
``GGML_CPU_TILED_MM=0 .venv/bin/python docs/probes/two_row_decode.py`` and
with ``GGML_CPU_TILED_MM=1`` (docs/llama-cpp-facts.md has the figures).
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
opts = ModelOptions(n_ctx=2048, n_seq_max=1, n_threads=2, decode_timeout=0.0)
model = NativeModel(default_model_path(), opts)
n_vocab = model.n_vocab

def logits(ctx, i):
    return np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx.handle, i), shape=(n_vocab,)).copy()

def run(mode, prompt, steps):
    ctx = NativeContext(model, opts, 2048, n_seq=1); batch = NativeBatch(512)
    toks = list(prompt)
    for s in range(0, len(toks), 64):
        chunk = toks[s:s+64]
        batch.fill([(t, s+i, 0, s+i == len(toks)-1) for i, t in enumerate(chunk)]); ctx.decode(batch)
    out = logits(ctx, len(toks[(len(toks)-1)//64*64:]) - 1)
    times = []
    for _ in range(steps):
        nxt = int(out.argmax()); toks.append(nxt); p = len(toks) - 1
        t0 = time.perf_counter()
        if mode == "one":
            batch.fill([(nxt, p, 0, True)]); ctx.decode(batch); out = logits(ctx, 0)
        else:
            lib.llama_memory_seq_rm(ctx.memory, 0, p - 1, -1)
            batch.fill([(toks[p-1], p-1, 0, False), (nxt, p, 0, True)]); ctx.decode(batch); out = logits(ctx, 1)
        times.append(time.perf_counter() - t0)
    batch.close(); ctx.close()
    return toks, out, sorted(times)[len(times)//2]

def cold(toks):
    ctx = NativeContext(model, opts, 2048, n_seq=1); batch = NativeBatch(512)
    for s in range(0, len(toks), 64):
        chunk = toks[s:s+64]
        batch.fill([(t, s+i, 0, s+i == len(toks)-1) for i, t in enumerate(chunk)]); ctx.decode(batch)
    n_last = len(toks) - (len(toks)-1)//64*64
    out = logits(ctx, n_last - 1); batch.close(); ctx.close(); return out

prompt = [2] + [1000 + (i * 37) % 5000 for i in range(127)]
for mode in ("one", "two"):
    toks, out, med = run(mode, prompt, 24)
    c = cold(toks)  # the logits after the last token, from a cold prefill of all tokens
    print(os.environ.get("GGML_CPU_TILED_MM", "stock"), mode, "max|delta| vs cold", float(np.abs(out - c).max()), "median step ms", round(med*1000, 2))
model.close()
