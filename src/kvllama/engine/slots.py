"""Keeping sequence ids compact: decoding sequences on ids 0..d-1, prompts after them.

Why this exists (measured on this project's machines, see the README's
architecture notes): with ``kv_unified=False`` llama.cpp splits a batch into
ubatches of *consecutive* sequence ids with equal token counts. Decode rows
of sequences {0,1,2,3} run as one ubatch; rows of {0,2,4,6} run as four,
which cut aggregate decode throughput from 94 to 18 tokens/s. So whenever a
request finishes or a prompt turns into a decoder, sequences are moved (a
whole-sequence ``llama_memory_seq_cp``, a bit copy, so outputs are unchanged)
to restore the layout. One hidden scratch id (``n_seq_max``) breaks cycles.

``plan_moves`` is pure; the loop applies its moves to the backend.
"""

from __future__ import annotations

from collections.abc import Iterable


def plan_moves(
    decoders: Iterable[int], prompts: Iterable[int], scratch: int, parked: Iterable[int] = ()
) -> list[tuple[int, int]]:
    """Moves (src, dst) that put decoders on [0, d), prompts next, idle sessions last.

    Sequences already in their target range stay. Each move's destination is
    free when it runs; a cycle (every destination occupied) goes through
    ``scratch``.
    """
    groups = [set(decoders), set(prompts), set(parked)]
    pending: dict[int, int] = {}
    start = 0
    for group in groups:
        end = start + len(group)
        targets = sorted(set(range(start, end)) - group)
        misplaced = sorted(x for x in group if not start <= x < end)
        pending.update(zip(misplaced, targets, strict=True))
        start = end
    occupied = set().union(*groups)
    moves: list[tuple[int, int]] = []
    while pending:
        ready = next((src for src, dst in pending.items() if dst not in occupied), None)
        if ready is None:
            # A cycle: park one sequence in the scratch slot and continue.
            src, dst = next(iter(pending.items()))
            moves.append((src, scratch))
            occupied.discard(src)
            occupied.add(scratch)
            del pending[src]
            pending[scratch] = dst
            continue
        dst = pending.pop(ready)
        moves.append((ready, dst))
        occupied.discard(ready)
        occupied.add(dst)
    return moves
