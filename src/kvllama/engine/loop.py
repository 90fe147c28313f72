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
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import asdict
from typing import Any

from kvllama.backend.protocol import Backend
from kvllama.engine.admission import Admission
from kvllama.engine.finishing import Finishing
from kvllama.engine.loop_state import LoopStatus, Phase, typed_error
from kvllama.engine.markers import MarkerStrings
from kvllama.engine.request import Request
from kvllama.engine.residents import ResidentPool
from kvllama.engine.runner import Runner
from kvllama.engine.sessions import Session, SessionPolicy, SessionTable
from kvllama.engine.settling import ReplySettler
from kvllama.engine.speculation import Drafter, NgramDrafter
from kvllama.engine.tool_memory import ToolCallMemory
from kvllama.engine.verify import held_prefix, verify_on_slot
from kvllama.engine.warm import WarmStart
from kvllama.errors import (
    ContextLostError,
    DecodeError,
    EngineClosedError,
    NoFreeSlotError,
    SessionConflictError,
    UnknownSessionError,
)
from kvllama.kvcache import SaveReason
from kvllama.sampling import SamplingParams

__all__ = ["PREFILL_ALIGN", "LoopStatus", "ModelLoop"]

log = logging.getLogger("kvllama.engine")

_STOP = object()
# The longest burst an idle loop gathers, in burst windows (see ModelLoop._gather_burst).
BURST_WINDOWS = 20
# A lone warm request gathers a burst only when it has more prompt tokens than this left to prefill.
BURST_MIN_PREFILL = 64
PREFILL_ALIGN = 64


