"""The throughput floor: the bench's workload as a bare loop over llama.cpp.

The floor is what the same llama-cpp-python wheel does for the same work with
nothing of the engine in between: no scheduler, no request objects, no events,
no threads, no sampler chains. It uses only kvllama.native's handle wrappers
(the model, the context and the batch), so the engine's own overheads (and its
exactness rules, such as at most ``max_decode_rows`` decode rows per pass) are
exactly what engine/floor measures.

The work matches the engine run: ``N`` prompts prefilled together in
``n_batch``-sized ``llama_decode`` calls (logits only on each prompt's last
token), then one row per sequence per step, each row's next token the argmax
of its logits (greedy, as the engine's temperature 0), until every sequence
has ``max_tokens`` tokens. The first token comes from the prefill, so that is
``max_tokens - 1`` decode steps, as in the engine.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from kvllama.native.batch import BatchRow, NativeBatch
from kvllama.native.context import NativeContext
from kvllama.native.library import llama
from kvllama.native.model import NativeModel
from kvllama.options import DEFAULT_N_CTX_PER_SEQ, ModelOptions


def cells_per_sequence(options: ModelOptions, n_ctx_train: int) -> int:
    """KV cells each sequence gets, computed as the engine's backend does for its context."""
    if options.n_ctx:
        return options.n_ctx // options.n_seq_max
    return min(DEFAULT_N_CTX_PER_SEQ, n_ctx_train or DEFAULT_N_CTX_PER_SEQ)


class Floor:
    """One model and, per concurrency ``N``, one context of ``N`` sequences and the same cells each.

    ``decode_timeout`` is off here: the watchdog is an engine safety feature,
    so its cost belongs to the engine's side of the ratio.
    """

    def __init__(self, path: str, options: ModelOptions) -> None:
        self._lib = llama()
        self.options = replace(options, decode_timeout=0.0)
        self.model = NativeModel(path, self.options)
        self.per_seq = cells_per_sequence(options, self.model.describe()["n_ctx_train"])
        self._contexts: dict[int, tuple[NativeContext, NativeBatch]] = {}

    def close(self) -> None:
        """Contexts before the model: llama.cpp's contexts point into the model's weights."""
        for ctx, batch in self._contexts.values():
            batch.close()
            ctx.close()
        self._contexts.clear()
        self.model.close()

    def __enter__(self) -> Floor:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _context(self, n: int) -> tuple[NativeContext, NativeBatch]:
        """Created once per concurrency, outside the timed region, and emptied before each run."""
        if n not in self._contexts:
            ctx = NativeContext(self.model, self.options, self.per_seq * n, n_seq=n)
            self._contexts[n] = (ctx, NativeBatch(ctx.n_batch))
        return self._contexts[n]

    def run(self, prompts: Sequence[Sequence[int]], max_tokens: int) -> tuple[float, int, list[list[int]]]:
        """Seconds from the first prefill call to the last token, tokens generated, and the tokens."""
        ctx, batch = self._context(len(prompts))
        ctx.clear_all()
        out: list[list[int]] = [[] for _ in prompts]
        started = time.perf_counter()
        nxt = self._prefill(ctx, batch, prompts)
        pos = [len(p) for p in prompts]
        for seq, token in enumerate(nxt):
            out[seq].append(token)
        for _ in range(max_tokens - 1):
            rows: list[BatchRow] = [(nxt[s], pos[s], s, True) for s in range(len(prompts))]
            batch.fill(rows)
            ctx.decode(batch)
            nxt = [self._argmax(ctx, i) for i in range(len(rows))]
            for s, token in enumerate(nxt):
                out[s].append(token)
                pos[s] += 1
        elapsed = time.perf_counter() - started
        return elapsed, sum(len(o) for o in out), out

    def _prefill(self, ctx: NativeContext, batch: NativeBatch, prompts: Sequence[Sequence[int]]) -> list[int]:
        """Every prompt in n_batch-sized passes; each prompt's first token from its last row's logits."""
        rows: list[BatchRow] = [
            (tok, j, s, j == len(p) - 1) for s, p in enumerate(prompts) for j, tok in enumerate(p)
        ]
        first = [0] * len(prompts)
        for start in range(0, len(rows), ctx.n_batch):
            chunk = rows[start:start + ctx.n_batch]
            batch.fill(chunk)
            ctx.decode(batch)
            for i, (_tok, _pos, seq, want) in enumerate(chunk):
                if want:
                    first[seq] = self._argmax(ctx, i)
        return first

    def _argmax(self, ctx: NativeContext, index: int) -> int:
        """Greedy: the highest logit of batch row ``index``, read in place (no copy)."""
        row = self._lib.llama_get_logits_ith(ctx.handle, index)
        return int(np.ctypeslib.as_array(row, shape=(self.model.n_vocab,)).argmax())
