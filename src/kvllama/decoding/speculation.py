"""Speculative decoding by prompt lookup (n-gram drafts), exact under canonical decoding.

A request that copies from its own context (rewriting a text, quoting code,
repeating a list) keeps producing tokens that already appeared. The draft
is what followed the latest earlier occurrence of the context's last n tokens
(n = 3, then 2, then 1: llama.cpp's "ngram-simple" idea); the decode step
computes the pending token and the draft in one chunk, and the longest prefix
of the draft that greedy decoding would have produced is accepted, plus the
token after it. With canonical decoding every row of that chunk is computed
exactly as a 2-row decode step computes it (docs/measured/exactness.md), so the tokens
are the same with speculation on and off; the rejected rows are cut from the
sequence before any token is emitted.

The drafts may come from a draft model instead (``draft_model``:
backend/draft_model.py): its greedy guesses, verified the same way.

When it runs: plain greedy requests only (no grammar, penalties, biases,
log-probabilities, min_tokens or ignore_eos), only while one request is
decoding and none is prefilling (a batch of several streams already keeps
the machine busy, and published figures show lookup decoding losing there:
llama.cpp PR #6828, 1.10x at 1 slot, 0.86x at 4, 0.77x at 8), and only while
drafts pay for themselves as measured (decoding/spec_governor.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from kvllama.decoding.request import Request

MAX_DRAFT = 16
_NGRAMS = (3, 2, 1)


def ngram_draft(context: Sequence[int], max_draft: int) -> tuple[int, ...]:
    """What followed the latest earlier occurrence of the context's last n tokens (n = 3, 2, 1)."""
    n_ctx = len(context)
    for n in _NGRAMS:
        if n_ctx <= n:
            continue
        tail = tuple(context[n_ctx - n :])
        for start in range(n_ctx - n - 1, -1, -1):
            if tuple(context[start : start + n]) == tail:
                follow = tuple(context[start + n : start + n + max_draft])
                if follow:
                    return follow
    return ()


class Drafter(Protocol):
    def draft(self, context: Sequence[int], n: int) -> tuple[int, ...]: ...
    def close(self) -> None: ...


class NgramDrafter:
    """Prompt lookup: :func:`ngram_draft`."""

    def draft(self, context: Sequence[int], n: int) -> tuple[int, ...]:
        return ngram_draft(context, n)

    def close(self) -> None:
        pass


def eligible(r: Request) -> bool:
    """Plain greedy: the next token is the argmax of its row, nothing else depends on it."""
    p = r.params
    plain = (p.greedy and p.grammar is None and p.repetition_penalty == 1.0 and not p.frequency_penalty
             and not p.presence_penalty and not p.logit_bias)
    # A prompt with media holds ids that are no vocabulary's (kvllama.media.layout): nothing to draft from.
    return (plain and p.logprobs is None and p.min_tokens == 0 and not p.ignore_eos
            and r.greedy_sampler is None and r.spec.layout is None)
