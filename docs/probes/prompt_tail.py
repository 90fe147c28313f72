"""Probe: a prompt's last chunk of 2-7 rows on the tiled kernels equals a cold chunked prefill.

``.venv/bin/python docs/probes/prompt_tail.py [K:MODE ...] [--lengths=N,...] [--model=PATH]``. For prompts below and above
the sliding window: a cold prefill (stock kernel choice, 512-row chunks, the last one 8+
rows) then 8 greedy decode steps in the decode class, against the same prompt prefilled
up to its last k tokens, those k as one chunk on the tiled kernels at every size (mode 3,
ggml-cpu.h), then the same decode steps: max |delta logit| over the prompt's last row and
the decode rows, and the tail pass's median ms against an 8-row tail on the stock choice.
"""
import statistics
import sys
import time

import numpy as np

from kvllama.backend.llama import LlamaBackend
from kvllama.models.default import default_model_path
from kvllama.options import ModelOptions

DEFAULT, FORCE, DECODE_CLASS = 0, 3, 5
path = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--model=")), default_model_path())
b = LlamaBackend(path, ModelOptions.from_kwargs(n_seq_max=1, n_ctx=8192, n_threads=2))
lib, V = b.ctx._lib, b.description.n_vocab
text = " ".join(f"The {w} stood near house {i}, and the keeper wrote it down." for i, w in
                enumerate(["oak", "mill", "bridge", "tower", "well", "gate"] * 120))


def last_row(n: int) -> np.ndarray:
    return np.ctypeslib.as_array(lib.llama_get_logits_ith(b.ctx.handle, n - 1), shape=(V,)).copy()


def chunk(tokens: list[int], start: int, mode: int) -> np.ndarray:
    b.batch.fill([(t, start + i, 0, i == len(tokens) - 1) for i, t in enumerate(tokens)])
    t0 = time.perf_counter()
    b.ctx.decode(b.batch, mode)
    chunk.ms = (time.perf_counter() - t0) * 1000
    return last_row(len(tokens))


def prefill(tokens: list[int], tail: int, tail_mode: int) -> np.ndarray:
    b.clear_sequence(0)
    head, pos = len(tokens) - tail, 0
    while pos < head:
        step = min(512, head - pos)
        if 0 < head - pos - step < 8:
            step = head - pos - 8
        logits = chunk(tokens[pos:pos + step], pos, DEFAULT)
        pos += step
    return chunk(tokens[head:], head, tail_mode) if tail else logits


def run(tokens: list[int], tail: int, tail_mode: int) -> list[np.ndarray]:
    out = [prefill(tokens, tail, tail_mode)]
    tok, pos = int(out[0].argmax()), len(tokens)
    for _ in range(8):
        out.append(chunk([tok], pos, DECODE_CLASS))
        tok, pos = int(out[-1].argmax()), pos + 1
    return out


lengths = [int(x) for a in sys.argv if a.startswith("--lengths=") for x in a.split("=", 1)[1].split(",")]
for n in (lengths or [300, 1100]):
    tokens = b.tokenize(text)[:n]
    cold = run(tokens, 0, DEFAULT)
    for k, mode in [tuple(map(int, a.split(":"))) for a in sys.argv[1:] if ":" in a] or (
            (8, DEFAULT), (1, FORCE), (2, FORCE), (3, FORCE), (5, FORCE), (7, FORCE)):
        got = run(tokens, k, mode)
        delta = max(float(np.abs(a - g).max()) for a, g in zip(cold, got, strict=True))
        times = []
        for _ in range(5):
            prefill(tokens, k, mode)
            times.append(chunk.ms)
        print(f"{n:5d} tokens  tail {k} rows mode {mode}  max|delta| {delta:.3g}  "
              f"tail pass {statistics.median(times):6.1f} ms", flush=True)
