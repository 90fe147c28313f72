"""The runner: a tick's plan becomes forward passes, and sampled rows become tokens."""

from __future__ import annotations

import logging
import time

from kvllama.decoding.finishing import Finisher
from kvllama.decoding.loop_state import LoopState, Phase
from kvllama.decoding.media_steps import MediaSteps, canonical_chunk, prompt_end, sample_only_at_prompt_end
from kvllama.decoding.request import Request, Status
from kvllama.decoding.scheduler import SeqProgress, Slice, decode_groups, plan
from kvllama.decoding.speculation import eligible
from kvllama.errors import DecodeAbortedError, DecodeError, DecodeTimeoutError, KvllamaError
from kvllama.events import TokenEvent, TokenLogprob
from kvllama.native.batch import BatchRow

log = logging.getLogger("kvllama.decoding")


class Runner:
    def __init__(self, state: LoopState, finisher: Finisher) -> None:
        self.state = state
        self.finisher = finisher
        self.media = MediaSteps(state, finisher, self._sample)

    def tick(self) -> None:
        adapters = self._adapters_this_tick()
        self.state.tick_adapters = adapters
        shape = self.state.backend.shape
        # Prompts with media (kvllama.media): their spans first, and chunks that stop at them.
        media = any(r.spec.layout is not None for r in self.state.running)
        if media:
            self.media.run(adapters)
        self._plan_draft()
        views = [
            SeqProgress(i, r.seq_id, prompt_end(r), self._progress(r), r.pending_token is not None,  # type: ignore[arg-type]
                        r.cache.next_save_point(r.n_computed), len(r.draft))
            for i, r in enumerate(self.state.running) if r.options.adapters == adapters
        ]
        tick = plan(views, shape.n_batch, self.state.chunk_size, self.state.align, shape.n_ubatch,
                    min_rows=shape.min_chunk_rows, decode_rows=2 if shape.canonical_decode else 1)
        if media:
            tick = sample_only_at_prompt_end(tick, self.state.running)
        if tick.slices:
            self.state.status.phase = Phase.PREFILLING if tick.prefilling else Phase.GENERATING
            seq_ids = {v.key: v.seq_id for v in views}
            for group in decode_groups(tick.slices, shape.max_decode_rows, seq_ids, shape.per_pass_kernels):
                if not self._forward(group) and len(group) > 1:
                    # Isolate the failure: each request alone, so one bad request
                    # ends with its own error and the others go on.
                    for s in group:
                        if not self.state.running[s.key].cancel_requested:
                            self._forward((s,))
        self.state.running = [r for r in self.state.running if not r.done]

    def _plan_draft(self) -> None:
        """Speculate while exactly one request runs and it decodes (decoding/speculation.py)."""
        if not self.state.speculative_draft or len(self.state.running) != 1:
            return
        r = self.state.running[0]
        if r.pending_token is None or not eligible(r) or not r.governor.should_draft():
            return
        room = min(r.params.max_tokens - len(r.generated) - 1,
                   self.state.backend.shape.n_ctx_seq - (len(r.prompt) + len(r.generated)) - 2)
        if room > 0:
            started = time.perf_counter()
            n = r.governor.draft_length(min(self.state.speculative_draft, room))
            r.draft = self.state.drafter.draft((*r.prompt, *r.generated), n)
            r.draft_seconds = time.perf_counter() - started
            r.timing.decode_seconds += r.draft_seconds  # drafting is part of decoding's cost

    def _progress(self, r: Request) -> int:
        """What the planner sees as done: for a canonical decoder, the pending token's position
        (its step recomputes the token before it, whatever a failed pass left in KV)."""
        if self.state.backend.shape.canonical_decode and r.pending_token is not None:
            return len(r.prompt) + len(r.generated) - 1
        return r.n_computed

    def _adapters_this_tick(self) -> tuple[tuple[str, float], ...]:
        """The LoRA adapter set this tick runs: llama.cpp applies one set to a whole pass, so
        requests of different sets take turns, one set per tick (most runs have only one)."""
        sets = sorted({r.options.adapters for r in self.state.running})
        if len(sets) <= 1:
            return sets[0] if sets else ()
        self._adapter_turn = getattr(self, "_adapter_turn", -1) + 1
        return sets[self._adapter_turn % len(sets)]

    def _forward(self, slices: tuple[Slice, ...]) -> bool:
        """Decode these slices in one batch, then sample; False if the decode failed."""
        batch = [self.state.running[s.key] for s in slices]
        rows, samples = self._rows(slices)
        started = time.perf_counter()
        self.state.prefilling_now = frozenset(r for s, r in zip(slices, batch, strict=True) if not s.decoding)
        try:
            # Decode rows (with any drafts to verify) in the decode class; canonical steps are chunks.
            decode_only = not self.state.backend.shape.canonical_decode and all(s.decoding for s in slices)
            self.state.backend.decode(rows, self.state.tick_adapters, decode_only=decode_only)
        except KvllamaError as exc:
            # An abort asked for by cancel() costs the others of the pass nothing: they
            # made no progress and are planned again next tick. A timeout is an error.
            cancelled = isinstance(exc, DecodeAbortedError) and not isinstance(exc, DecodeTimeoutError)
            if isinstance(exc, DecodeError) and exc.status < -1:
                raise  # llama.cpp's own "fatal error": the context is suspect (see _recover)
            for s, r in zip(slices, batch, strict=True):
                # Drop whatever part of the batch llama.cpp kept, so a retry starts clean.
                self.state.backend.clear_sequence(r.seq_id, s.start)  # type: ignore[arg-type]
                r.n_computed, r.exact_len = min(r.n_computed, s.start), min(r.exact_len, s.start)
                if s.decoding:
                    r.pending_token = rows[self._row_of(slices, s) + s.count - 1][0]
                if len(slices) == 1 and not cancelled:
                    self.finisher.emit_error(r, exc)
            return cancelled
        finally:
            self.state.prefilling_now = frozenset()
        elapsed = time.perf_counter() - started
        # A lone decoding request's step is what its speculation governor measures.
        lone_step = len(batch) == 1 and slices[0].decoding and bool(self.state.speculative_draft)
        min_rows = self.state.backend.shape.min_chunk_rows
        for s, r in zip(slices, batch, strict=True):
            r.n_computed = s.start + s.count
            # Rows of a chunk of min_rows+ computed right after canonical KV are canonical too
            # (with canonical decoding, decode steps are such chunks).
            if r.exact_len >= s.start and canonical_chunk(r, s.start, s.count, min_rows):
                r.exact_len = r.n_computed
            if s.decoding:
                r.timing.decode_seconds += elapsed
            else:
                r.timing.prefill_seconds += elapsed
                if self.state.warm is not None:
                    self.state.warm.after_prefill_step(r)
        for row_index, r in samples:
            try:
                if r.draft:
                    self._sample_draft(r, row_index, elapsed)
                else:
                    if lone_step and eligible(r):
                        r.governor.plain_step(elapsed)
                    self._sample(r, row_index)
            except Exception as exc:  # this request's sampler or channels: end it alone
                if not isinstance(exc, KvllamaError):
                    log.exception("sampling request %s failed", r.id)
                self.finisher.fail(r, exc)
        return True

    @staticmethod
    def _row_of(slices: tuple[Slice, ...], target: Slice) -> int:
        """Index of ``target``'s first row in the batch built from ``slices``."""
        index = 0
        for s in slices:
            if s is target:
                return index
            index += s.count
        raise ValueError("slice not in batch")

    def _rows(self, slices: tuple[Slice, ...]) -> tuple[list[BatchRow], list[tuple[int, Request]]]:
        rows: list[BatchRow] = []
        samples: list[tuple[int, Request]] = []
        for s in slices:
            r = self.state.running[s.key]
            seq = r.seq_id
            assert seq is not None
            if s.decoding:
                if s.count == 2 and self.state.backend.shape.canonical_decode:  # recompute the token before
                    self.state.backend.clear_sequence(seq, s.start)
                    before = s.start - len(r.prompt)
                    token = r.spec.decode_ids[s.start] if before < 0 else r.generated[before]
                    rows.append((token, s.start, seq, False))
                pending_at = s.start + s.count - 1 - len(r.draft)
                rows.append((r.pending_token, pending_at, seq, True))  # type: ignore[arg-type]
                rows.extend((d, pending_at + 1 + i, seq, True) for i, d in enumerate(r.draft))
                r.pending_token = None
            else:
                last = s.start + s.count - 1
                prompt = r.spec.decode_ids
                rows.extend((prompt[p], p, seq, s.sample and p == last)
                            for p in range(s.start, s.start + s.count))
            if s.sample:
                samples.append((len(rows) - 1 - (len(r.draft) if s.decoding else 0), r))
        return rows, samples

    def _logprob(self, sampler: object, row_index: int, token: int, top_n: int | None) -> TokenLogprob | None:
        if top_n is None:
            return None
        logprob, top = self.state.backend.logprobs(sampler, row_index, token, top_n)  # type: ignore[arg-type]
        piece = self.state.backend.piece
        return TokenLogprob(token, logprob, piece(token), tuple((t, lp, piece(t)) for t, lp in top))

    def _sample(self, r: Request, row_index: int) -> None:
        if r.params.max_tokens == 0:
            self.finisher.finish(r, "length")
            return
        channels = r.channels
        greedy = r.greedy_sampler is not None and channels is not None and channels.greedy_now
        p = r.params
        ban = self.state.backend.eog_ids if p.ignore_eos or len(r.generated) < p.min_tokens else ()
        sampler = r.greedy_sampler if greedy else r.sampler
        token = self.state.backend.sample(sampler, row_index, ban)
        if r.greedy_sampler is not None:
            # Both chains see every token, so grammar and penalty state stay in step.
            (r.sampler if greedy else r.greedy_sampler).accept(token)
        self._emit(r, token, sampler, row_index)

    def _sample_draft(self, r: Request, row_index: int, verify_seconds: float) -> None:
        """Accept the draft's longest prefix greedy decoding agrees with, plus the token after it.

        Every token is read first (argmax, no state), the rejected rows are cut from
        the sequence, and only then are the tokens emitted one by one, so a request
        that ends on one of them leaves a sequence holding exactly its tokens.
        """
        draft, r.draft = r.draft, ()
        tokens: list[int] = []
        for i in range(len(draft) + 1):
            tokens.append(self.state.backend.sample(r.sampler, row_index + i))
            if i == len(draft) or tokens[-1] != draft[i]:
                break
        keep = r.n_computed - len(draft) + len(tokens) - 1  # the pending row and the accepted drafts
        self.state.backend.clear_sequence(r.seq_id, keep)  # type: ignore[arg-type]
        r.n_computed, r.exact_len = keep, min(r.exact_len, keep)
        r.drafted += len(draft)
        r.accepted += len(tokens) - 1
        r.governor.drafted(len(tokens) - 1, r.draft_seconds, verify_seconds)
        for i, token in enumerate(tokens):
            if not self._emit(r, token, r.sampler, row_index + i):
                return

    def _emit(self, r: Request, token: int, sampler: object, row_index: int) -> bool:
        """A sampled token's effects: events, stops, limits; False once the request has ended."""
        channels, p = r.channels, r.params
        now = time.perf_counter()
        if r.timing.first_token_at is None:
            r.timing.first_token_at = now
            r.status = Status.DECODING
        if r.params.stop_at_eog and self.state.backend.is_eog(token):
            self.finisher.finish(r, "stop")
            return False
        r.generated.append(token)
        r.sink.put(TokenEvent(token, self._logprob(sampler, row_index, token, p.logprobs)))
        stop = channels.push(token) if channels is not None else None
        if stop is not None:
            self.finisher.finish(r, "stop", stop)
            return False
        if len(r.generated) >= r.params.max_tokens:
            self.finisher.finish(r, "length")
            return False
        if len(r.prompt) + len(r.generated) >= self.state.backend.shape.n_ctx_seq:
            self.finisher.finish(r, "length")  # the sequence's context is full
            return False
        r.pending_token = token
        return True

