"""Planning one tick: which rows of which sequences go into the next forward pass.

``plan`` is a pure function of the running sequences' progress, so it is
unit-tested without a model. The policy:

* every sequence that is generating gets its one decode row, so running
  streams keep producing tokens whatever else arrives;
* the rest of the ``n_batch`` budget goes to the oldest prompt still
  prefilling; while anyone is decoding it gets at most ``chunk_size`` rows
  per tick (chunked prefill), and when nobody is decoding it may take the
  whole budget.

Two rules keep outputs exact (measured on this project's CPUs, see
README "Exactness"): llama.cpp computes a sequence's rows slightly
differently depending on how many of its tokens share a ubatch, so

* a prompt chunk ends on a multiple of ``align`` (or at the prompt's end),
  making chunk boundaries the same whatever else runs and whatever prefix
  was restored from the cache;
* one prompt per tick, its rows first in the batch, then the decode rows in
  ascending sequence id: llama.cpp's split for non-unified KV then computes
  the prompt chunk as one ubatch of its own and all decode rows as another,
  instead of peeling one prompt token off into the decode ubatch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SeqProgress:
    """The planner's view of one running request."""

    # Index of the request in the loop's running list (admission order).
    key: int
    seq_id: int
    # Tokens the sequence must have in KV before it samples (prompt length).
    n_prompt: int
    # Tokens already in KV.
    n_computed: int
    # True once the prompt is done: the request feeds one sampled token per tick.
    decoding: bool
    # End a prompt chunk exactly here (a cache save point), if not reached yet.
    stop_at: int | None = None


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


def plan(seqs: Sequence[SeqProgress], n_batch: int, chunk_size: int, align: int = 1) -> Tick:
    decoders = sorted((s for s in seqs if s.decoding), key=lambda s: s.seq_id)[:n_batch]
    decode_slices = [Slice(s.key, s.n_computed, 1, sample=True, decoding=True) for s in decoders]
    budget = n_batch - len(decode_slices)
    prompt = next((s for s in seqs if not s.decoding and s.n_computed < s.n_prompt), None)
    if prompt is None or budget == 0:
        return Tick(tuple(decode_slices))
    limit = chunk_size if decoders else n_batch
    end = prompt.n_computed + min(prompt.n_prompt - prompt.n_computed, limit, budget)
    if prompt.stop_at is not None and prompt.n_computed < prompt.stop_at < end:
        end = prompt.stop_at
    if end < prompt.n_prompt and align > 1:
        aligned = end // align * align
        # Never stall: a budget smaller than one aligned step still makes progress.
        end = aligned if aligned > prompt.n_computed else end
    count = end - prompt.n_computed
    chunk = Slice(prompt.key, prompt.n_computed, count, sample=end == prompt.n_prompt, decoding=False)
    return Tick((chunk, *decode_slices))


def decode_groups(slices: tuple[Slice, ...], max_decode_rows: int) -> list[tuple[Slice, ...]]:
    """Split a tick into forward passes of at most ``max_decode_rows`` decode rows.

    llama.cpp computes a decode row the same way for ubatches of 1 to 7 rows
    but differently from 8 rows on (measured; see README "Exactness"), so a
    tick with more decoders than that runs as several balanced passes. The
    prompt chunk, if any, rides with the first group (it is its own ubatch
    either way). 0 means no limit.
    """
    prompt = [s for s in slices if not s.decoding]
    decode = [s for s in slices if s.decoding]
    if max_decode_rows <= 0 or len(decode) <= max_decode_rows:
        return [slices] if slices else []
    n_groups = -(-len(decode) // max_decode_rows)
    size = -(-len(decode) // n_groups)
    groups = [tuple(decode[i : i + size]) for i in range(0, len(decode), size)]
    groups[0] = (*prompt, *groups[0])
    return groups
