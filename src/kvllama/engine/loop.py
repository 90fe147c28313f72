"""The per-model decode loop: one thread that owns the backend's context.

Everything else talks to it through a queue (submit, cancel, calls such as
``embed``), so the loop never waits on a lock held by an HTTP handler, and
llama.cpp's context is only ever touched from this thread. Each tick is one
``decode`` call whose rows come from :func:`kvllama.engine.scheduler.plan`:
decode rows of generating requests co-batched with prefill chunks of new ones.

Observability (:class:`LoopStatus`) is plain attributes written by this thread
and read lock-free by anyone.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

from kvllama.backend.protocol import Backend, Row
from kvllama.engine.channels import Channels
from kvllama.engine.markers import MarkerRouter, MarkerStrings
from kvllama.engine.request import AsyncioSink, Request, Status
from kvllama.engine.scheduler import SeqProgress, Slice, decode_groups, plan
from kvllama.engine.sessions import Session, SessionKey, SessionPolicy, SessionTable
from kvllama.engine.slots import plan_moves
from kvllama.engine.warm import WarmStart
from kvllama.errors import (
    ContextLostError,
    DecodeAbortedError,
    DecodeError,
    DecodeTimeoutError,
    EngineClosedError,
    InternalEngineError,
    KvllamaError,
)
from kvllama.events import (
    CacheDelta,
    DoneEvent,
    ErrorEvent,
    FinishReason,
    Stats,
    TokenEvent,
)

log = logging.getLogger("kvllama.engine")


@dataclass
class LoopStatus:
    """Written only by the loop thread; safe to read from any thread."""

    phase: str = "idle"  # idle | prefilling | generating
    in_flight: int = 0
    waiting: int = 0
    last_cache_hit: dict[str, Any] = field(
        default_factory=lambda: {"kind": "cold", "prefix_len": 0}
    )
    ticks: int = 0
    admitted: int = 0
    finished_waiting: int = 0
    completed: int = 0
    # False while the context is being rebuilt after a fatal llama.cpp error.
    healthy: bool = True
    # Faults the loop survived: requests it ended with an error it did not expect, rebuilds.
    faults: int = 0
    context_rebuilds: int = 0


_STOP = object()


def _typed(exc: Exception) -> Exception:
    """What a request sees of a failure: kvllama's typed errors as they are, bugs as InternalEngineError."""
    if isinstance(exc, KvllamaError):
        return exc
    return InternalEngineError(
        f"internal error in the decode loop ({type(exc).__name__}: {exc}); see the kvllama.engine log"
    )
PREFILL_ALIGN = 64


