"""Stopping a running ``llama_decode``: a flag llama.cpp polls, and a watchdog that sets it.

llama.cpp calls the context's abort callback after every graph node (on the
CPU backend, from the thread that called ``llama_decode``). A Python
callback would take the GIL hundreds of times per forward pass and wait on
whatever thread holds it (the HTTP event loop, say), so the flag is read by
a C function instead: libc's ``strlen`` on a two-byte buffer ``[flag, 0]``
returns 0 or 1, which is exactly ``bool (*)(void *)`` under the C calling
conventions of the platforms llama.cpp's CPU build supports (the result is
returned in the low byte of the return register either way). No Python runs
while a decode is in flight, and raising the flag is one byte write.

When the flag is up the running graph stops at its next node and
``llama_decode`` returns 2 ("aborted"); llama.cpp drops the positions of the
unfinished ubatch from the KV memory, so the caller clears the sequences of
the failed batch and carries on.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import threading
import time
from typing import Any

_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None)


class AbortFlag:
    """A byte llama.cpp polls between graph nodes, without the GIL."""

    def __init__(self) -> None:
        self._buffer = ctypes.create_string_buffer(2)  # [flag, NUL]
        # The address of the C function to register as llama.cpp's abort callback.
        self.callback: Any = ctypes.cast(_LIBC.strlen, ctypes.c_void_p)
        self.data = ctypes.cast(self._buffer, ctypes.c_void_p)

    def raise_(self) -> None:
        self._buffer[0] = b"\x01"

    def lower(self) -> None:
        self._buffer[0] = b"\x00"

    @property
    def raised(self) -> bool:
        return self._buffer[0] != b"\x00"


class DecodeWatchdog:
    """Raises an :class:`AbortFlag` when one forward pass outlives its time budget.

    One thread for the context's lifetime, armed before and disarmed after each
    ``llama_decode`` (two lock round trips per step, no thread per step). The
    thread is woken only when a pass's deadline comes before the time it sleeps
    to: while passes follow one another under one budget it wakes at the last
    deadline it saw, finds a later one (or none) and sleeps again, so a decode
    step never costs a thread switch.
    ``abort()`` raises the flag now, from any thread.
    """

    def __init__(self, flag: AbortFlag, budget_seconds: float) -> None:
        self.flag = flag
        self.budget = budget_seconds
        self._cond = threading.Condition()
        self._deadline: float | None = None
        # When the watching thread will next look at the deadline (inf: only if woken).
        self._wake_at = math.inf
        self._closed = False
        self.timed_out = False
        self._thread = threading.Thread(target=self._watch, name="kvllama-decode-watchdog", daemon=True)
        self._thread.start()

    def arm(self) -> None:
        with self._cond:
            self.timed_out = False
            self.flag.lower()
            if self.budget > 0:
                self._deadline = time.monotonic() + self.budget
                if self._deadline < self._wake_at:
                    self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._deadline = None

    def abort(self) -> None:
        self.flag.raise_()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=1.0)

    def _watch(self) -> None:
        with self._cond:
            while not self._closed:
                if self._deadline is None:
                    self._wake_at = math.inf
                    self._cond.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._wake_at = self._deadline
                    self._cond.wait(left)
                    continue
                self.timed_out = True
                self.flag.raise_()
                self._deadline = None
