"""The ``llama_batch`` handle: rows of (token, position, sequence, wants-logits)."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

from kvllama.errors import BatchOverflowError
from kvllama.native.library import llama

# One row of a forward pass: (token, position, sequence id, wants logits).
BatchRow = tuple[int, int, int, bool]


class NativeBatch:
    """Owns one ``llama_batch`` allocated for ``capacity`` rows of one sequence each."""

    def __init__(self, capacity: int) -> None:
        self._lib = llama()
        self.capacity = capacity
        self.struct = self._lib.llama_batch_init(capacity, 0, 1)

    def fill(self, rows: Sequence[BatchRow]) -> None:
        if len(rows) > self.capacity:
            raise BatchOverflowError(len(rows), self.capacity)
        b = self.struct
        token, pos, n_seq, seq, logits = b.token, b.pos, b.n_seq_id, b.seq_id, b.logits
        for i, (tok, p, s, want) in enumerate(rows):
            token[i] = tok
            pos[i] = p
            n_seq[i] = 1
            seq[i][0] = s
            logits[i] = want
        b.n_tokens = len(rows)

    def close(self) -> None:
        struct, self.struct = getattr(self, "struct", None), None
        if struct is not None:
            self._lib.llama_batch_free(struct)

    def __del__(self) -> None:
        self.close()


class EmbeddingBatch(NativeBatch):
    """A ``llama_batch`` of embedding rows (a medium's positions) for one sequence."""

    def __init__(self, rows: object, start: int, seq_id: int, want_last: bool) -> None:
        import numpy as np

        self._lib = llama()
        data = np.ascontiguousarray(rows, dtype=np.float32)
        n, n_embd = data.shape
        self.capacity = n
        self.struct = self._lib.llama_batch_init(n, n_embd, 1)
        b = self.struct
        ctypes.memmove(b.embd, data.ctypes.data, data.nbytes)
        for i in range(n):
            b.pos[i] = start + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq_id
            b.logits[i] = want_last and i == n - 1
        b.n_tokens = n

    def fill(self, rows: Sequence[BatchRow]) -> None:
        raise TypeError("an embedding batch is filled once, from its rows, when it is made")
