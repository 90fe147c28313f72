"""The bounded writer pool: saves leave the decode thread here and never block it.

``submit`` never waits: when ``capacity`` saves are already queued it
refuses (the caller counts a dropped save). Keys of queued and running saves
are kept in a pending map with one Event each, so a lookup can wait briefly
for the parent row still being written, and the engine can see which
prefixes are being saved (``pending_keys``).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from kvllama.kvcache.keys import CacheKey
from kvllama.kvcache.rowformat import SaveReason

log = logging.getLogger("kvllama.kvcache")


@dataclass(frozen=True)
class SaveJob:
    key: CacheKey
    root: bytes
    tokens: array  # array('i')
    blob: bytes
    reason: SaveReason
    inputs: str  # KeyRoot description JSON
    created: float


class Submitted(enum.Enum):
    QUEUED = "queued"
    DUPLICATE = "duplicate"  # the same key is already queued or being written
    FULL = "full"
    CLOSED = "closed"


class WriterPool:
    def __init__(
        self, work: Callable[[SaveJob], None], *, threads: int, capacity: int, name: str = "kvcache-writer"
    ) -> None:
        self._work = work
        self._capacity = capacity
        self._cond = threading.Condition()
        self._jobs: deque[SaveJob] = deque()
        self._pending: dict[CacheKey, threading.Event] = {}
        self._closing = False
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, job: SaveJob) -> Submitted:
        with self._cond:
            if self._closing:
                return Submitted.CLOSED
            if job.key in self._pending:
                return Submitted.DUPLICATE
            if len(self._jobs) >= self._capacity:
                return Submitted.FULL
            self._pending[job.key] = threading.Event()
            self._jobs.append(job)
            self._cond.notify()
            return Submitted.QUEUED

    def pending_keys(self) -> frozenset[CacheKey]:
        with self._cond:
            return frozenset(self._pending)

    def in_flight(self, key: CacheKey) -> bool:
        return key in self._pending

    def wait(self, key: CacheKey, timeout: float) -> bool:
        """Wait up to ``timeout`` s for a pending save of ``key``; True if none is pending now."""
        event = self._pending.get(key)
        return True if event is None else event.wait(timeout)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until no save is queued or being written; False if ``timeout`` s passed first.

        For shutdown paths and tests that must see every submitted save
        published (or failed) before reading metrics or files: waiting on the
        pool's own condition, never on the clock.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closing:
                    self._cond.wait()
                if not self._jobs:
                    return
                job = self._jobs.popleft()
            try:
                self._work(job)
            except Exception:  # the work function counts its own failures; never kill the thread
                log.exception("cache save of %s failed", job.key.hex())
            finally:
                with self._cond:
                    self._pending.pop(job.key).set()
                    self._cond.notify_all()

    def close(self, timeout: float | None = None) -> int:
        """Finish queued saves within ``timeout``; return how many were abandoned."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        with self._cond:
            abandoned = list(self._jobs)
            self._jobs.clear()
            for job in abandoned:
                self._pending.pop(job.key).set()
            self._cond.notify_all()  # wake flush() waiters: nothing abandoned is pending any more
        return len(abandoned)
