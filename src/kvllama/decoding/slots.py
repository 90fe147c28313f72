"""Keeping sequence ids compact: decoding sequences on ids 0..d-1, prompts after them.

Why this exists (measured on this project's machines, see
docs/architecture.md): with ``kv_unified=False`` llama.cpp splits a batch into
ubatches of *consecutive* sequence ids with equal token counts. Decode rows
of sequences {0,1,2,3} run as one ubatch; rows of {0,2,4,6} run as four,
which cut aggregate decode throughput from 94 to 18 tokens/s. So whenever a
request finishes or a prompt turns into a decoder, sequences are moved (a
whole-sequence ``llama_memory_seq_cp``, a bit copy, so outputs are unchanged)
to restore the layout.

A cycle of moves (every destination held) goes through a free id. There is
no hidden spare sequence for it: a context of ``n_seq_max + 1`` streams made
llama.cpp lay out its compute buffer so that the logits tensor sat 32 bytes
off a cache line, and the two threads writing logits then shared lines (a
decode step 35 % slower on a fast-forward model; docs/measured/performance.md). When
every id is held, the caller frees one (a finished request kept in its slot
gives way) or leaves the layout as it is until one frees.

``plan_moves`` is pure; the loop applies its moves to the backend.
"""

from __future__ import annotations

from collections.abc import Iterable


def plan_moves(
    decoders: Iterable[int], prompts: Iterable[int], n_ids: int, parked: Iterable[int] = ()
) -> list[tuple[int, int]] | None:
    """Moves (src, dst) that put decoders on [0, d), prompts next, idle sequences last.

    Sequences already in their target range stay. Each move's destination is
    free when it runs. None when a cycle needs a free id and all ``n_ids``
    are held.
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
            # A cycle: park one sequence on a free id and continue.
            spare = next((i for i in range(n_ids) if i not in occupied), None)
            if spare is None:
                return None
            src, dst = next(iter(pending.items()))
            moves.append((src, spare))
            occupied.discard(src)
            occupied.add(spare)
            del pending[src]
            pending[spare] = dst
            continue
        dst = pending.pop(ready)
        moves.append((ready, dst))
        occupied.discard(ready)
        occupied.add(dst)
    return moves
