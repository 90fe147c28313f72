"""Idle time makes finished replies reusable: a reply's KV is recomputed as prompt chunks.

A reply's KV comes from decode rows, which llama.cpp computes unlike a
prompt chunk (docs/measured/exactness.md), so a finished request keeps only its
prompt's KV (``Finishing._cut_to_exact``) and the next turn of the
conversation would prefill the reply again before its own message. When the
decode loop has nothing else to do, the settler prefills a kept sequence's (or a
parked session's) reply as prompt chunks of ``MIN_CHUNK_ROWS``+ rows, one
chunk per idle step: the slot then holds the whole transcript exactly as a
cold prefill computes it, the next turn prefills only its new message, and a
row covering the reply is saved to the cache (so a restore skips it too).

This is llama-server's reuse of a slot's whole last prompt and reply, made
exact: the reply is recomputed, in time nobody waits on. A request that
arrives during a settle pass aborts it (``ModelLoop.submit``); the chunk is
redone at the next idle step. Sequences run with LoRA adapters are left as
they are (the slot records the adapters' file hashes, not the loaded ids a
pass needs), and so are replies shorter than one canonical chunk.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from kvllama.backend.protocol import Backend
from kvllama.decoding.kept import KeptSequence, KeptSequences
from kvllama.decoding.request import resume_point
from kvllama.decoding.sessions import Session, SessionTable
from kvllama.decoding.warm import WarmStart
from kvllama.errors import DecodeAbortedError, DecodeTimeoutError, KvllamaError

log = logging.getLogger("kvllama.decoding")


@dataclass
class SettleStats:
    """What settling did (``model_info(...).settled``, /status)."""

    # Reply tokens recomputed as prompt chunks, and the conversations fully settled.
    tokens: int = 0
    sequences: int = 0
    # Passes given up for an arriving request, and rows saved covering a reply.
    aborted: int = 0
    rows_saved: int = 0


class ReplySettler:
    """Loop thread only: picks a held sequence with an unsettled reply and prefills one chunk."""

    def __init__(self, backend: Backend, kept: KeptSequences, sessions: SessionTable,
                 warm: WarmStart | None, chunk_rows: int) -> None:
        self.backend = backend
        self.kept = kept
        self.sessions = sessions
        self.warm = warm
        self.min_rows = backend.shape.min_chunk_rows
        self.chunk_rows = max(chunk_rows, self.min_rows)
        self.stats = SettleStats()
        # True while a settle pass runs: an arriving request aborts it (from any thread).
        self.running = False

    def pending(self) -> Session | KeptSequence | None:
        """The most recently used held sequence whose reply is not settled yet."""
        held: list[Session | KeptSequence] = [*self.kept.by_seq.values(), *self.sessions.parked.values()]
        todo = [h for h in held if self._unsettled(h) >= self.min_rows]
        return max(todo, key=lambda h: h.last_used) if todo else None

    def _unsettled(self, held: Session | KeptSequence) -> int:
        if held.adapter_key or len(held.transcript) <= len(held.tokens):
            return 0
        if min(held.transcript[len(held.tokens):]) < 0:
            return 0  # a prompt's media or tagged ids (kvllama.media.layout) are not tokens to decode
        return len(held.transcript) - len(held.tokens)

    def step(self) -> bool:
        """One settle pass; False when there is nothing to settle."""
        held = self.pending()
        if held is None:
            return False
        start, end, stop = self._next_chunk(held)
        seq = held.seq_id
        rows = [(held.transcript[p], p, seq, False) for p in range(start, end)]
        self.running = True
        try:
            self.backend.decode(rows)
        except DecodeAbortedError as exc:
            self.backend.clear_sequence(seq, start)
            if isinstance(exc, DecodeTimeoutError):
                held.transcript = held.tokens  # too slow to settle: leave it as it was
            else:
                self.stats.aborted += 1
            return True
        except KvllamaError:
            log.exception("settling the reply in sequence %d failed; it is left unsettled", seq)
            self.backend.clear_sequence(seq, start)
            held.transcript = held.tokens
            return True
        finally:
            self.running = False
        held.tokens = held.transcript[:end]
        if isinstance(held, KeptSequence):
            held.greedy_next = None  # it was the token after the prompt, which the slot now outgrew
        self.stats.tokens += end - start
        if end == stop:
            self._save(held)
        if self._unsettled(held) < self.min_rows:
            self.stats.sequences += 1
        return True

    def _next_chunk(self, held: Session | KeptSequence) -> tuple[int, int, int]:
        """(start, end, stop): this pass's rows, and the point it heads for.

        Above a sliding window a row can be restored exactly only on the resume
        grid, so the settler heads for the grid point below the transcript's end
        first (a row is saved there), then for the end. Every chunk, the last
        one before a stop included, has at least ``min_rows`` rows.
        """
        start, total = len(held.tokens), len(held.transcript)
        grid = resume_point(total, self.backend.shape.swa_window)
        stop = grid if grid - start >= self.min_rows else total
        end = min(start + self.chunk_rows, stop)
        if 0 < stop - end < self.min_rows:
            end = stop - self.min_rows if stop - self.min_rows - start >= self.min_rows else stop
        return start, end, stop

    def _save(self, held: Session | KeptSequence) -> None:
        """A row of the settled transcript (on the resume grid), as a finish row."""
        if self.warm is None:
            return
        try:
            if self.warm.save_held(held.seq_id, held.tokens, (held.cache_salt, held.adapter_key)):
                self.stats.rows_saved += 1
        except Exception:  # costs the row only, never the slot
            log.exception("saving the settled reply of sequence %d failed", held.seq_id)
