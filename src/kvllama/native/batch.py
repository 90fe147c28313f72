"""The ``llama_batch`` handle: rows of (token, position, sequence, wants-logits)."""

from __future__ import annotations

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