class ModelLoop:
    def __init__(
        self,
        backend: Backend,
        *,
        chunk_size: int,
        name: str = "model",
        warm: WarmStart | None = None,
        session_policy: SessionPolicy | None = None,
        markers: MarkerStrings | None = None,
        signing_key: bytes | None = None,
    ) -> None:
        self.backend = backend
        self.warm = warm
        # Thinking / tool-call markers of this model, and the key that signs thinking.
        self.markers = markers
        self.signing_key = signing_key
        self.sessions = SessionTable(backend.shape.n_seq_max, session_policy or SessionPolicy())
        self.chunk_size = min(chunk_size, backend.shape.n_batch, backend.shape.n_ubatch)
        # Prompt chunks end on multiples of this (see scheduler.py for why).
        self.align = min(PREFILL_ALIGN, self.chunk_size)
        self.status = LoopStatus()
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._waiting: deque[Request] = deque()
        self._running: list[Request] = []
        # Requests with a prompt chunk in the forward pass running now (read by cancel()).
        self._prefilling_now: frozenset[Request] = frozenset()
        self._submitted = 0
        self._submit_lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"kvllama-loop-{name}", daemon=True)
        self._thread.start()

    # --- any thread ---------------------------------------------------------

    def submit(self, request: Request) -> None:
        with self._submit_lock:
            if self._closed:
                raise EngineClosedError("this model has been unloaded")
            self._submitted += 1
            self._inbox.put(request)

    def cancel(self, request: Request) -> None:
        """Idempotent; takes effect before the next tick.

        A prompt chunk of this request that is being computed right now is
        aborted (a long prefill pass should not finish for nobody); the other
        requests of that pass are retried on their own.
        """
        request.cancel_requested = True
        if request in self._prefilling_now:
            self.backend.abort()
        self._inbox.put(None)  # wake the loop if it is idle

    def call(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run ``fn`` on the loop thread between two ticks (it may use the context)."""
        future: Future[Any] = Future()
        with self._submit_lock:
            if self._closed:
                raise EngineClosedError("this model has been unloaded")
            self._inbox.put((fn, future))
        return future

    @property
    def healthy(self) -> bool:
        """The loop thread is serving and its context is not being rebuilt."""
        return self.status.healthy and self._thread.is_alive() and not self._closed

    @property
    def pending(self) -> int:
        """Requests submitted but not yet holding a sequence slot."""
        st = self.status
        return max(0, self._submitted - st.admitted - st.finished_waiting)

    def close(self, timeout: float | None = None) -> None:
        """Cancel everything, stop the thread, then (on this thread) nothing touches the backend."""
        with self._submit_lock:
            if self._closed:
                return
            self._closed = True
            self._inbox.put(_STOP)
        self._thread.join(timeout)

    # --- loop thread --------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                if not self._drain_inbox(block=not (self._running or self._waiting)):
                    break
                try:
                    self._step()
                except Exception as exc:
                    # A bug, not a request's fault: end the requests in flight with an
                    # error (never leave one unanswered) and keep serving.
                    log.exception("decode loop step failed; ending the requests in flight")
                    self.status.faults += 1
                    self._recover(exc)
                self._publish_status()
        except BaseException:  # pragma: no cover - interpreter shutdown or a bug in recovery
            log.exception("decode loop crashed")
            with self._submit_lock:
                self._closed = True
            self._drain_inbox(block=False)
            err = RuntimeError("the decode loop crashed; see the kvllama.engine log")
            for r in [*self._running, *self._waiting]:
                self._emit_error(r, err)
        finally:
            for r in [*self._running, *self._waiting]:
                self._finish(r, "cancelled")
            for session in list(self.sessions.parked.values()):
                self._release_session(session, "shutdown")
            self.status.phase = "idle"

    def _step(self) -> None:
        self._sweep_cancelled()
        self._compact()
        self._admit()
        if self._running:
            self._tick()
            self._compact()
        elif self._waiting:
            time.sleep(0.002)  # only deferred requests: their prefix row is being published

    def _recover(self, exc: Exception) -> None:
        """After an unexpected failure: fail the running requests, then check the context."""
        if isinstance(exc, DecodeError) and exc.status < -1:
            self._rebuild_context()
            return
        err = _typed(exc)
        for r in list(self._running):
            self._fail(r, err)
        self._running = []

    def _fail(self, r: Request, exc: Exception) -> None:
        """End one request with an error; anything that goes wrong doing so is only logged."""
        try:
            self._emit_error(r, _typed(exc))
        except Exception:  # pragma: no cover - defensive
            log.exception("could not end request %s cleanly", r.id)
            r.status = Status.FINISHED

    def _rebuild_context(self) -> None:
        """llama.cpp reported a fatal error: save what can be saved, then a fresh context.

        Parked sessions are saved to the cache first (their state may still be
        readable); the cache itself lives outside the context and is kept.
        """
        st = self.status
        st.healthy = False
        log.error("llama.cpp context failed; rebuilding it (the KV cache is kept)")
        lost = ContextLostError("the model's context failed and was rebuilt; retry the request")
        for r in list(self._running):
            self._fail(r, lost)
        self._running = []
        for session in list(self.sessions.parked.values()):
            try:
                self._release_session(session, "evict")
            except Exception:
                log.exception("could not save session %s before the rebuild", session.id)
                self.sessions.parked.pop(session.key, None)
        self.backend.rebuild()
        st.context_rebuilds += 1
        st.healthy = True

    def _drain_inbox(self, *, block: bool) -> bool:
        """Returns False when asked to stop."""
        while True:
            try:
                item = self._inbox.get(block=block)
            except queue.Empty:
                return True
            block = False
            if item is _STOP:
                return False
            if isinstance(item, Request):
                self._waiting.append(item)
            elif isinstance(item, tuple):
                fn, future = item
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as exc:
                        future.set_exception(exc)

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
            self._release_session(session, "evict")
        deferred: list[Request] = []
        while self._waiting and len(self._running) + len(self.sessions.parked) < n_seq_max:
            r = self._waiting.popleft()
            if self.warm is not None and self.warm.should_wait(r, self._running):
                deferred.append(r)
                continue
            self._start(r)
        self._waiting.extendleft(reversed(deferred))

    def _free_seq_id(self) -> int:
        """The lowest id no running request and no parked session holds.

        Never a count: right after sessions are released the ids in use have
        holes, and ``len(running) + len(parked)`` can name a held sequence.
        """
        used = {r.seq_id for r in self._running} | set(self.sessions.seq_ids())
        return next(i for i in range(self.backend.shape.n_seq_max) if i not in used)

    def _start(self, r: Request) -> None:
        try:
            # Samplers and channels first: if they fail, a parked session stays untouched.
            if r.sampler is None:
                r.sampler = self.backend.new_sampler(r.params)
            self._open_channels(r)
        except Exception as exc:
            self._fail(r, exc)
            return
        key: SessionKey | None = (r.cache_salt, r.session_id) if r.session_id is not None else None
        session = self.sessions.take(key) if key is not None else None
        r.seq_id = session.seq_id if session else self._free_seq_id()
        r.admitted_at = time.perf_counter()
        self.status.admitted += 1
        try:
            if session is None or not self._resume(r, session):
                if session is not None:
                    self._save_session(session, "evict")  # the new turn diverged: keep the old one
                self.backend.clear_sequence(r.seq_id)
        except Exception as exc:
            self._fail(r, exc)
            return
        if self.warm is not None:
            if r.n_computed == 0:
                self._restore(r)
            point = self.warm.cold_save_point(len(r.prompt))
            r.cold_point = point if point is not None and point > r.n_computed else None
        self.status.last_cache_hit = {"kind": r.cache_hit_kind, "prefix_len": r.cache_read}
        r.status = Status.PREFILLING
        self._running.append(r)

    def _restore(self, r: Request) -> None:
        """A cache restore that fails for any reason is a miss: the request runs cold."""
        assert self.warm is not None and r.seq_id is not None
        try:
            self.warm.restore(r)
        except Exception:
            log.exception("restoring request %s from the cache failed; computing it cold", r.id)
            self.backend.clear_sequence(r.seq_id)
            r.n_computed = r.cache_read = 0
            r.cache_hit_kind = "cold"

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

    def _resume(self, r: Request, session: Session) -> bool:
        """Continue a parked session in place; False when its sequence cannot be reused."""
        keep = self.sessions.reusable_prefix(session.tokens, r.prompt)
        if keep == 0 or session.cache_salt != r.cache_salt:
            return False
        if keep < len(session.tokens) and not self.backend.truncate_sequence(session.seq_id, keep):
            return False  # e.g. sliding-window layers: the cache takes over
        r.n_computed = r.cache_read = keep
        r.cache_hit_kind = "sticky"
        return True

    def _release_session(self, session: Session, reason: str) -> None:
        """Give a parked session's slot back, saving its KV to the cache first."""
        self.sessions.parked.pop(session.key, None)
        self._save_session(session, reason)
        self.backend.clear_sequence(session.seq_id)

    def _save_session(self, session: Session, reason: str) -> None:
        if self.warm is None:
            return
        try:
            self.warm.save_tokens(session.seq_id, session.tokens, session.cache_salt, reason)
        except Exception:  # a failed save loses a warm start, never the loop
            log.exception("saving session %s to the cache failed", session.id)

    def end_session(self, session_id: str, cache_salt: str | None = None) -> bool:
        """Release a parked session (from any thread); False if it is unknown or running."""
        def end() -> bool:
            session = self.sessions.parked.get((cache_salt, session_id))
            if session is None:
                return False
            self._release_session(session, "evict")
            return True

        return bool(self.call(end).result())

    def _compact(self) -> None:
        """Decoders on ids [0, d), prompts after them (see slots.py for why)."""
        decoders = [r.seq_id for r in self._running if r.pending_token is not None]
        prompts = [r.seq_id for r in self._running if r.pending_token is None]
        parked = self.sessions.seq_ids()
        moves = plan_moves(decoders, prompts, self.backend.shape.n_seq_max, parked)
        if not moves:
            return
        by_id: dict[int, Request | Session] = {r.seq_id: r for r in self._running}  # type: ignore[misc]
        by_id.update({s.seq_id: s for s in self.sessions.parked.values()})
        for src, dst in moves:
            self.backend.move_sequence(src, dst)
            holder = by_id.pop(src)
            holder.seq_id = dst
            by_id[dst] = holder

    def _tick(self) -> None:
        views = [
            SeqProgress(i, r.seq_id, len(r.prompt), r.n_computed, r.pending_token is not None,  # type: ignore[arg-type]
                        r.cold_point)
            for i, r in enumerate(self._running)
        ]
        tick = plan(views, self.backend.shape.n_batch, self.chunk_size, self.align)
        if tick.slices:
            self.status.phase = "prefilling" if tick.prefilling else "generating"
            for group in decode_groups(tick.slices, self.backend.shape.max_decode_rows):
                if not self._forward(group) and len(group) > 1:
                    # Isolate the failure: each request alone, so one bad request
                    # ends with its own error and the others go on.
                    for s in group:
                        if not self._running[s.key].cancel_requested:
                            self._forward((s,))
        self._running = [r for r in self._running if not r.done]

    def _forward(self, slices: tuple[Slice, ...]) -> bool:
        """Decode these slices in one batch, then sample; False if the decode failed."""
        batch = [self._running[s.key] for s in slices]
        rows, samples = self._rows(slices)
        started = time.perf_counter()
        self._prefilling_now = frozenset(r for s, r in zip(slices, batch, strict=True) if not s.decoding)
        try:
            self.backend.decode(rows)
        except KvllamaError as exc:
            # An abort asked for by cancel() costs the others of the pass nothing: they
            # made no progress and are planned again next tick. A timeout is an error.
            cancelled = isinstance(exc, DecodeAbortedError) and not isinstance(exc, DecodeTimeoutError)
            if isinstance(exc, DecodeError) and exc.status < -1:
                raise  # llama.cpp's own "fatal error": the context is suspect (see _recover)
            for s, r in zip(slices, batch, strict=True):
                # Drop whatever part of the batch llama.cpp kept, so a retry starts clean.
                self.backend.clear_sequence(r.seq_id, s.start)  # type: ignore[arg-type]
                if s.decoding:
                    r.pending_token = rows[self._row_of(slices, s)][0]
                if len(slices) == 1 and not cancelled:
                    self._emit_error(r, exc)
            return cancelled
        finally:
            self._prefilling_now = frozenset()
        elapsed = time.perf_counter() - started
        self.status.ticks += 1
        for s, r in zip(slices, batch, strict=True):
            r.n_computed += s.count
            if s.decoding:
                r.decode_seconds += elapsed
            else:
                r.prefill_seconds += elapsed
                if self.warm is not None:
                    self.warm.after_prefill_step(r)
        for row_index, r in samples:
            try:
                self._sample(r, row_index)
            except Exception as exc:  # this request's sampler or channels: end it alone
                if not isinstance(exc, KvllamaError):
                    log.exception("sampling request %s failed", r.id)
                    self.status.faults += 1
                self._fail(r, exc)
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

    def _rows(self, slices: tuple[Slice, ...]) -> tuple[list[Row], list[tuple[int, Request]]]:
        rows: list[Row] = []
        samples: list[tuple[int, Request]] = []
        for s in slices:
            r = self._running[s.key]
            seq = r.seq_id
            assert seq is not None
            if s.decoding:
                rows.append((r.pending_token, s.start, seq, True))  # type: ignore[arg-type]
                r.pending_token = None
            else:
                last = s.start + s.count - 1
                prompt = r.prompt
                rows.extend((prompt[p], p, seq, s.sample and p == last)
                            for p in range(s.start, s.start + s.count))
            if s.sample:
                samples.append((len(rows) - 1, r))
        return rows, samples

    def _sample(self, r: Request, row_index: int) -> None:
        if r.params.max_tokens == 0:
            self._finish(r, "length")
            return
        channels = r.channels
        greedy = r.greedy_sampler is not None and channels is not None and channels.greedy_now
        token = self.backend.sample(r.greedy_sampler if greedy else r.sampler, row_index)
        if r.greedy_sampler is not None:
            # Both chains see every token, so grammar and penalty state stay in step.
            (r.sampler if greedy else r.greedy_sampler).accept(token)
        now = time.perf_counter()
        if r.first_token_at is None:
            r.first_token_at = now
            r.status = Status.DECODING
        if r.params.stop_at_eog and self.backend.is_eog(token):
            self._finish(r, "stop")
            return
        r.generated.append(token)
        r.sink.put(TokenEvent(token))
        stop = channels.push(token) if channels is not None else None
        if stop is not None:
            self._finish(r, "stop", stop)
            return
        if len(r.generated) >= r.params.max_tokens:
            self._finish(r, "length")
        elif r.n_computed + 1 >= self.backend.shape.n_ctx_seq:
            self._finish(r, "length")  # the sequence's context is full
        else:
            r.pending_token = token
            if self.warm is not None:
                self.warm.after_token(r)

    def _finish(self, r: Request, reason: FinishReason, stop: str | None = None) -> None:
        if r.done:
            return
        if stop is None and r.channels is not None:
            stop = r.channels.finish()
            reason = "stop" if stop is not None else reason
        if self.warm is not None and r.seq_id is not None and reason != "cancelled":
            try:
                self.warm.at_finish(r)
            except Exception:  # the reply stands; only its finish row is lost
                log.exception("saving request %s to the cache failed", r.id)
        if r.session_id is not None and r.seq_id is not None and r.n_computed > 0:
            context = (r.prompt + tuple(r.generated))[: r.n_computed]
            self.sessions.park(Session(r.session_id, r.seq_id, context, r.cache_salt))
            r.seq_id = None  # the sequence now belongs to the session
        self._release(r)
        r.sink.put(DoneEvent(
            finish_reason=reason,
            stats=self._stats(r),
            prompt_tokens=r.prompt,
            stop_sequence=stop,
            committed_tokens=r.n_computed,
            finish_key=r.finish_key,
            cache_hit_kind=r.cache_hit_kind,  # type: ignore[arg-type]
            cache_delta=CacheDelta(read=r.cache_read, created=r.cache_created),
            seed=r.params.seed,
        ))

    def _emit_error(self, r: Request, exc: Exception) -> None:
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
            self.backend.clear_sequence(r.seq_id)
            r.seq_id = None
        if r.admitted_at is None:
            # Finished while still waiting: count it so `pending` stays right.
            self.status.finished_waiting += 1
        self.status.completed += 1

    def _stats(self, r: Request) -> Stats:
        n = len(r.generated)
        ttft = None if r.first_token_at is None else r.first_token_at - r.submitted_at
        queued = (r.admitted_at or time.perf_counter()) - r.submitted_at
        return Stats(
            prompt_tokens=len(r.prompt),
            generated_tokens=n,
            queue_seconds=queued,
            prefill_seconds=r.prefill_seconds,
            decode_seconds=r.decode_seconds,
            time_to_first_token=ttft,
            # The first token comes out of the prefill pass; the rest cost one decode each.
            tokens_per_second=(n - 1) / r.decode_seconds if r.decode_seconds > 0 else 0.0,
        )

    def _publish_status(self) -> None:
        st = self.status
        st.in_flight = len(self._running)
        st.waiting = len(self._waiting)
        if not self._running:
            st.phase = "idle"
