"""``verify`` in one forward pass: a draft checked against a kept sequence that holds the prefix.

A caller running its own speculation loop asks: given ``tokens``, how many
tokens of ``draft`` would the engine's greedy decoding produce, and which
token comes after them? Greedy decoding of ``tokens`` takes its first token
from the prompt's last row (a prompt chunk) and every later one from a decode
row. A finished plain-greedy request leaves its prompt in its slot and
remembers that first token (``KeptSequence.greedy_next``); then the rest of the
answer is one decode-class pass over the draft: row i is the draft token at
position n + i, whose argmax is the token greedy decoding would put after it.
The patched build computes a row of such a pass exactly as a one-row decode
step (docs/kernel-patch.md: ``ContextShape.exact_verify``), so the answer
equals the engine's own decoding. The rows are cut off again afterwards; the
slot keeps the prefix.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvllama.backend.protocol import Backend, Sampler
from kvllama.decoding.kept import KeptSequence, KeptSequences
from kvllama.errors import KvllamaError


def held_prefix(kept: KeptSequences, tokens: Sequence[int]) -> KeptSequence | None:
    """A tenant-free kept sequence holding exactly ``tokens`` whose greedy next token is known."""
    want = tuple(tokens)
    for kept_seq in kept.by_seq.values():
        if (kept_seq.greedy_next is not None and kept_seq.cache_salt is None and not kept_seq.adapter_key
                and kept_seq.tokens == want):
            return kept_seq
    return None


def verify_on_slot(backend: Backend, kept_seq: KeptSequence, draft: Sequence[int],
                   greedy: Sampler) -> tuple[int, int] | None:
    """(accepted draft tokens, the token after them); None if the pass failed (the caller falls back).

    Loop thread only, between ticks: the slot is idle, and nothing else decodes.
    """
    assert kept_seq.greedy_next is not None
    first = kept_seq.greedy_next
    if not draft or draft[0] != first:
        return 0, first
    n, seq = len(kept_seq.tokens), kept_seq.seq_id
    rows = [(token, n + i, seq, True) for i, token in enumerate(draft)]
    try:
        backend.decode(rows, (), decode_only=True)
        predicted = [backend.sample(greedy, i) for i in range(len(rows))]
    except KvllamaError:
        return None
    finally:
        backend.clear_sequence(seq, n)  # the draft's rows go; the slot keeps the prefix
    accepted = 1
    while accepted < len(draft) and draft[accepted] == predicted[accepted - 1]:
        accepted += 1
    return accepted, predicted[accepted - 1]