class ModelLoop(Admission, Runner, Finishing):
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
        self.backend = backend
        # Seconds an idle loop waits after a request arrives for others of its burst, so
        # requests sent together (N HTTP clients, N threads) prefill together.
        self.burst_window = burst_window
        self.warm = warm
        # Thinking / tool-call markers of this model, and the key that signs thinking.
        self.markers = markers
        self.signing_key = signing_key
        self.sessions = SessionTable(backend.shape.n_seq_max, session_policy or SessionPolicy())
        self.residents = ResidentPool(enabled=keep_finished)
        self.speculative_draft = speculative_draft
        # Where drafts come from: prompt lookup, or a draft model (closed with the loop).
        self.drafter: Drafter = drafter or NgramDrafter()
        # The LoRA adapter set of the tick being run (runner.py).
        self._tick_adapters: tuple[tuple[str, float], ...] = ()
        self.tool_memory = tool_memory
        self.chunk_size = min(chunk_size, backend.shape.n_batch, backend.shape.n_ubatch)
        # Prompt chunks end on multiples of this (see scheduler.py for why).
        self.align = min(PREFILL_ALIGN, self.chunk_size)
        self.status = LoopStatus()
        # Idle time recomputes kept replies as prompt chunks (engine/settling.py).
        self.settler = ReplySettler(backend, self.residents, self.sessions, warm, self.chunk_size) \
            if settle_replies else None
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

    def submit(self, *requests: Request) -> None:
        """Several requests go in as one inbox item, so the loop admits them in the same tick."""
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
        if not self._thread.is_alive():
            self.drafter.close()

    # --- loop thread --------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                idle = not (self._running or self._waiting)
                settle = idle and self.settler is not None and self.settler.pending() is not None
                if not self._drain_inbox(block=idle and not settle):
                    break
                # A burst submitted as one item (infer_many, n choices) is whole already.
                lone = len(self._waiting) == 1
                if idle and lone and self._worth_gathering(self._waiting[0]) and not self._gather_burst():
                    break
                if settle and not (self._running or self._waiting):
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
            err = RuntimeError("the decode loop crashed; see the kvllama.engine log")
            for r in [*self._running, *self._waiting]:
                self._emit_error(r, err)
        finally:
            for r in [*self._running, *self._waiting]:
                self._finish(r, "cancelled")
            for session in list(self.sessions.parked.values()):
                self._release_session(session, SaveReason.SHUTDOWN)
            self.status.phase = Phase.IDLE

    def _step(self) -> None:
        self._sweep_cancelled()
        self._compact()
        self._admit()
        if self._running:
            self._tick()
            self._compact()
        elif self._waiting:
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
        for r in list(self._running):
            self._fail(r, err)
        self._running = []

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
                self._release_session(session, SaveReason.EVICT)
            except Exception:
                log.exception("could not save session %s before the rebuild", session.id)
                self.sessions.parked.pop(session.key, None)
        self.residents.clear()  # their KV goes with the old context; their rows are cached
        self.backend.rebuild()
        st.context_rebuilds += 1
        st.healthy = True

    def _worth_gathering(self, r: Request) -> bool:
        """Is ``r``'s prefill long enough that others of its burst should share its passes?

        A warm request (a conversation's next turn in its own session, a repeat, a
        prompt a live sequence or the cache holds all but a few tokens of) prefills
        in a pass or two of milliseconds: the burst window would be most of its time
        to first token, and a burst of such requests gains little from one pass.
        """
        if self.burst_window <= 0:
            return False
        opts = r.options
        if opts.session_id is not None and (opts.cache_salt, opts.session_id) in self.sessions.parked:
            return False
        restorable = self.warm.restorable(r) if self.warm is not None else 0
        source = self._live_source(r, restorable)
        reused = max(restorable, source.shared if source is not None else 0)
        return reused == 0 or len(r.prompt) - reused > BURST_MIN_PREFILL

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
            self._waiting.append(item)
        elif isinstance(item, list):
            self._waiting.extend(item)
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
        return any(adapter_id in dict(r.options.adapters) for r in (*self._running, *self._waiting))

    def fork_session(self, session_id: str, new_id: str, cache_salt: str | None = None) -> None:
        """Copy a parked session's live sequence into a new parked session (one ``seq_cp``).

        From any thread. Raises UnknownSessionError (nothing parked under that id),
        SessionConflictError (``new_id`` is parked already) or NoFreeSlotError.
        """
        def fork() -> None:
            src = self.sessions.parked.get((cache_salt, session_id))
            if src is None:
                raise UnknownSessionError(session_id)
            if (cache_salt, new_id) in self.sessions.parked:
                raise SessionConflictError(f"session {new_id!r} exists already")
            if len(self._running) + len(self.sessions.parked) >= self.backend.shape.n_seq_max:
                raise NoFreeSlotError("no free sequence slot to fork the session into; retry later")
            dst = self._free_seq_id()
            self.backend.copy_sequence(src.seq_id, dst)
            src.last_used = time.monotonic()
            self.sessions.park(Session(new_id, dst, src.tokens, cache_salt, transcript=src.transcript,
                                       adapter_key=src.adapter_key))

        self.call(fork).result()

    def end_session(self, session_id: str, cache_salt: str | None = None) -> bool:
        """Release a parked session (from any thread); False if it is unknown or running."""
        def end() -> bool:
            session = self.sessions.parked.get((cache_salt, session_id))
            if session is None:
                return False
            self._release_session(session, SaveReason.EVICT)
            return True

        return bool(self.call(end).result())


    def verify_held(self, tokens: Sequence[int], draft: Sequence[int]) -> tuple[int, int] | None:
        """Loop thread (through :meth:`call`): verify ``draft`` on a kept slot holding exactly
        ``tokens`` in one decode-class pass (engine/verify.py); None if no slot can answer."""
        resident = held_prefix(self.residents, tokens) if self.backend.shape.per_pass_kernels else None
        if resident is None:
            return None
        greedy = self.backend.new_sampler(SamplingParams(max_tokens=1, temperature=0.0))
        try:
            answer = verify_on_slot(self.backend, resident, draft, greedy)
        finally:
            greedy.close()
        resident.last_used = time.monotonic()
        return answer

    def settled(self) -> dict[str, int]:
        """What idle-time reply settling did (any thread; plain counters)."""
        return asdict(self.settler.stats) if self.settler is not None else {}

    def _publish_status(self) -> None:
        st = self.status
        st.in_flight = len(self._running)
        st.waiting = len(self._waiting)
        if not self._running:
            st.phase = Phase.IDLE
