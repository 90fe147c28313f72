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

from kvllama.engine.channels import Channels
from kvllama.engine.live_sources import MIN_LIVE_SHARE, LiveSource, Tenant, best_live_source
from kvllama.engine.loop_state import LoopState
from kvllama.engine.markers import MarkerRouter
from kvllama.engine.request import AsyncioSink, CacheAccount, Request, Status
from kvllama.engine.residents import Resident
from kvllama.engine.sessions import Session, SessionKey
from kvllama.engine.slots import plan_moves
from kvllama.errors import ContextOverflowError, SessionConflictError, UnknownSessionError
from kvllama.kvcache import SaveReason

log = logging.getLogger("kvllama.engine")

# A resident is taken over a free slot only if it spares at least this many prompt tokens.
MIN_RESIDENT_SHARE = 16


class Admission(LoopState):
    def _sweep_cancelled(self) -> None:
        for r in [r for r in self._waiting if self._wants_cancel(r)]:
            self._waiting.remove(r)
            self._finish(r, "cancelled")
        for r in [r for r in self._running if self._wants_cancel(r)]:
            self._finish(r, "cancelled")
        self._running = [r for r in self._running if not r.done]

    @staticmethod
    def _wants_cancel(r: Request) -> bool:
        return r.cancel_requested or (isinstance(r.sink, AsyncioSink) and r.sink.gone)

    def _admit(self) -> None:
        """FIFO into free sequence ids; after _compact, ids 0..used-1 are taken.

        A request that can restore a prefix another request is computing right
        now waits for it (keeping its place) while later requests go ahead.
        """
        n_seq_max = self.backend.shape.n_seq_max
        free = n_seq_max - len(self._running) - len(self.sessions.parked)
        for session in self.sessions.to_release(len(self._waiting), free):
            self._release_session(session, SaveReason.EVICT)
        deferred: list[Request] = []
        while self._waiting and len(self._running) + len(self.sessions.parked) < n_seq_max:
            r = self._waiting.popleft()
            if self.warm is not None and self.warm.should_wait(r, self._running):
                deferred.append(r)
                continue
            self._start(r)
        self._waiting.extendleft(reversed(deferred))

    def _free_seq_id(self, spare: object = None) -> int:
        """The id the compact layout gives the next running request, else the lowest free one, else a
        resident's (never ``spare``'s: a live source about to be copied).

        Never a count: right after sessions are released the ids in use have
        holes, and ``len(running) + len(parked)`` can name a held sequence.
        The next running request belongs right after the running ones
        (slots.py); when an idle sequence holds that id and another is free,
        the idle one moves there now, so compaction never meets a cycle with
        every id held. Residents only wait for a use: the least recently used
        one gives way.
        """
        running = {r.seq_id for r in self._running}
        used = running | {*self.sessions.seq_ids(), *self.residents.seq_ids()}
        free = next((i for i in range(self.backend.shape.n_seq_max) if i not in used), None)
        if free is None:
            oldest = self.residents.take_oldest(spare=spare)
            assert oldest is not None, "admission only runs while a slot is free or held by a resident"
            self.backend.clear_sequence(oldest.seq_id)
            free = oldest.seq_id
            used.discard(free)
        target = len(self._running)
        if free > target and target in used and running == set(range(target)):
            self._move_idle(target, free)
            return target
        return free

    def _live_source(self, r: Request, restorable: int | None = None) -> LiveSource | None:
        """The live sequence that spares the most of the prompt, unless the cache restores as much.

        Another conversation's slot that shares only a system prompt must not
        win over this conversation's own row in the cache (its slot was given
        up while the turn's reply was read): copying it would restore less.
        Kept slots come first among equals: one the prompt continues whole is
        taken over, with no copy at all. ``restorable``: the cache's answer, when
        the caller has it already.
        """
        if not (self._running or self.sessions.parked or self.residents):
            return None  # no look ahead into the cache when nothing could win
        if restorable is None:
            restorable = self.warm.restorable(r) if self.warm is not None else 0
        source = best_live_source(
            r.prompt, r.options.kv_tenant, len(r.prompt) - self.backend.shape.min_chunk_rows,
            max(MIN_RESIDENT_SHARE, restorable), self._live_candidates(r))
        if source is None or (isinstance(source.holder, Resident) and source.whole):
            return source
        return source if source.shared >= max(MIN_LIVE_SHARE, restorable + 1) else None

    def _live_candidates(self, r: Request) -> Iterator[tuple[object, tuple[int, ...], Tenant]]:
        """Every sequence in the context with the canonical tokens it holds (engine/live_sources.py)."""
        for x in sorted(self.residents.by_seq.values(), key=lambda x: -x.last_used):
            yield x, x.tokens, (x.cache_salt, x.adapter_key)
        for s in self.sessions.parked.values():
            yield s, s.tokens, (s.cache_salt, s.adapter_key)
        for q in self._running:
            if q is not r and q.seq_id is not None and q.exact_len > 0:
                yield q, (q.prompt + tuple(q.generated))[: q.exact_len], q.options.kv_tenant

    def _slot_besides(self, resident: Resident) -> bool:
        """Could a request get a slot without ending ``resident``?"""
        held = len(self._running) + len(self.sessions.parked) + len(self.residents)
        return held < self.backend.shape.n_seq_max or len(self.residents) > 1

    def _copy_live(self, r: Request, source: LiveSource) -> None:
        """Start ``r`` from a copy of the source's shared cells; the source goes on as it was."""
        assert r.seq_id is not None
        src = source.holder.seq_id  # type: ignore[attr-defined]
        if src is None or src == r.seq_id:
            return
        self.backend.copy_sequence(src, r.seq_id)
        if not self.backend.truncate_sequence(r.seq_id, source.shared):
            self.backend.clear_sequence(r.seq_id)  # a restored source holds only its window
            return
        r.n_computed = r.exact_len = r.cache.read = source.shared
        r.cache.source = "live"
        whole = source.shared >= len(r.prompt) - self.backend.shape.min_chunk_rows
        r.cache.hit_kind = "exact" if whole else "partial"
        if self.warm is not None:
            try:
                self.warm.save_live_prefix(r)
            except Exception:  # costs only a row for later users, never the request
                log.exception("saving the prefix request %s copied failed", r.id)

    def _move_idle(self, src: int, dst: int) -> None:
        """Move a parked session or a resident to the free id ``dst``."""
        self.backend.move_sequence(src, dst)
        resident = self.residents.by_seq.pop(src, None)
        if resident is not None:
            resident.seq_id = dst
            self.residents.by_seq[dst] = resident
            return
        session = next(x for x in self.sessions.parked.values() if x.seq_id == src)
        session.seq_id = dst

    def _start(self, r: Request) -> None:
        try:
            # Samplers and channels first: if they fail, a parked session stays untouched.
            if r.sampler is None:
                r.sampler = self.backend.new_sampler(r.params)
            self._open_channels(r)
            if r.options.continue_session:
                self._continue_prompt(r)
        except Exception as exc:
            self._fail(r, exc)
            return
        opts = r.options
        key: SessionKey | None = (opts.cache_salt, opts.session_id) if opts.session_id is not None else None
        session = self.sessions.take(key) if key is not None else None
        source = self._live_source(r) if session is None else None
        held: Session | Resident | None = session
        if source is not None and isinstance(source.holder, Resident) and (
                source.whole or not self._slot_besides(source.holder)):
            held, source = self.residents.by_seq.pop(source.holder.seq_id), None
        r.seq_id = held.seq_id if held else self._free_seq_id(spare=source.holder if source else None)
        r.timing.admitted_at = time.perf_counter()
        self.status.admitted += 1
        try:
            if held is None or not self._resume(r, held):
                if session is not None:
                    self._save_session(session, SaveReason.EVICT)  # the new turn diverged: keep the old one
                self.backend.clear_sequence(r.seq_id)
                if source is not None:
                    self._copy_live(r, source)
        except Exception as exc:
            self._fail(r, exc)
            return
        if self.warm is not None:
            if r.n_computed == 0:
                self._restore(r)
            try:
                self.warm.plan_save_points(r)
            except Exception:  # costs only this prompt's rows, never the request
                log.exception("planning cache save points for request %s failed", r.id)
        self.status.last_cache_hit = {"kind": r.cache.hit_kind, "prefix_len": r.cache.read,
                                      "source": r.cache.source}
        self.status.count_reuse(r.cache.source, len(r.prompt), r.cache.read)
        r.status = Status.PREFILLING
        self._running.append(r)

    def _continue_prompt(self, r: Request) -> None:
        """``continue_session``: the prompt is what follows the session's transcript."""
        opts = r.options
        assert opts.session_id is not None
        transcript = self.sessions.transcripts.get((opts.cache_salt, opts.session_id))
        if transcript is None:
            raise UnknownSessionError(opts.session_id)
        expect = opts.expect_session_tokens
        if expect is not None and expect != len(transcript):
            raise SessionConflictError(
                f"session {opts.session_id!r} holds {len(transcript)} tokens, the request expects {expect}")
        prompt = transcript + r.prompt
        if len(prompt) >= self.backend.shape.n_ctx_seq:
            raise ContextOverflowError(len(prompt), self.backend.shape.n_ctx_seq)
        r.spec = replace(r.spec, prompt=prompt)

    def _restore(self, r: Request) -> None:
        """A cache restore that fails for any reason is a miss: the request runs cold."""
        assert self.warm is not None and r.seq_id is not None
        try:
            self.warm.restore(r)
        except Exception:
            log.exception("restoring request %s from the cache failed; computing it cold", r.id)
            self.backend.clear_sequence(r.seq_id)
            r.n_computed = r.exact_len = 0
            r.cache = CacheAccount()

    def _open_channels(self, r: Request) -> None:
        """Per-request event channels; with markers, a router and (for tool calls) a greedy chain."""
        markers, router = self.markers, None
        if markers is not None:
            p = r.params
            router = MarkerRouter(
                markers,
                thinking_enabled=p.thinking is not False,
                thinking_budget_tokens=p.thinking_budget_tokens,
            )
            if markers.has_tool_calls and not p.greedy and r.greedy_sampler is None:
                r.greedy_sampler = self.backend.new_sampler(replace(p, temperature=0.0))
        r.channels = Channels(self.backend.piece, r.sink, r.params.stop, router, self.signing_key)

    def _resume(self, r: Request, held: Session | Resident) -> bool:
        """Continue a parked session or a resident in place; False when its sequence cannot be reused.

        The held tokens are canonical (see Finishing._cut_to_exact); the
        prompt's last ``min_chunk_rows`` tokens are left to prefill, as a cold run
        computes them. A live sequence keeps its cells where its prefill put
        them, so the cut may fall anywhere (no resume grid, unlike a restore).
        """
        tail = self.backend.shape.min_chunk_rows
        keep = min(self.sessions.reusable_prefix(held.tokens, r.prompt), len(r.prompt) - tail)
        same_kv = held.cache_salt == r.options.cache_salt and held.adapter_key == r.options.adapter_key
        if keep <= 0 or not same_kv:
            return False
        if keep < len(held.tokens) and not self.backend.truncate_sequence(held.seq_id, keep):
            return False  # e.g. sliding-window layers: the cache takes over
        r.n_computed = r.exact_len = r.cache.read = keep
        r.cache.source = "session" if isinstance(held, Session) else "slot"
        if isinstance(held, Session):
            r.cache.hit_kind = "sticky"
        else:
            whole = keep == len(r.prompt) - tail
            r.cache.hit_kind = "exact" if whole else "partial"
        return True

    def _release_session(self, session: Session, reason: SaveReason) -> None:
        """Give a parked session's slot back, saving its KV to the cache first."""
        self.sessions.parked.pop(session.key, None)
        self._save_session(session, reason)
        self.backend.clear_sequence(session.seq_id)

    def _save_session(self, session: Session, reason: SaveReason) -> None:
        if self.warm is None:
            return
        try:
            self.warm.save_tokens(session.seq_id, session.tokens, session.cache_salt, reason,
                                  session.adapter_key)
        except Exception:  # a failed save loses a warm start, never the loop
            log.exception("saving session %s to the cache failed", session.id)

    def _compact(self) -> None:
        """Decoders on ids [0, d), prompts after them (see slots.py for why)."""
        decoders = [r.seq_id for r in self._running if r.pending_token is not None]
        prompts = [r.seq_id for r in self._running if r.pending_token is None]
        while (moves := plan_moves(decoders, prompts, self.backend.shape.n_seq_max,
                                   self.sessions.seq_ids() + self.residents.seq_ids())) is None:
            # A cycle with every id held: a finished request kept in its slot gives way, or the
            # layout waits (prompt chunks then run as a pass of their own) until an id frees.
            oldest = self.residents.take_oldest()
            if oldest is None:
                return
            self.backend.clear_sequence(oldest.seq_id)
        if not moves:
            return
        by_id: dict[int, Request | Session | Resident] = {r.seq_id: r for r in self._running}  # type: ignore[misc]
        by_id.update({s.seq_id: s for s in self.sessions.parked.values()})
        by_id.update(self.residents.by_seq)
        for src, dst in moves:
            self.backend.move_sequence(src, dst)
            holder = by_id.pop(src)
            holder.seq_id = dst
            by_id[dst] = holder
        self.residents.by_seq = {x.seq_id: x for x in by_id.values() if isinstance(x, Resident)}

