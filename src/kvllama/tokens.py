"""Small facts about token sequences that several layers need."""

from __future__ import annotations

from collections.abc import Sequence


def shared_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share (compared a block at a time, then token by token).

    Both must be the same kind of sequence (tuple with tuple, list with list):
    slices of different kinds never compare equal.
    """
    n, i, step = min(len(a), len(b)), 0, 256
    while i + step <= n and a[i : i + step] == b[i : i + step]:
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return i
