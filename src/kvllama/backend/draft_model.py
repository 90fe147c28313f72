"""A draft model for speculative decoding: a second, smaller GGUF that guesses the next tokens.

It runs greedy on its own llama.cpp context with one sequence, which holds
the KV of the context it last drafted from: the next call shares all but
the newest tokens with it (the target accepted some of the draft and added
one token), so only those are computed again. Its numbers never reach a
reply: the target model verifies every drafted token (decoding/speculation.py),
so the draft model's kernels, batch shapes and precision cannot change the
tokens, only how many drafts are accepted.

Same vocabulary required: the draft's token ids are fed to the target as
they are. Checked at load: the same number of tokens and the same text for
the end-of-generation tokens and a sample of 512 ids across the vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from kvllama.errors import InvalidOptionError
from kvllama.native.batch import BatchRow, NativeBatch
from kvllama.native.context import NativeContext
from kvllama.native.library import llama
from kvllama.native.model import NativeModel
from kvllama.options import ModelOptions

# Token ids compared between the two vocabularies besides the special ones.
_SAMPLED_IDS = 512


class DraftModel:
    """Greedy drafts from a second model; owned by one decode loop (its thread only)."""

    def __init__(self, path: str, options: ModelOptions, n_ctx: int, target: NativeModel) -> None:
        self._lib = llama()
        self.path = path
        opts = replace(options, n_seq_max=1, decode_timeout=0.0, n_ctx=n_ctx, kv_unified=False)
        self.model = NativeModel(path, opts)
        try:
            _check_vocab(self.model, target, path)
            self.ctx = NativeContext(self.model, opts, n_ctx, n_seq=1)
        except BaseException:
            self.model.close()
            raise
        self.batch = NativeBatch(self.ctx.n_batch)
        self.held: list[int] = []  # the tokens whose KV sequence 0 holds

    def close(self) -> None:
        """Context before model: llama.cpp's contexts point into the model's weights."""
        batch, self.batch = getattr(self, "batch", None), None
        if batch is not None:
            batch.close()
            self.ctx.close()
            self.model.close()

    def draft(self, context: Sequence[int], n: int) -> tuple[int, ...]:
        """Up to ``n`` tokens greedy decoding of the draft model continues ``context`` with."""
        if n < 1 or not context or len(context) + n > self.ctx.n_ctx_seq:
            return ()
        keep = min(_shared(self.held, context), len(context) - 1)  # the last token must be computed
        self.ctx.clear_sequence(0, keep, -1)
        del self.held[keep:]
        token = self._feed(context, keep)
        out = [token]
        pos = len(context)
        while len(out) < n:
            self.batch.fill([(token, pos, 0, True)])
            self.ctx.decode(self.batch)
            self.held.append(token)
            token = self._argmax(0)
            out.append(token)
            pos += 1
        return tuple(out)

    def _feed(self, context: Sequence[int], start: int) -> int:
        """Compute ``context[start:]`` in n_batch-sized passes; the argmax after its last token."""
        rows: list[BatchRow] = [(t, p, 0, p == len(context) - 1) for p, t in enumerate(context) if p >= start]
        last = 0
        for i in range(0, len(rows), self.ctx.n_batch):
            chunk = rows[i:i + self.ctx.n_batch]
            self.batch.fill(chunk)
            self.ctx.decode(self.batch)
            last = len(chunk) - 1
        self.held.extend(context[start:])
        return self._argmax(last)

    def _argmax(self, index: int) -> int:
        row = self._lib.llama_get_logits_ith(self.ctx.handle, index)
        return int(np.ctypeslib.as_array(row, shape=(self.model.n_vocab,)).argmax())


def _shared(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _check_vocab(draft: NativeModel, target: NativeModel, path: str) -> None:
    if draft.n_vocab != target.n_vocab:
        raise InvalidOptionError("draft_model", path, f"a GGUF with the target's vocabulary "
                                 f"({target.n_vocab} tokens; this one has {draft.n_vocab})")
    if draft.eog_ids != target.eog_ids:
        raise InvalidOptionError("draft_model", path, "a GGUF with the target's end-of-generation tokens")
    step = max(1, target.n_vocab // _SAMPLED_IDS)
    for token in range(0, target.n_vocab, step):
        if draft.piece(token, special=True) != target.piece(token, special=True):
            raise InvalidOptionError("draft_model", path,
                                     f"a GGUF with the target's vocabulary (token {token} differs)")
