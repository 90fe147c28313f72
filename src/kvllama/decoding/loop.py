"""The per-model decode loop: one thread that owns the backend's context.

Everything else talks to it through a queue (submit, cancel, calls such as
``embed``), so the loop never waits on a lock held by an HTTP handler, and
llama.cpp's context is only ever touched from this thread. Each tick is one
``decode`` call whose rows come from :func:`kvllama.decoding.scheduler.plan`:
decode rows of generating requests co-batched with prefill chunks of new ones.

Observability (:class:`LoopStatus`) is plain attributes written by this thread
and read lock-free by anyone.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import asdict
from typing import Any

from kvllama.backend.protocol import Backend
from kvllama.decoding.admission import Admission
from kvllama.decoding.finishing import Finisher
from kvllama.decoding.kept import KeptSequences
from kvllama.decoding.loop_state import LoopState, LoopStatus, Phase, typed_error
from kvllama.decoding.markers import MarkerStrings
from kvllama.decoding.preemption import enqueue
from kvllama.decoding.request import Request
from kvllama.decoding.sessions import SessionPolicy, SessionTable
from kvllama.decoding.settling import ReplySettler
from kvllama.decoding.speculation import Drafter, NgramDrafter
from kvllama.decoding.tick_runner import Runner
from kvllama.decoding.tool_memory import ToolCallMemory
from kvllama.decoding.verify import held_prefix, verify_on_slot
from kvllama.decoding.warm import WarmStart
from kvllama.errors import (
    ContextLostError,
    DecodeError,
    EngineClosedError,
)
from kvllama.kvcache import SaveReason
from kvllama.sampling import SamplingParams

__all__ = ["PREFILL_ALIGN", "LoopStatus", "ModelLoop"]

log = logging.getLogger("kvllama.decoding")

_STOP = object()
# The longest burst an idle loop gathers, in burst windows (see ModelLoop._gather_burst).
BURST_WINDOWS = 20
PREFILL_ALIGN = 64


class ModelLoop:
    """One model's decode thread, with its parts: ``admission``, ``runner``, ``finisher`` and the
    ``state`` they share (decoding/loop_state.py)."""

    def __init__(
        self,
        backend: Backend,
        *,
        chunk_size: int,
        name: str = "model",
        warm: WarmStart | None = None,
        session_policy: SessionPolicy | None = None,
        keep_finished: bool = True,
        speculative_draft: int = 0,
        drafter: Drafter | None = None,
        tool_memory: ToolCallMemory | None = None,
        markers: MarkerStrings | None = None,
        signing_key: bytes | None = None,
        burst_window: float = 0.0,
        settle_replies: bool = True,
    ) -> None:
        # Seconds an idle loop waits after a request arrives for others of its burst, so
        # requests sent together (N HTTP clients, N threads) prefill together.
        self.burst_window = burst_window
        chunk_size = min(chunk_size, backend.shape.n_batch, backend.shape.n_ubatch)
        self.state = LoopState(
            backend, warm=warm, markers=markers, signing_key=signing_key,
            sessions=SessionTable(backend.shape.n_seq_max, session_policy or SessionPolicy()),
            kept=KeptSequences(enabled=keep_finished), tool_memory=tool_memory,
            speculative_draft=speculative_draft, drafter=drafter or NgramDrafter(),
            chunk_size=chunk_size, align=min(PREFILL_ALIGN, chunk_size),
        )
        self.finisher = Finisher(self.state)
        self.admission = Admission(self.state, self.finisher)
        self.runner = Runner(self.state, self.finisher)
        # Idle time recomputes kept replies as prompt chunks (decoding/settling.py).
        self.settler = ReplySettler(backend, self.kept, self.sessions, warm, chunk_size)\
            if settle_replies else None
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._submitted = 0
        self._submit_lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"kvllama-loop-{name}", daemon=True)
        self._thread.start()

    # --- the shared state, as callers and tests read it -------------------------

    @property
    def backend(self) -> Backend:
        return self.state.backend

    @property
    def warm(self) -> WarmStart | None:
        return self.state.warm

    @property
    def markers(self) -> MarkerStrings | None:
        return self.state.markers

    @property
    def sessions(self) -> SessionTable:
        return self.state.sessions

    @property
    def kept(self) -> KeptSequences:
        return self.state.kept

    @property
    def status(self) -> LoopStatus:
        return self.state.status

    @property
    def chunk_size(self) -> int:
        return self.state.chunk_size

    @property
    def drafter(self) -> Drafter:
        return self.state.drafter

    @drafter.setter
    def drafter(self, drafter: Drafter) -> None:
        self.state.drafter = drafter

    # --- any thread ---------------------------------------------------------

    def submit(self, *requests: Request) -> None:
        """Several requests go in as one inbox item, so the loop admits them in the same tick.

        They come prepared (api/preparation.py): samplers built off this thread, grammars parsed.
        """
        if any(r.sampler is None for r in requests):
            raise ValueError("a request reaches the loop with its samplers built (api/preparation.py)")
        with self._submit_lock:
            if self._closed:
                raise EngineClosedError("this model has been unloaded")
            self._submitted += len(requests)
            self._inbox.put(requests[0] if len(requests) == 1 else list(requests))
        if self.settler is not None and self.settler.running:
            self.backend.abort()  # a settle pass never delays a request; it is redone later

    def cancel(self, request: Request) -> None:
        """Idempotent; takes effect before the next tick.

        A prompt chunk of this request that is being computed right now is
        aborted (a long prefill pass should not finish for nobody); the other
        requests of that pass are retried on their own.
        """
        request.cancel_requested = True
        if request in self.state.prefilling_now:
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
        if not self._thread.is_alive():
            self.drafter.close()

    # --- loop thread --------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                idle = not (self.state.running or self.state.waiting)
                settle = idle and self.settler is not None and self.settler.pending() is not None
                if not self._drain_inbox(block=idle and not settle):
                    break
                # A burst submitted as one item (infer_many, n choices) is whole already.
                waiting = self.state.waiting
                gather = self.burst_window > 0 and idle and len(waiting) == 1
                if gather and self.admission.worth_gathering(waiting[0]) and not self._gather_burst():
                    break
                if settle and not (self.state.running or self.state.waiting):
                    self._settle()
                    continue
                try:
                    self._step()
                except Exception as exc:
                    # A bug, not a request's fault: end the requests in flight with an
                    # error (never leave one unanswered) and keep serving.
                    log.exception("decode loop step failed; ending the requests in flight")
                    self._recover(exc)
                self._publish_status()
        except BaseException:  # pragma: no cover - interpreter shutdown or a bug in recovery
            log.exception("decode loop crashed")
            with self._submit_lock:
                self._closed = True
            self._drain_inbox(block=False)
            err = RuntimeError("the decode loop crashed; see the kvllama.decoding log")
            for r in [*self.state.running, *self.state.waiting]:
                self.finisher.emit_error(r, err)
        finally:
            for r in [*self.state.running, *self.state.waiting]:
                self.finisher.finish(r, "cancelled")
            for session in list(self.sessions.parked.values()):
                self.admission.release_session(session, SaveReason.SHUTDOWN)
            self.status.phase = Phase.IDLE

    def _step(self) -> None:
        self.admission.sweep_cancelled()
        self.admission.compact()
        self.admission.admit()
        if self.state.running:
            self.runner.tick()
            self.admission.compact()
        elif self.state.waiting:
            time.sleep(0.002)  # only deferred requests: their prefix row is being published

    def _settle(self) -> None:
        """One idle settle pass; a failure costs the settling, never the loop."""
        assert self.settler is not None
        try:
            self.settler.step()
        except Exception:
            log.exception("settling a kept reply failed; settling is turned off for this model")
            self.settler = None

    def _recover(self, exc: Exception) -> None:
        """After an unexpected failure: fail the running requests, then check the context."""
        if isinstance(exc, DecodeError) and exc.status < -1:
            self._rebuild_context()
            return
        err = typed_error(exc)
        for r in list(self.state.running):
            self.finisher.fail(r, err)
        self.state.running = []

    def _rebuild_context(self) -> None:
        """llama.cpp reported a fatal error: save what can be saved, then a fresh context.

        Parked sessions are saved to the cache first (their state may still be
        readable); the cache itself lives outside the context and is kept.
        """
        st = self.status
        st.healthy = False
        log.error("llama.cpp context failed; rebuilding it (the KV cache is kept)")
        lost = ContextLostError("the model's context failed and was rebuilt; retry the request")
        for r in list(self.state.running):
            self.finisher.fail(r, lost)
        self.state.running = []
        for session in list(self.sessions.parked.values()):
            try:
                self.admission.release_session(session, SaveReason.EVICT)
            except Exception:
                log.exception("could not save session %s before the rebuild", session.id)
                self.sessions.parked.pop(session.key, None)
        self.kept.clear()  # their KV goes with the old context; their rows are cached
        self.backend.rebuild()
        st.context_rebuilds += 1
        st.healthy = True

    def _gather_burst(self) -> bool:
        """An idle loop woken by a request: take the rest of its burst before the first tick.

        Separate ``infer`` calls (N HTTP clients) reach the inbox a few milliseconds
        apart; admitted in one tick, their prompts prefill in the same passes instead
        of the first one's pass running alone. The burst lasts while requests keep
        arriving within ``burst_window`` of each other (at most ``BURST_WINDOWS``
        windows in all), so a lone request's first token comes one window later.
        Measured over HTTP (``kvllama bench serve --throughput``, 16 clients at
        once, 2 cores): the server takes more than 5 ms per request to parse and
        submit, so a 5 ms window gathered too few (0.85-0.89 of the floor at 8 and
        16 streams); 15 ms, the default, gathers them (0.98-1.02). Returns False
        when asked to stop.
        """
        last_call = time.monotonic() + self.burst_window * BURST_WINDOWS
        while (left := min(self.burst_window, last_call - time.monotonic())) > 0:
            try:
                item = self._inbox.get(timeout=left)
            except queue.Empty:
                return True
            if not self._take(item):
                return False
        return True

    def _drain_inbox(self, *, block: bool) -> bool:
        """Returns False when asked to stop."""
        while True:
            try:
                item = self._inbox.get(block=block)
            except queue.Empty:
                return True
            block = False
            if not self._take(item):
                return False

    def _take(self, item: Any) -> bool:
        """One inbox item: requests queue, calls run here; False for the stop signal."""
        if item is _STOP:
            return False
        if isinstance(item, Request):
            enqueue(self.state.waiting, item)
        elif isinstance(item, list):
            for r in item:
                enqueue(self.state.waiting, r)
        elif isinstance(item, tuple):
            fn, future = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:
                    future.set_exception(exc)
        return True

    def uses_adapter(self, adapter_id: str) -> bool:
        """Loop thread: does a queued or running request run with this adapter?"""
        return any(adapter_id in dict(r.options.adapters) for r in (*self.state.running, *self.state.waiting))

    def fork_session(self, session_id: str, new_id: str, cache_salt: str | None = None) -> None:
        """Copy a parked session's live sequence into a new parked session (one ``seq_cp``).

        From any thread. Raises UnknownSessionError (nothing parked under that id),
        SessionConflictError (``new_id`` is parked already) or NoFreeSlotError.
        """
        self.call(lambda: self.admission.fork_session(session_id, new_id, cache_salt)).result()

    def end_session(self, session_id: str, cache_salt: str | None = None) -> bool:
        """Release a parked session (from any thread); False if it is unknown or running."""
        return bool(self.call(lambda: self.admission.end_session(session_id, cache_salt)).result())

    def verify_held(self, tokens: Sequence[int], draft: Sequence[int]) -> tuple[int, int] | None:
        """Loop thread (through :meth:`call`): verify ``draft`` on a kept sequence holding exactly
        ``tokens`` in one decode-class pass (decoding/verify.py); None if no slot can answer."""
        kept_seq = held_prefix(self.kept, tokens) if self.backend.shape.per_pass_kernels else None
        if kept_seq is None:
            return None
        greedy = self.backend.new_sampler(SamplingParams(max_tokens=1, temperature=0.0))
        try:
            answer = verify_on_slot(self.backend, kept_seq, draft, greedy)
        finally:
            greedy.close()
        kept_seq.last_used = time.monotonic()
        return answer

    def settled(self) -> dict[str, int]:
        """What idle-time reply settling did (any thread; plain counters)."""
        return asdict(self.settler.stats) if self.settler is not None else {}

    def _publish_status(self) -> None:
        st = self.status
        st.in_flight = len(self.state.running)
        st.waiting = len(self.state.waiting)
        if not self.state.running:
            st.phase = Phase.IDLE
