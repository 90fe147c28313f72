"""Planning one tick: which rows of which sequences go into the next forward pass.

``plan`` is a pure function of the running sequences' progress, so it is
unit-tested without a model. The policy (SPEC §3):

* every sequence that is generating gets its one decode row first, so running
  streams keep producing tokens whatever else arrives;
* the rest of the ``n_batch`` budget goes to prompts still prefilling, in
  admission order; while anyone is decoding, each prompt gets at most
  ``chunk_size`` rows per tick (chunked prefill), and when nobody is decoding
  a prompt may take the whole budget, since there is no one to keep waiting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SeqProgress:
    """The planner's view of one running request."""

    # Index of the request in the loop's running list.
    key: int
    # Tokens the sequence must have in KV before it samples (prompt length).
    n_prompt: int
    # Tokens already in KV.
    n_computed: int
    # True once the prompt is done: the request feeds one sampled token per tick.
    decoding: bool


@dataclass(frozen=True, slots=True)
class Slice:
    """Consecutive rows of one sequence in this tick's batch."""

    key: int
    # Position of the first row (== the sequence's n_computed).
    start: int
    count: int
    # Whether the last row needs logits (a token will be sampled from it).
    sample: bool
    decoding: bool


@dataclass(frozen=True, slots=True)
class Tick:
    slices: tuple[Slice, ...]

    @property
    def n_rows(self) -> int:
        return sum(s.count for s in self.slices)

    @property
    def prefilling(self) -> bool:
        return any(not s.decoding for s in self.slices)


def plan(seqs: Sequence[SeqProgress], n_batch: int, chunk_size: int) -> Tick:
    budget = n_batch
    slices: list[Slice] = []
    decoders = [s for s in seqs if s.decoding]
    for s in decoders:
        if budget == 0:
            break
        slices.append(Slice(s.key, s.n_computed, 1, sample=True, decoding=True))
        budget -= 1
    per_prompt = chunk_size if decoders else n_batch
    for s in seqs:
        if s.decoding or budget == 0:
            continue
        remaining = s.n_prompt - s.n_computed
        count = min(remaining, per_prompt, budget)
        if count <= 0:
            continue
        done = s.n_computed + count == s.n_prompt
        slices.append(Slice(s.key, s.n_computed, count, sample=done, decoding=False))
        budget -= count
    return Tick(tuple(slices))
