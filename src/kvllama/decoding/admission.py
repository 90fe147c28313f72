"""Admission: waiting requests into free sequence ids, sticky sessions, cache restores.

Also slot compaction (see slots.py for why decoders sit on ids 0..d-1) and
cancellation sweeps: everything that decides which request holds which
sequence before a tick runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import replace

from kvllama.decoding.channels import Channels
from kvllama.decoding.finishing import Finisher
from kvllama.decoding.kept import KeptSequence
from kvllama.decoding.live_sources import MIN_LIVE_SHARE, LiveSource, Tenant, best_live_source
from kvllama.decoding.loop_state import LoopState
from kvllama.decoding.markers import MarkerRouter
from kvllama.decoding.media_steps import fit_warm_start
from kvllama.decoding.preemption import park, unpark, victim
from kvllama.decoding.request import AsyncioSink, CacheAccount, Request, Status
from kvllama.decoding.sessions import Session, SessionKey
from kvllama.decoding.slots import plan_moves
from kvllama.errors import (
    ContextLostError,
    ContextOverflowError,
    NoFreeSlotError,
    SessionConflictError,
    UnknownSessionError,
)
from kvllama.kvcache import SaveReason

log = logging.getLogger("kvllama.decoding")

# A kept sequence is taken over a free slot only if it spares at least this many prompt tokens.
MIN_KEPT_SHARE = 16
# A lone warm request gathers a burst only when it has more prompt tokens than this left to prefill.
BURST_MIN_PREFILL = 64


class Admission:
    def __init__(self, state: LoopState, finisher: Finisher) -> None:
        self.state = state
        self.finisher = finisher

    def sweep_cancelled(self) -> None:
        for r in [r for r in self.state.waiting if self._wants_cancel(r)]:
            self.state.waiting.remove(r)
            self.finisher.finish(r, "cancelled")
        for r in [r for r in self.state.running if self._wants_cancel(r)]:
            self.finisher.finish(r, "cancelled")
        self.state.running = [r for r in self.state.running if not r.done]

    @staticmethod
    def _wants_cancel(r: Request) -> bool:
        return r.cancel_requested or (isinstance(r.sink, AsyncioSink) and r.sink.gone)

    def admit(self) -> None:
        """FIFO into free sequence ids; after _compact, ids 0..used-1 are taken.

        A request that can restore a prefix another request is computing right
        now waits for it (keeping its place) while later requests go ahead.
        """
        n_seq_max = self.state.backend.shape.n_seq_max
        free = n_seq_max - len(self.state.running) - len(self.state.sessions.parked)
        for session in self.state.sessions.to_release(len(self.state.waiting), free):
            self.release_session(session, SaveReason.EVICT)
        deferred: list[Request] = []
        while self.state.waiting and len(self.state.running) + len(self.state.sessions.parked) < n_seq_max:
            r = self.state.waiting.popleft()
            if r.parked is None and self.state.warm is not None and self.state.warm.should_wait(
                    r, self.state.running):
                deferred.append(r)
                continue
            self._start(r)
        self.state.waiting.extendleft(reversed(deferred))
        self._preempt_for_head()

    def _preempt_for_head(self) -> None:
        """Every slot runs a request and the queue's head outranks one of them: park that one
        (decoding/preemption.py), and admit again."""
        state = self.state
        if not state.waiting or state.sessions.parked:
            return  # idle sessions give their slots up first (sessions.to_release)
        if len(state.running) < state.backend.shape.n_seq_max:
            return
        head = state.waiting[0]
        if head.parked is None and state.warm is not None and state.warm.should_wait(head, state.running):
            return  # it waits for a prefix being computed: a slot freed for it would go to another
        target = victim(state.running, head, state.backend)
        if target is None:
            return
        try:
            park(target, state.backend, state.running, state.waiting)
        except Exception as exc:  # its state could not be read: it runs on instead
            log.exception("parking request %s for a request of higher priority failed", target.id)
            self.finisher.fail(target, exc)
            state.running = [r for r in state.running if not r.done]
            return
        self.admit()

    def free_seq_id(self, spare: object = None) -> int:
        """The id the compact layout gives the next running request, else the lowest free one, else a
        kept sequence's (never ``spare``'s: a live source about to be copied).

        Never a count: right after sessions are released the ids in use have
        holes, and ``len(running) + len(parked)`` can name a held sequence.
        The next running request belongs right after the running ones
        (slots.py); when an idle sequence holds that id and another is free,
        the idle one moves there now, so compaction never meets a cycle with
        every id held. Kept sequences only wait for a use: the least recently used
        one gives way.
        """
        running = {r.seq_id for r in self.state.running}
        used = running | {*self.state.sessions.seq_ids(), *self.state.kept.seq_ids()}
        free = next((i for i in range(self.state.backend.shape.n_seq_max) if i not in used), None)
        if free is None:
            oldest = self.state.kept.take_oldest(spare=spare)
            assert oldest is not None, "admission only runs while a slot is free or held by a kept sequence"
            self.state.backend.clear_sequence(oldest.seq_id)
            free = oldest.seq_id
            used.discard(free)
        target = len(self.state.running)
        if free > target and target in used and running == set(range(target)):
            self._move_idle(target, free)
            return target
        return free

    def live_source(self, r: Request, restorable: int | None = None) -> LiveSource | None:
        """The live sequence that spares the most of the prompt, unless the cache restores as much.

        Another conversation's slot that shares only a system prompt must not
        win over this conversation's own row in the cache (its slot was given
        up while the turn's reply was read): copying it would restore less.
        Kept sequences come first among equals: one the prompt continues whole is
        taken over, with no copy at all. ``restorable``: the cache's answer, when
        the caller has it already.
        """
        if not (self.state.running or self.state.sessions.parked or self.state.kept):
            return None  # no look ahead into the cache when nothing could win
        if restorable is None:
            restorable = self.state.warm.restorable(r) if self.state.warm is not None else 0
        source = best_live_source(
            r.prompt, r.options.kv_tenant, len(r.prompt) - self.state.backend.shape.min_chunk_rows,
            max(MIN_KEPT_SHARE, restorable), self._live_candidates(r))
        if source is None or (isinstance(source.holder, KeptSequence) and source.whole):
            return source
        return source if source.shared >= max(MIN_LIVE_SHARE, restorable + 1) else None

    def _live_candidates(self, r: Request) -> Iterator[tuple[object, tuple[int, ...], Tenant]]:
        """Every sequence in the context with the canonical tokens it holds (decoding/live_sources.py)."""
        for x in sorted(self.state.kept.by_seq.values(), key=lambda x: -x.last_used):
            yield x, x.tokens, (x.cache_salt, x.adapter_key)
        for s in self.state.sessions.parked.values():
            yield s, s.tokens, (s.cache_salt, s.adapter_key)
        for q in self.state.running:
            if q is not r and q.seq_id is not None and q.exact_len > 0:
                yield q, (q.prompt + tuple(q.generated))[: q.exact_len], q.options.kv_tenant

    def _slot_besides(self, kept_seq: KeptSequence) -> bool:
        """Could a request get a slot without ending ``kept sequence``?"""
        held = len(self.state.running) + len(self.state.sessions.parked) + len(self.state.kept)
        return held < self.state.backend.shape.n_seq_max or len(self.state.kept) > 1

    def _copy_live(self, r: Request, source: LiveSource) -> None:
        """Start ``r`` from a copy of the source's shared cells; the source goes on as it was."""
        assert r.seq_id is not None
        src = source.holder.seq_id  # type: ignore[attr-defined]
        if src is None or src == r.seq_id:
            return
        self.state.backend.copy_sequence(src, r.seq_id)
        if not self.state.backend.truncate_sequence(r.seq_id, source.shared):
            self.state.backend.clear_sequence(r.seq_id)  # a restored source holds only its window
            return
        r.n_computed = r.exact_len = r.cache.read = source.shared
        r.cache.source = "live"
        whole = source.shared >= len(r.prompt) - self.state.backend.shape.min_chunk_rows
        r.cache.hit_kind = "exact" if whole else "partial"
        if self.state.warm is not None:
            try:
                self.state.warm.save_live_prefix(r)
            except Exception:  # costs only a row for later users, never the request
                log.exception("saving the prefix request %s copied failed", r.id)

    def _move_idle(self, src: int, dst: int) -> None:
        """Move a parked session or a kept sequence to the free id ``dst``."""
        self.state.backend.move_sequence(src, dst)
        kept_seq = self.state.kept.by_seq.pop(src, None)
        if kept_seq is not None:
            kept_seq.seq_id = dst
            self.state.kept.by_seq[dst] = kept_seq
            return
        session = next(x for x in self.state.sessions.parked.values() if x.seq_id == src)
        session.seq_id = dst

    def _start(self, r: Request) -> None:
        if r.parked is not None:
            self._unpark(r)
            return
        try:
            # Channels first: if they fail, a parked session stays untouched. (Samplers come
            # built with the request: api/preparation.py, off this thread.)
            self._open_channels(r)
            if r.options.continue_session:
                self._continue_prompt(r)
        except Exception as exc:
            self.finisher.fail(r, exc)
            return
        opts = r.options
        key: SessionKey | None = (opts.cache_salt, opts.session_id) if opts.session_id is not None else None
        session = self.state.sessions.take(key) if key is not None else None
        source = self.live_source(r) if session is None else None
        held: Session | KeptSequence | None = session
        if source is not None and isinstance(source.holder, KeptSequence) and (
                source.whole or not self._slot_besides(source.holder)):
            held, source = self.state.kept.by_seq.pop(source.holder.seq_id), None
        r.seq_id = held.seq_id if held else self.free_seq_id(spare=source.holder if source else None)
        r.timing.admitted_at = time.perf_counter()
        self.state.status.admitted += 1
        try:
            if held is None or not self._resume(r, held):
                if session is not None:
                    self._save_session(session, SaveReason.EVICT)  # the new turn diverged: keep the old one
                self.state.backend.clear_sequence(r.seq_id)
                if source is not None:
                    self._copy_live(r, source)
        except Exception as exc:
            self.finisher.fail(r, exc)
            return
        if self.state.warm is not None and r.n_computed == 0:
            self._restore(r)
        fit_warm_start(r, self.state.backend)
        if self.state.warm is not None:
            try:
                self.state.warm.plan_save_points(r)
            except Exception:  # costs only this prompt's rows, never the request
                log.exception("planning cache save points for request %s failed", r.id)
        self.state.status.last_cache_hit = {"kind": r.cache.hit_kind, "prefix_len": r.cache.read,
                                      "source": r.cache.source}
        self.state.status.count_reuse(r.cache.source, len(r.prompt), r.cache.read)
        r.status = Status.PREFILLING
        self.state.running.append(r)

    def _unpark(self, r: Request) -> None:
        """A preempted request back in a slot, from its own state blob (decoding/preemption.py)."""
        try:
            if not unpark(r, self.free_seq_id(), self.state.backend):
                raise ContextLostError("llama.cpp refused the state of a request parked for another "
                                       "of higher priority")
        except Exception as exc:
            self.finisher.fail(r, exc)
            return
        self.state.running.append(r)

    def _continue_prompt(self, r: Request) -> None:
        """``continue_session``: the prompt is what follows the session's transcript."""
        opts = r.options
        assert opts.session_id is not None
        transcript = self.state.sessions.transcripts.get((opts.cache_salt, opts.session_id))
        if transcript is None:
            raise UnknownSessionError(opts.session_id)
        expect = opts.expect_session_tokens
        if expect is not None and expect != len(transcript):
            raise SessionConflictError(
                f"session {opts.session_id!r} holds {len(transcript)} tokens, the request expects {expect}")
        prompt = transcript + r.prompt
        if len(prompt) >= self.state.backend.shape.n_ctx_seq:
            raise ContextOverflowError(len(prompt), self.state.backend.shape.n_ctx_seq)
        r.spec = replace(r.spec, prompt=prompt)

    def _restore(self, r: Request) -> None:
        """A cache restore that fails for any reason is a miss: the request runs cold."""
        assert self.state.warm is not None and r.seq_id is not None
        try:
            self.state.warm.restore(r)
        except Exception:
            log.exception("restoring request %s from the cache failed; computing it cold", r.id)
            self.state.backend.clear_sequence(r.seq_id)
            r.n_computed = r.exact_len = 0
            r.cache = CacheAccount()

    def _open_channels(self, r: Request) -> None:
        """Per-request event channels; with markers, a router."""
        markers, router = self.state.markers, None
        if markers is not None:
            p = r.params
            router = MarkerRouter(
                markers,
                thinking_enabled=p.thinking is not False,
                thinking_budget_tokens=p.thinking_budget_tokens,
            )
        r.channels = Channels(self.state.backend.piece, r.sink, r.params.stop, router, self.state.signing_key)

    def _resume(self, r: Request, held: Session | KeptSequence) -> bool:
        """Continue a parked session or a kept sequence in place; False when its sequence cannot be reused.

        The held tokens are canonical (see Finishing._cut_to_exact); the
        prompt's last ``min_chunk_rows`` tokens are left to prefill, as a cold run
        computes them. A live sequence keeps its cells where its prefill put
        them, so the cut may fall anywhere (no resume grid, unlike a restore).
        """
        tail = self.state.backend.shape.min_chunk_rows
        keep = min(self.state.sessions.reusable_prefix(held.tokens, r.prompt), len(r.prompt) - tail)
        same_kv = held.cache_salt == r.options.cache_salt and held.adapter_key == r.options.adapter_key
        if keep <= 0 or not same_kv:
            return False
        if keep < len(held.tokens) and not self.state.backend.truncate_sequence(held.seq_id, keep):
            return False  # e.g. sliding-window layers: the cache takes over
        r.n_computed = r.exact_len = r.cache.read = keep
        r.cache.source = "session" if isinstance(held, Session) else "kept"
        if isinstance(held, Session):
            r.cache.hit_kind = "sticky"
        else:
            whole = keep == len(r.prompt) - tail
            r.cache.hit_kind = "exact" if whole else "partial"
        return True

    def release_session(self, session: Session, reason: SaveReason) -> None:
        """Give a parked session's slot back, saving its KV to the cache first."""
        self.state.sessions.parked.pop(session.key, None)
        self._save_session(session, reason)
        self.state.backend.clear_sequence(session.seq_id)

    def _save_session(self, session: Session, reason: SaveReason) -> None:
        if self.state.warm is None:
            return
        try:
            self.state.warm.save_tokens(session.seq_id, session.tokens, session.cache_salt, reason,
                                  session.adapter_key)
        except Exception:  # a failed save loses a warm start, never the loop
            log.exception("saving session %s to the cache failed", session.id)

    def compact(self) -> None:
        """Decoders on ids [0, d), prompts after them (see slots.py for why)."""
        decoders = [r.seq_id for r in self.state.running if r.pending_token is not None]
        prompts = [r.seq_id for r in self.state.running if r.pending_token is None]
        while (moves := plan_moves(decoders, prompts, self.state.backend.shape.n_seq_max,
                                   self.state.sessions.seq_ids() + self.state.kept.seq_ids())) is None:
            # A cycle with every id held: a finished request kept in its slot gives way, or the
            # layout waits (prompt chunks then run as a pass of their own) until an id frees.
            oldest = self.state.kept.take_oldest()
            if oldest is None:
                return
            self.state.backend.clear_sequence(oldest.seq_id)
        if not moves:
            return
        by_id: dict[int, Request | Session | KeptSequence] = {r.seq_id: r for r in self.state.running}  # type: ignore[misc]
        by_id.update({s.seq_id: s for s in self.state.sessions.parked.values()})
        by_id.update(self.state.kept.by_seq)
        for src, dst in moves:
            self.state.backend.move_sequence(src, dst)
            holder = by_id.pop(src)
            holder.seq_id = dst
            by_id[dst] = holder
        self.state.kept.by_seq = {x.seq_id: x for x in by_id.values() if isinstance(x, KeptSequence)}

    def worth_gathering(self, r: Request) -> bool:
        """Is ``r``'s prefill long enough that others of its burst should share its passes?

        A warm request (a conversation's next turn in its own session, a repeat, a
        prompt a live sequence or the cache holds all but a few tokens of) prefills
        in a pass or two of milliseconds: the burst window would be most of its time
        to first token, and a burst of such requests gains little from one pass.
        """
        opts = r.options
        if opts.session_id is not None and (opts.cache_salt, opts.session_id) in self.state.sessions.parked:
            return False
        restorable = self.state.warm.restorable(r) if self.state.warm is not None else 0
        source = self.live_source(r, restorable)
        reused = max(restorable, source.shared if source is not None else 0)
        return reused == 0 or len(r.prompt) - reused > BURST_MIN_PREFILL

    def fork_session(self, session_id: str, new_id: str, cache_salt: str | None) -> None:
        """Loop thread: a parked session's live sequence copied into a new parked session."""
        src = self.state.sessions.parked.get((cache_salt, session_id))
        if src is None:
            raise UnknownSessionError(session_id)
        if (cache_salt, new_id) in self.state.sessions.parked:
            raise SessionConflictError(f"session {new_id!r} exists already")
        if len(self.state.running) + len(self.state.sessions.parked) >= self.state.backend.shape.n_seq_max:
            raise NoFreeSlotError("no free sequence slot to fork the session into; retry later")
        dst = self.free_seq_id()
        self.state.backend.copy_sequence(src.seq_id, dst)
        src.last_used = time.monotonic()
        self.state.sessions.park(Session(new_id, dst, src.tokens, cache_salt, transcript=src.transcript,
                                         adapter_key=src.adapter_key))

    def end_session(self, session_id: str, cache_salt: str | None) -> bool:
        """Loop thread: release a parked session (saved first); False if none is parked by that id."""
        session = self.state.sessions.parked.get((cache_salt, session_id))
        if session is None:
            return False
        self.release_session(session, SaveReason.EVICT)
        return True
