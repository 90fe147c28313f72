"""Planning one tick: which rows of which sequences go into the next forward pass.

``plan`` is a pure function of the running sequences' progress, so it is
unit-tested without a model. The policy:

* every sequence that is generating gets its one decode row, so running
  streams keep producing tokens whatever else arrives;
* the rest of the ``n_batch`` budget goes to the oldest prompt still
  prefilling, shared with prompts that can ride in its ubatch; while anyone
  is decoding they get at most ``chunk_size`` rows per tick together
  (chunked prefill), and when nobody is decoding the whole budget.

Two rules keep outputs exact (measured on this project's CPUs, see
docs/measured/exactness.md): llama.cpp computes a sequence's rows slightly
differently depending on how many of its tokens share a ubatch, so

* a prompt chunk has at least ``MIN_CHUNK_ROWS`` rows, and so does a
  prompt's last chunk (the chunk before it stops short): chunks of 8 rows or
  more compute every row identically whatever their size, so a prompt's KV
  does not depend on how it was cut, on what else runs, or on which prefix
  was restored; chunk ends fall on multiples of ``align`` where they can
  (cache save points sit there);
* prompt chunks first in the batch, all of one row count on consecutive
  sequence ids, then the decode rows in ascending sequence id: llama.cpp's
  split for non-unified KV then computes the prompt chunks as one ubatch and
  all decode rows as another, instead of peeling prompt rows off into
  uneven pieces.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

# Rows a prompt chunk needs for llama.cpp to compute them the way every larger chunk does.
MIN_CHUNK_ROWS = 8

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
    # Draft tokens verified in this decode step (speculative decoding).
    draft: int = 0


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


def plan(seqs: Sequence[SeqProgress], n_batch: int, chunk_size: int, align: int = 1,
         n_ubatch: int | None = None, min_rows: int = MIN_CHUNK_ROWS, decode_rows: int = 1) -> Tick:
    """``decode_rows`` 2: canonical decoding, each step recomputes the token before the new one."""
    decoders = sorted((s for s in seqs if s.decoding), key=lambda s: s.seq_id)[: n_batch // decode_rows]
    back = decode_rows - 1
    decode_slices = tuple(Slice(s.key, s.n_computed - back, decode_rows + s.draft, sample=True, decoding=True)
                          for s in decoders)
    budget = n_batch - sum(s.count for s in decode_slices)
    prompts = [s for s in seqs if not s.decoding and s.n_computed < s.n_prompt]
    if not prompts or budget == 0:
        return Tick(decode_slices)
    # All prompt rows of a tick form one ubatch (llama.cpp would split a larger one unevenly).
    rows = min(chunk_size if decoders else n_batch, budget, n_ubatch or n_batch)
    chunks = _group_chunks(prompts, rows, align, min_rows)
    if not chunks and not decoders:  # a batch smaller than a canonical chunk: never stall
        leader = prompts[0]
        count = min(leader.n_prompt - leader.n_computed, rows)
        chunks = [Slice(leader.key, leader.n_computed, count, leader.n_computed + count == leader.n_prompt,
                        decoding=False)]
    return Tick((*chunks, *decode_slices))


def _group_chunks(prompts: list[SeqProgress], rows: int, align: int, min_rows: int) -> list[Slice]:
    """This tick's prompt chunks: the oldest prompt, with neighbours that can share its ubatch.

    llama.cpp (non-unified KV) puts chunks of consecutive sequence ids with
    equal row counts in one ubatch and cuts unequal ones into equal pieces, so
    prompts are grouped only on a run of consecutive ids and all get the same
    row count; a prompt for which that count breaks the chunk rules (see
    ``_chunk_end``) waits for a later tick. Several prompts admitted together
    then prefill together, as a batched llama.cpp loop would.
    """
    leader = prompts[0]
    by_id = {p.seq_id: p for p in prompts}
    run = [leader]
    while run[-1].seq_id + 1 in by_id:
        run.append(by_id[run[-1].seq_id + 1])
    while run[0].seq_id - 1 in by_id:
        run.insert(0, by_id[run[0].seq_id - 1])
    for k in range(min(len(run), max(1, rows // min_rows)), 0, -1):
        members = _members_around(run, leader, k)
        ends = [_chunk_end(m, rows // k, align, min_rows) for m in members]
        if any(e is None for e in ends):
            continue
        count = min(e - m.n_computed for e, m in zip(ends, members, strict=True))  # type: ignore[operator]
        fits = [m for m in members if _can_take(m, count, min_rows)]
        if leader in fits:
            return [Slice(m.key, m.n_computed, count, m.n_computed + count == m.n_prompt, decoding=False)
                    for m in fits]
    return []


def _members_around(run: list[SeqProgress], leader: SeqProgress, k: int) -> list[SeqProgress]:
    """``k`` consecutive members of ``run`` that include the leader, as far right as possible."""
    i = run.index(leader)
    start = max(0, min(i, len(run) - k))
    return run[start : start + k]


def _can_take(p: SeqProgress, count: int, min_rows: int = MIN_CHUNK_ROWS) -> bool:
    """A chunk of ``count`` rows obeys the chunk rules for this prompt."""
    left = p.n_prompt - p.n_computed - count
    stop = p.stop_at
    crosses_stop = stop is not None and p.n_computed < stop < p.n_computed + count
    return count >= min_rows and (left == 0 or left >= min_rows) and not crosses_stop


def _chunk_end(prompt: SeqProgress, rows: int, align: int, min_rows: int = MIN_CHUNK_ROWS) -> int | None:
    """Where this tick's chunk of ``prompt`` ends; None to skip the prompt this tick.

    Every chunk holds at least ``min_rows`` rows, and so does the
    prompt's last one, unless the whole remainder is shorter than that.
    """
    start, n = prompt.n_computed, prompt.n_prompt
    if n - start < min_rows:
        return n  # a prompt shorter than a canonical chunk: its rows are never reused
    end = start + min(n - start, rows)
    stop = prompt.stop_at
    if stop is not None and start + min_rows <= stop < end:
        end = stop
    if end < n:
        aligned = end // align * align
        if aligned >= start + min_rows:
            end = aligned
        end = min(end, n - min_rows)  # never leave a last chunk of 1-7 rows
    return end if end - start >= min_rows else None


def decode_groups(slices: tuple[Slice, ...], max_decode_rows: int, seq_ids: dict[int, int] | None = None,
                  per_pass_kernels: bool = False) -> list[tuple[Slice, ...]]:
    """Split a tick into forward passes of at most ``max_decode_rows`` decode rows.

    llama.cpp computes a decode row the same way for ubatches of 1 to 7 rows
    but differently from 8 rows on (measured; see docs/measured/exactness.md), so a
    tick with more decoders than that runs as several passes of as even a
    size as possible: the CPU's vector kernels take rows four at a time, so a
    pass of 5-7 rows costs much more than one of 4 (Gemma 3 270M, 2 cores:
    1-8 rows 26 / 36 / 43 / 49 / 71 / 78 / 85 / 79 ms), and 8 decoders ran
    12-16 % faster as 4 + 4 than as 7 + 1. Consecutive decoders stay together
    (each pass is one run of sequence ids). The prompt chunks, if any, ride
    with the first group: llama.cpp makes them a ubatch of their own, unless a
    decoder's id directly follows the prompts' last one (``seq_ids``: slice
    key -> sequence id). Its split would then take that decoder into the
    prompts' ubatch and cut the chunks into one-row pieces, computed in the
    decode class; compaction keeps decoders below prompts so this does not
    happen, but when every id is held it cannot always, and then the prompts
    go as a pass of their own. 0 means no limit.

    With ``per_pass_kernels`` (the patched build) a decode-only pass takes the
    vector kernels at any size, but a pass with prompt rows takes the stock
    choice, which computes a ubatch of 8+ decode rows with the tiled kernels:
    then the prompts and the decoders go as two passes.
    """
    prompt = [s for s in slices if not s.decoding]
    decode = [s for s in slices if s.decoding]
    single_rows = sum(1 for s in slices if s.count == 1)
    if per_pass_kernels and prompt and decode and single_rows >= MIN_CHUNK_ROWS:
        return [tuple(prompt), *decode_groups(tuple(decode), max_decode_rows)]
    if prompt and decode and seq_ids is not None:
        after = max(seq_ids[s.key] for s in prompt) + 1
        if any(seq_ids[s.key] == after for s in decode):
            return [tuple(prompt), *decode_groups(tuple(decode), max_decode_rows)]
    if max_decode_rows <= 0 or len(decode) <= max_decode_rows:
        return [slices] if slices else []
    n, n_groups = len(decode), -(-len(decode) // max_decode_rows)
    bounds = [-(-n * i // n_groups) for i in range(n_groups + 1)]  # larger groups first
    groups = [tuple(decode[a:b]) for a, b in itertools.pairwise(bounds)]
    groups[0] = (*prompt, *groups[0])
    return groups
