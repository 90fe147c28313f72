"""Finishing requests: done events with stats, errors, and giving their slots back."""

from __future__ import annotations

import logging
import time

from kvllama.decoding.kept import KeptSequence
from kvllama.decoding.loop_state import LoopState, typed_error
from kvllama.decoding.request import Request, Status, resume_point
from kvllama.decoding.sessions import Session
from kvllama.decoding.speculation import eligible
from kvllama.events import CacheDelta, DoneEvent, ErrorEvent, FinishReason, Stats

log = logging.getLogger("kvllama.decoding")


class Finisher:
    """Ends requests: done events with stats, errors, slots given back."""

    def __init__(self, state: LoopState) -> None:
        self.state = state

    def fail(self, r: Request, exc: Exception) -> None:
        """End one request with an error; anything that goes wrong doing so is only logged."""
        try:
            self.emit_error(r, typed_error(exc))
        except Exception:  # pragma: no cover - defensive
            log.exception("could not end request %s cleanly", r.id)
            r.status = Status.FINISHED

    def finish(self, r: Request, reason: FinishReason, stop: str | None = None) -> None:
        if r.done:
            return
        if stop is None and r.channels is not None:
            stop = r.channels.finish()
            reason = "stop" if stop is not None else reason
        committed = r.n_computed
        self._remember_calls(r, stop)
        # What outlives the request (finish row, parked session) is its canonical part only.
        reusable = r.seq_id is not None and self._cut_to_exact(r)
        if self.state.warm is not None and reusable and reason != "cancelled":
            try:
                self.state.warm.at_finish(r)
            except Exception:  # the reply stands; only its finish row is lost
                log.exception("saving request %s to the cache failed", r.id)
        opts = r.options
        if reusable and r.n_computed > 0:
            context = (r.prompt + tuple(r.generated))[: r.n_computed]
            if opts.session_id is not None:
                transcript = r.prompt + tuple(r.generated)
                self.state.sessions.park(Session(opts.session_id, r.seq_id, context, opts.cache_salt,  # type: ignore[arg-type]
                                           transcript=transcript, adapter_key=opts.adapter_key))
                r.seq_id = None  # the sequence now belongs to the session
            elif self.state.kept.enabled and reason != "cancelled":
                greedy_next = r.generated[0] if r.generated and len(context) == len(r.prompt)\
                    and eligible(r) and not r.drafted else None
                self.state.kept.keep(KeptSequence(r.seq_id, context, opts.cache_salt,  # type: ignore[arg-type]
                                             adapter_key=opts.adapter_key,
                                             transcript=r.prompt + tuple(r.generated),
                                             greedy_next=greedy_next))
                r.seq_id = None  # the slot keeps it until a request needs the slot
        self._release(r)
        r.sink.put(DoneEvent(
            finish_reason=reason,
            stats=self._stats(r),
            prompt_tokens=r.prompt,
            stop_sequence=stop,
            committed_tokens=committed,
            finish_key=r.cache.finish_key,
            cache_hit_kind=r.cache.hit_kind,
            cache_delta=CacheDelta(read=r.cache.read, created=r.cache.created),
            seed=r.params.seed,
        ))

    def _remember_calls(self, r: Request, stop: str | None) -> None:
        """Keep the turn's text for exact replay of its tool calls (decoding/tool_memory.py)."""
        spans = r.channels.call_spans if r.channels is not None else []
        if not spans or self.state.tool_memory is None:
            return
        text = b"".join(self.state.backend.piece(t, True) for t in r.generated).decode("utf-8", "replace")
        if stop is not None and stop in text:
            text = text[: text.rindex(stop)]  # a stop sequence is not part of the reply
        self.state.tool_memory.remember(spans, text)

    def _cut_to_exact(self, r: Request) -> bool:
        """Cut the sequence back to its canonical part; False if the model cannot.

        The reply's KV came from decode rows, which llama.cpp computes unlike a
        prompt chunk, so a later turn re-prefills it: that keeps a resumed
        conversation equal to a cold run of the same tokens. A sliding-window
        layer refuses a cut below its window (a reply longer than about
        n_ubatch tokens); then nothing of this sequence is kept. The finish row
        must sit on the resume grid (``resume_point``): when no row is cached
        there yet, the cut lands on the grid so the row can be saved.
        """
        keep = r.exact_len
        grid = resume_point(keep, self.state.backend.shape.swa_window)
        if grid < keep and self.state.warm is not None and self.state.warm.row_at(r, grid) is None:
            keep = grid
        if r.n_computed > keep:
            if not self.state.backend.truncate_sequence(r.seq_id, keep):  # type: ignore[arg-type]
                return False
            r.n_computed = r.exact_len = keep
        return True

    def emit_error(self, r: Request, exc: Exception) -> None:
        if r.done:
            return
        self._release(r)
        r.sink.put(ErrorEvent(exc))

    def _release(self, r: Request) -> None:
        if r.on_release is not None:
            r.on_release()
        r.status = Status.FINISHED
        r.pending_token = None
        for sampler in (r.sampler, r.greedy_sampler):
            if sampler is not None:
                sampler.close()
        r.sampler = r.greedy_sampler = None
        if r.seq_id is not None:
            self.state.backend.clear_sequence(r.seq_id)
            r.seq_id = None
        if r.timing.admitted_at is None:
            # Finished while still waiting: count it so `pending` stays right.
            self.state.status.finished_waiting += 1

    def _stats(self, r: Request) -> Stats:
        n = len(r.generated)
        t = r.timing
        submitted = r.spec.submitted_at
        ttft = None if t.first_token_at is None else t.first_token_at - submitted
        queued = (t.admitted_at or time.perf_counter()) - submitted
        return Stats(
            prompt_tokens=len(r.prompt),
            generated_tokens=n,
            queue_seconds=queued,
            prefill_seconds=t.prefill_seconds,
            decode_seconds=t.decode_seconds,
            time_to_first_token=ttft,
            # The first token comes out of the prefill pass; the rest cost one decode each.
            tokens_per_second=(n - 1) / t.decode_seconds if t.decode_seconds > 0 else 0.0,
            drafted_tokens=r.drafted,
            accepted_tokens=r.accepted,
            preemptions=r.timing.preemptions,
            preempted_seconds=r.timing.preempted_seconds,
        )

